"""Sweeps (`python scripts/train.py -m ...`): their directory, their jobs, their resume, their
summary.

`Sweep`, a Hydra callback that train.yaml installs, gives a new sweep a directory of its own
(created atomically, like a run's) or, with `trainer.resume=auto`, finds the newest unfinished
sweep with the same overrides (typed in any order); and when the sweep ends it writes
`summary.md` and `summary.csv`: one row per job, and where jobs differ only in their seed, mean
and standard deviation per group.

A job's directory is named by its number and the settings that vary between the sweep's jobs
(`0_loss-scratch`), with no character Hydra's override grammar or a shell treats specially, so
it can be typed as it is in `ckpt_path=`; the full overrides stay in its `.hydra/` and the
summary. A job that fails on a user's mistake or diverges is recorded (`failed.txt`, its one
line) and the sweep goes on; the sweep then exits non-zero naming the failed jobs, and a resumed
sweep retries only those and the unfinished ones. A stop signal still ends the whole sweep.

Re-render the summary of an existing sweep (resumed, partly failed, or still running: missing
jobs are listed as missing):  python -m fmnist.sweeps outputs/multirun/<time>
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from fmnist import distributed
from fmnist.callbacks import chosen_by_user, set_directory, set_hydra, stops_the_run
from fmnist.checkpoint import SWEEP_CONFIG
from fmnist.errors import (
    Interrupted,
    SettingsError,
    UserError,
    report,
    reports_user_errors,
    user_error,
)
from fmnist.files import write_text_atomically
from fmnist.resume import IGNORED_WHEN_RESUMING
from fmnist.runs import claim, claimed, finished, forget_all, new_directory, remember

FAILED = "failed.txt"  # in a job's directory: the one line it failed with
OWN_SETTINGS = "(the job's own settings: the same settings fail again)"  # failed.txt's 2nd line

# --------------------------------------------------------------------------------------------
# The jobs of a sweep
# --------------------------------------------------------------------------------------------


def key_of(override: str) -> str:
    """`+optimizer.lr=0.1` -> `optimizer.lr`: the setting an override sets."""
    return override.split("=", 1)[0].lstrip("+~")


def sweep_overrides(overrides: list[str]) -> list[str]:
    """The overrides that define a sweep (not how it was started, e.g. trainer.resume, nor what
    does not change its results, e.g. trainer.progress)."""
    return [item for item in overrides if key_of(item) not in IGNORED_WHEN_RESUMING]


def jobs_of(overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, in Hydra's order (`loss=a,b seed=0,1,2`: 6 jobs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(sweep_overrides(overrides))
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def varied(overrides: list[str]) -> list[str]:
    """The settings whose values differ between the sweep's jobs, in the order typed."""
    values: dict[str, set[str]] = {}
    jobs = jobs_of(overrides)
    for job in jobs:
        for item in job:
            values.setdefault(key_of(item), set()).add(item)
    return [
        key
        for key, seen in values.items()
        if len(seen) > 1 or sum(key_of(i) == key for job in jobs for i in job) < len(jobs)
    ]


def saved_overrides(sweep_dir: Path) -> list[str]:
    """The overrides a sweep was started with (its multirun.yaml)."""
    try:
        return list(OmegaConf.load(sweep_dir / SWEEP_CONFIG).hydra.overrides.task)
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(
            f"{sweep_dir} is not a sweep directory (no readable multirun.yaml: {e}): give "
            "outputs/multirun/<time>"
        ) from None


def job_dir(sweep_dir: Path, number: int) -> Path | None:
    """Job `number`'s directory (`<number>` or `<number>_<what varies>`), if it was created."""
    made = [
        path
        for path in (sweep_dir / str(number), *sorted(sweep_dir.glob(f"{number}_*")))
        if (path / ".hydra").is_dir()
    ]
    return made[0] if made else None


def safe_name(text: str) -> str:
    """`text` with only characters that mean nothing to Hydra's override grammar or a shell:
    brackets and quotes dropped, any other run of special characters (`,`, spaces) a `+`."""
    text = re.sub(r"[\[\]{}()'\"]", "", text)
    return re.sub(r"[^A-Za-z0-9._+@%-]+", "+", text).strip("+")


def job_dir_name(sweep_dir: str, number: int, name: str) -> str:
    """A job's directory name (`hydra.sweep.subdir`): the one it already has in a resumed
    sweep, else its number and `name`, Hydra's override_dirname of the settings that vary
    (configs/train.yaml separates key and value by `-`, settings by `_`), made safe."""
    existing = job_dir(Path(sweep_dir), number)
    if existing is not None:
        return existing.name
    return f"{number}_{safe_name(name)}" if safe_name(name) else str(number)


if not OmegaConf.has_resolver("fmnist.job_dir_name"):
    OmegaConf.register_new_resolver("fmnist.job_dir_name", job_dir_name)


def config_copy(sweep_dir: str, number: int, resume: str | None) -> str | None:
    """Where Hydra writes a job's config copy (`hydra.output_subdir`): `.hydra`, but nowhere for
    a job that a resumed sweep keeps, whose files stay byte for byte as it left them. Decided
    from the disk, so it holds in the job's own process, whichever launcher started it. A
    single run (no job number: -1) always has its copy."""
    existing = job_dir(Path(sweep_dir), number) if number >= 0 else None
    return None if existing is not None and kept(existing, resume) else ".hydra"


if not OmegaConf.has_resolver("fmnist.config_copy"):
    OmegaConf.register_new_resolver("fmnist.config_copy", config_copy)


def varied_settings() -> list[str]:
    """In a sweep's job, the settings its directory is named by: those that vary between the
    sweep's jobs (empty outside a sweep)."""
    hydra = HydraConfig.get()
    excluded = set(hydra.job.config.override_dirname.exclude_keys)
    return [key_of(item) for item in hydra.overrides.task if key_of(item) not in excluded]


def unfinished(sweep_dir: Path, overrides: list[str]) -> bool:
    jobs = [job_dir(sweep_dir, number) for number in range(len(jobs_of(overrides)))]
    return not all(job and finished(job) and not failed(job) for job in jobs)


# --------------------------------------------------------------------------------------------
# A job: run, or recorded as failed
# --------------------------------------------------------------------------------------------


def failed(run_dir: Path) -> str | None:
    """The one line a job failed with, if it did."""
    path = run_dir / FAILED
    return path.read_text().splitlines()[0] if path.is_file() else None


def failed_on_its_settings(run_dir: Path) -> bool:
    """Whether the job failed on its own settings (`SettingsError`): a resume, which keeps
    them, would fail the same way."""
    path = run_dir / FAILED
    return path.is_file() and OWN_SETTINGS in path.read_text()


def job(run_dir: Path, work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """`work()`, a sweep's job: a user's mistake or a diverged run is printed in its one line and
    recorded in the job's `failed.txt`, and the sweep goes on (None); a stop signal ends the
    sweep. A retried job's earlier failure is removed first."""
    (run_dir / FAILED).unlink(missing_ok=True)
    try:
        return work()
    except Exception as e:
        error = user_error(e)
        if error is None or isinstance(error, Interrupted):
            raise
        report(error)
        if distributed.is_main():
            note = f"{OWN_SETTINGS}\n" if isinstance(error, SettingsError) else ""
            write_text_atomically(run_dir / FAILED, f"{error}\n{note}")
        return None


def kept(run_dir: Path, resume: str | None) -> bool:
    """Whether this is a job of a resumed sweep (`resume`: trainer.resume) that finished before:
    kept, not rerun."""
    return resume == "auto" and finished(run_dir) and not failed(run_dir)


# --------------------------------------------------------------------------------------------
# Which sweep a resume continues
# --------------------------------------------------------------------------------------------


def newest_unfinished_sweep(parent: Path, overrides: list[str]) -> Path | None:
    """Claim and return the newest sweep under `parent` started with these overrides (in any
    order) that has jobs left to finish and no process running it; None if there is none."""
    wanted = sorted(sweep_overrides(overrides))
    saved = sorted(parent.glob(f"*/{SWEEP_CONFIG}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in saved:
        sweep_dir = path.parent
        started_with = sweep_overrides(saved_overrides(sweep_dir))
        if sorted(started_with) != wanted:
            continue
        if unfinished(sweep_dir, started_with) and claim(sweep_dir, "hydra.sweep.dir"):
            return sweep_dir
    return None


def sweep_dir_for(overrides: list[str], new_dir: Path, user_dir: bool) -> Path:
    """Where a sweep writes: a new directory, or with `trainer.resume=auto` the newest
    unfinished sweep with the same overrides (its finished jobs are kept, the others continue
    from their own last.pt or start). `user_dir`: `new_dir` is the user's, used as it is."""
    key = "hydra.sweep.dir"
    resuming = "trainer.resume=auto" in overrides
    if resuming and user_dir and (new_dir / SWEEP_CONFIG).is_file():
        started_with = sweep_overrides(saved_overrides(new_dir))
        if sorted(started_with) != sorted(sweep_overrides(overrides)):
            raise UserError(
                f"{new_dir} was started with other overrides ({' '.join(started_with)}): "
                "resume it with those, or give another hydra.sweep.dir for a new sweep"
            )
    if not resuming or user_dir:
        directory = new_dir if user_dir else new_directory(new_dir, key)
        return claimed(directory, "sweep", key, new=not resuming)
    sweep_dir = newest_unfinished_sweep(new_dir.parent, overrides)
    if sweep_dir is None:
        raise UserError(
            f"trainer.resume=auto found no unfinished sweep under {new_dir.parent} with these "
            "overrides that no other process is running; start a new sweep without "
            "trainer.resume"
        )
    return sweep_dir


def in_saved_order(overrides: list[str], sweep_dir: Path) -> list[str]:
    """A resumed sweep's overrides in the order its sweep was started with, so each job keeps
    its number (and its directory); the others (trainer.resume=auto, ...) after them."""
    saved = sweep_overrides(saved_overrides(sweep_dir))
    return saved + [item for item in overrides if item not in saved]


class Sweep(Callback):
    """A sweep's directory and its jobs' names when it starts, its summary when it ends."""

    @stops_the_run
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        forget_all()
        overrides = list(config.hydra.overrides.task)
        user_dir = chosen_by_user(config, "hydra.sweep.dir")
        sweep_dir = sweep_dir_for(overrides, Path(config.hydra.sweep.dir), user_dir)
        if (sweep_dir / SWEEP_CONFIG).is_file():  # a resumed sweep
            overrides = in_saved_order(overrides, sweep_dir)
            with read_write(config):  # Hydra's sweeper reads them after this callback
                config.hydra.overrides.task = overrides
        for child in sweep_dir.iterdir():
            if child.is_dir():
                remember(child)
        set_directory(config, "sweep.dir", sweep_dir)
        name_jobs_by_what_varies(config, overrides)

    @stops_the_run
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        written = write_summary(sweep_dir)
        print(f"Sweep summary: {written}")
        _, jobs = read_jobs(sweep_dir)
        failures = [job for job in jobs if job.status.startswith("failed")]
        if failures:
            raise UserError(failures_line(jobs, failures))


def failures_line(jobs: list[Job], failures: list[Job]) -> str:
    """The sweep's last line: its failed jobs, and what works for each kind. A resume keeps the
    sweep's values: it mends a failure from outside (the data, a disk), not a value of its own
    that is invalid or diverges, which needs a new sweep with other values."""
    listed = "; ".join(
        f"job {job.number} ({' '.join(job.overrides)}) {job.status}" for job in failures
    )
    own = [job for job in failures if job.own_settings]
    others = [job for job in failures if job not in own]
    advice = []
    if own:
        named = ", ".join(f"job {job.number} ({' '.join(job.overrides)})" for job in own)
        advice.append(
            f"{named} failed on {'its' if len(own) == 1 else 'their'} own settings, which a "
            "resume keeps: start a new sweep (-m) with other values for them"
        )
    if others:
        named = ", ".join(f"job {job.number}" for job in others)
        advice.append(
            f"for {named}, fix the cause and rerun with trainer.resume=auto to retry only the "
            "failed and unfinished jobs"
        )
    return f"{len(failures)} of {len(jobs)} jobs failed: {listed}; {'; '.join(advice)}"


def name_jobs_by_what_varies(config: DictConfig, overrides: list[str]) -> None:
    """Leave out of the jobs' directory names (Hydra's override_dirname) every setting that is
    the same in all jobs."""
    changing = set(varied(overrides))
    excluded = list(config.hydra.job.config.override_dirname.exclude_keys)
    excluded += [
        key
        for key in dict.fromkeys(key_of(item) for item in overrides)
        if key not in changing and key not in excluded
    ]
    set_hydra(
        config,
        "job.config.override_dirname.exclude_keys",
        excluded,
        f"[{','.join(excluded)}]",
    )


# --------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------

MEASURES = (  # (metrics.json key, column title, decimals)
    ("val_acc", "val acc", 4),
    ("val_loss", "val loss", 4),
    ("test_acc", "test acc", 4),
    ("test_loss", "test loss", 4),
    ("epochs", "epochs", 0),
    ("train_seconds", "train s", 1),
    ("train_images_per_second", "images/s", 0),
)


@dataclass
class Job:
    number: int
    overrides: list[str]  # the ones that differ between the sweep's jobs
    metrics: dict[str, Any] | None  # metrics.json; None when the job has not finished
    status: str  # finished | failed: <its one line> | unfinished | missing
    own_settings: bool = False  # failed on its own settings (`failed_on_its_settings`)

    def without_seed(self) -> tuple[str, ...]:
        return tuple(item for item in self.overrides if not item.startswith("seed="))


def read_jobs(sweep_dir: Path) -> tuple[list[str], list[Job]]:
    """The overrides every job shares, and each job with its results."""
    all_jobs = jobs_of(saved_overrides(sweep_dir))
    shared = [item for item in all_jobs[0] if all(item in job for job in all_jobs)]
    jobs = []
    for number, overrides in enumerate(all_jobs):
        directory = job_dir(sweep_dir, number)
        metrics = None
        if directory is not None and finished(directory):
            metrics = json.loads((directory / "metrics.json").read_text())
        reason = directory and failed(directory)
        if reason:
            status = f"failed: {reason}"
        else:
            status = "finished" if metrics else "unfinished" if directory else "missing"
        varying = [item for item in overrides if item not in shared]
        own = directory is not None and failed_on_its_settings(directory)
        jobs.append(Job(number, varying, metrics, status, own))
    return shared, jobs


def _value(value: Any, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def seed_groups(jobs: list[Job]) -> dict[tuple[str, ...], list[Job]]:
    """Finished jobs grouped by their overrides other than `seed`, where a group has 2 or more."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        if job.status == "finished" and any(item.startswith("seed=") for item in job.overrides):
            groups.setdefault(job.without_seed(), []).append(job)
    return {key: members for key, members in groups.items() if len(members) > 1}


def mean_std(members: list[Job], key: str, decimals: int) -> str:
    """Mean ± standard deviation of `key` over the members that have it (runs with
    data.val_size=0 have no val_* metrics); blank for fewer than two values."""
    values = [m.metrics[key] for m in members if m.metrics is not None and key in m.metrics]
    if len(values) < 2:
        return ""
    return f"{statistics.mean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def render_markdown(sweep_dir: Path, shared: list[str], jobs: list[Job]) -> str:
    done = sum(job.status == "finished" for job in jobs)
    failures = sum(job.status.startswith("failed") for job in jobs)
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"Every job: `{' '.join(shared) or '(no common overrides)'}`. "
        f"{done} of {len(jobs)} jobs finished" + (f", {failures} failed." if failures else "."),
        "",
        "val: the best epoch's validation metrics (the model that was tested).",
        "",
    ]
    rows = [
        [str(job.number), f"`{' '.join(job.overrides)}`", job.status.replace("|", "\\|")]
        + [_value((job.metrics or {}).get(key), decimals) for key, _, decimals in MEASURES]
        for job in jobs
    ]
    lines += _table(["job", "overrides", "status", *(title for _, title, _ in MEASURES)], rows)
    groups = seed_groups(jobs)
    if groups:
        lines += ["", "Over seeds (mean ± standard deviation):", ""]
        rows = [
            [f"`{' '.join(key) or '(seed only)'}`", str(len(members))]
            + [
                mean_std(members, name, decimals)
                for name, _, decimals in MEASURES
                if name not in ("epochs",)
            ]
            for key, members in groups.items()
        ]
        titles = [title for name, title, _ in MEASURES if name not in ("epochs",)]
        lines += _table(["overrides", "seeds", *titles], rows)
    missing = [
        f"job {job.number} ({job.status})"
        for job in jobs
        if job.status in ("unfinished", "missing")
    ]
    if missing:
        lines += ["", f"Not finished: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def render_csv(jobs: list[Job]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["job", "overrides", "status", *(key for key, _, _ in MEASURES)])
    for job in jobs:
        values = [(job.metrics or {}).get(key) for key, _, _ in MEASURES]
        writer.writerow([job.number, " ".join(job.overrides), job.status, *values])
    return out.getvalue()


def write_summary(sweep_dir: Path) -> Path:
    """Write summary.md and summary.csv into `sweep_dir`; return summary.md's path."""
    shared, jobs = read_jobs(sweep_dir)
    write_text_atomically(sweep_dir / "summary.csv", render_csv(jobs))
    write_text_atomically(sweep_dir / "summary.md", render_markdown(sweep_dir, shared, jobs))
    return sweep_dir / "summary.md"


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    """`python -m fmnist.sweeps DIR`: (re)write and print a sweep's summary."""
    parser = argparse.ArgumentParser(
        prog="python -m fmnist.sweeps", description="Write summary.md and summary.csv of a sweep."
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory: outputs/multirun/<time>")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise UserError(f"{args.sweep_dir} is not a directory: give outputs/multirun/<time>")
    print(write_summary(args.sweep_dir).read_text(), end="")


if __name__ == "__main__":
    main()
