"""Sweeps (`python scripts/train.py -m ...`): their directory, their resume, their summary.

`Sweep`, a Hydra callback that train.yaml installs, gives a new sweep a directory of its own
(created atomically, like a run's) or, with `trainer.resume=auto`, finds the newest unfinished
sweep with the same overrides; and when the sweep ends it writes `summary.md` and `summary.csv`:
one row per job, and where jobs differ only in their seed, mean and standard deviation per group.

Re-render the summary of an existing sweep (resumed, partly failed, or still running: missing
jobs are listed as missing):  python -m fmnist.sweeps outputs/multirun/<time>
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fmnist.errors import UserError, reports_user_errors
from fmnist.files import write_text_atomically
from fmnist.runs import (
    IGNORED_WHEN_RESUMING,
    chosen_by_user,
    claim,
    claimed,
    finished,
    new_directory,
    set_directory,
    stops_the_run,
)

# --------------------------------------------------------------------------------------------
# The jobs of a sweep
# --------------------------------------------------------------------------------------------


def sweep_overrides(overrides: list[str]) -> list[str]:
    """The overrides that define a sweep (not how it was started: trainer.resume, ckpt_path)."""
    return [item for item in overrides if item.split("=", 1)[0] not in IGNORED_WHEN_RESUMING]


def jobs_of(overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, in Hydra's order (`loss=a,b seed=0,1,2`: 6 jobs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(sweep_overrides(overrides))
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def saved_overrides(sweep_dir: Path) -> list[str]:
    """The overrides a sweep was started with (its multirun.yaml)."""
    try:
        return list(OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task)
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(
            f"{sweep_dir} is not a sweep directory (no readable multirun.yaml: {e}): give "
            "outputs/multirun/<time>"
        ) from None


def job_dir(sweep_dir: Path, number: int) -> Path | None:
    """Job `number`'s directory (Hydra names it `<number>_<overrides>`), if it was created."""
    made = [path for path in sweep_dir.glob(f"{number}_*") if (path / ".hydra").is_dir()]
    return made[0] if made else None


def unfinished(sweep_dir: Path, overrides: list[str]) -> bool:
    jobs = [job_dir(sweep_dir, number) for number in range(len(jobs_of(overrides)))]
    return not all(job and finished(job) for job in jobs)


# --------------------------------------------------------------------------------------------
# Which sweep a resume continues
# --------------------------------------------------------------------------------------------


def newest_unfinished_sweep(parent: Path, overrides: list[str]) -> Path | None:
    """Claim and return the newest sweep under `parent` started with these overrides that has
    jobs left to finish and no process running it; None if there is none."""
    wanted = sweep_overrides(overrides)
    saved = sorted(parent.glob("*/multirun.yaml"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in saved:
        sweep_dir = path.parent
        if sweep_overrides(saved_overrides(sweep_dir)) != wanted:
            continue
        if unfinished(sweep_dir, wanted) and claim(sweep_dir):
            return sweep_dir
    return None


def sweep_dir_for(overrides: list[str], new_dir: Path, user_dir: bool) -> Path:
    """Where a sweep writes: a new directory, or with `trainer.resume=auto` the newest
    unfinished sweep with the same overrides (its finished jobs are kept, the others continue
    from their own last.pt or start). `user_dir`: `new_dir` is the user's, used as it is."""
    if "trainer.resume=auto" not in overrides or user_dir:
        return claimed(new_dir if user_dir else new_directory(new_dir), "sweep")
    sweep_dir = newest_unfinished_sweep(new_dir.parent, overrides)
    if sweep_dir is None:
        raise UserError(
            f"trainer.resume=auto found no unfinished sweep under {new_dir.parent} with these "
            "overrides that no other process is running; start a new sweep without "
            "trainer.resume"
        )
    return sweep_dir


class Sweep(Callback):
    """A sweep's directory when it starts, its summary when it ends."""

    @stops_the_run
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = list(config.hydra.overrides.task)
        user_dir = chosen_by_user(config, "hydra.sweep.dir")
        new_dir = Path(config.hydra.sweep.dir)
        set_directory(config, "sweep.dir", sweep_dir_for(overrides, new_dir, user_dir))

    @stops_the_run
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        written = write_summary(Path(config.hydra.sweep.dir))
        print(f"Sweep summary: {written}")


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
    status: str  # finished | unfinished | missing

    def without_seed(self) -> tuple[str, ...]:
        return tuple(item for item in self.overrides if not item.startswith("seed="))


def read_jobs(sweep_dir: Path) -> tuple[list[str], list[Job]]:
    """The overrides every job shares, and each job with its results."""
    all_jobs = jobs_of(saved_overrides(sweep_dir))
    shared = [item for item in all_jobs[0] if all(item in job for job in all_jobs)]
    jobs = []
    for number, overrides in enumerate(all_jobs):
        directory = job_dir(sweep_dir, number)
        if directory is not None and finished(directory):
            metrics, status = json.loads((directory / "metrics.json").read_text()), "finished"
        else:
            metrics, status = None, ("unfinished" if directory else "missing")
        jobs.append(
            Job(number, [item for item in overrides if item not in shared], metrics, status)
        )
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
        if job.metrics is not None and any(item.startswith("seed=") for item in job.overrides):
            groups.setdefault(job.without_seed(), []).append(job)
    return {key: members for key, members in groups.items() if len(members) > 1}


def mean_std(values: list[float], decimals: int) -> str:
    return f"{statistics.mean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def render_markdown(sweep_dir: Path, shared: list[str], jobs: list[Job]) -> str:
    done = sum(job.status == "finished" for job in jobs)
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"Every job: `{' '.join(shared) or '(no common overrides)'}`. "
        f"{done} of {len(jobs)} jobs finished.",
        "",
        "val: the best epoch's validation metrics (the model that was tested).",
        "",
    ]
    rows = [
        [str(job.number), f"`{' '.join(job.overrides)}`", job.status]
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
                mean_std([m.metrics[name] for m in members if m.metrics is not None], decimals)
                for name, _, decimals in MEASURES
                if name not in ("epochs",)
            ]
            for key, members in groups.items()
        ]
        titles = [title for name, title, _ in MEASURES if name not in ("epochs",)]
        lines += _table(["overrides", "seeds", *titles], rows)
    missing = [f"job {job.number} ({job.status})" for job in jobs if job.status != "finished"]
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
