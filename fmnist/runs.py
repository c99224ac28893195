"""Run directories: where a run writes, and which run a resume continues.

Hydra creates a run's directory, writes `.hydra/` and starts its log before our code runs, so
the directory is chosen just before, by the Hydra callbacks the top configs install
(`hydra.callbacks`). `OutputDirectory` gives every command a directory of its own, created
atomically (`<time>`, else `<time>_2`, ...), so runs started in the same second never share
one. `RunDirectory`, for training, first validates the config, then picks a new directory or
the run being continued (`trainer.resume=auto`, `ckpt_path`, or a restart by torchrun); a
sweep's directory is fmnist.sweeps' choice. A run or sweep in progress holds a lock on its
directory, so a resume never picks one that another process is still writing. Nothing is
decided while the config is merely resolved: `--cfg job` stays cheap.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fmnist import checkpoint, distributed
from fmnist.config import flatten, validate
from fmnist.errors import UserError, reports_user_errors

IGNORED_WHEN_RESUMING = ("trainer.resume", "ckpt_path")
LOCK = ".lock"
_held: list[int] = []  # the lock files this process holds, open until it exits


# --------------------------------------------------------------------------------------------
# Directories of their own, and locks
# --------------------------------------------------------------------------------------------


def new_directory(path: Path) -> Path:
    """Create `path`, or `path_2`, `path_3`, ... if taken: atomically, so that commands started
    at the same moment never share a directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in count(1):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


def claim(directory: Path) -> bool:
    """Lock `directory` for this process until it exits; False if another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held.append(fd)
    return True


def claimed(directory: Path, what: str) -> Path:
    """`claim(directory)`, or the one-line error saying another process is writing it."""
    if not claim(directory):
        holder = (directory / LOCK).read_text().strip() or "?"
        raise UserError(
            f"{directory} is in use by another process (pid {holder}): wait for it, or stop it "
            f"before continuing this {what}"
        )
    return directory


# --------------------------------------------------------------------------------------------
# Which run a resume continues
# --------------------------------------------------------------------------------------------


def finished(run_dir: Path) -> bool:
    """A run is finished once it has written metrics.json."""
    return (run_dir / "metrics.json").exists()


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as flat keys, without the keys that only say how to start."""
    return {
        key: value
        for key, value in flatten(config)
        if key not in IGNORED_WHEN_RESUMING and not key.startswith("hydra.")
    }


def config_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting that differs between two configs, as a phrase; None when they agree."""
    old, new = _comparable(saved), _comparable(current)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            return f"{key}={old.get(key)} there, {new.get(key)} now"
    return None


def check_same_config(state: dict[str, Any], config: dict[str, Any], source: Path) -> None:
    """Resuming with other settings would silently change the run: refuse, naming the setting."""
    difference = config_difference(state["config"], config)
    if difference:
        raise UserError(
            f"{source} was trained with another config ({difference}): resume with the same "
            "overrides, or start a new run"
        )


def restarted() -> bool:
    """Whether torchrun restarted this worker group after a failure (`--max-restarts`)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def may_restart() -> bool:
    """Whether torchrun would restart this worker group after a failure."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0


def newest_unfinished(parent: Path, config: dict[str, Any]) -> Path | None:
    """Claim and return the newest run under `parent` with this config that has a checkpoint,
    no metrics.json, and no process writing it; None if there is none."""
    newest_first = sorted(
        parent.glob("*/checkpoints/last.pt"), key=lambda path: path.stat().st_mtime, reverse=True
    )
    for path in newest_first:
        run_dir = path.parent.parent
        if finished(run_dir) or config_difference(checkpoint.load(path)["config"], config):
            continue
        if claim(run_dir):
            return run_dir
    return None


def run_dir_for(config: dict[str, Any], new_dir: Path, chosen_by_user: bool) -> Path:
    """Where a run writes: a new directory, or the directory of the run it continues.

    `ckpt_path=...` continues the run holding that checkpoint; `trainer.resume=auto` (and every
    torchrun restart) the newest unfinished run with the same config under `new_dir`'s parent,
    so a resumed run appends to its own directory and TensorBoard series. The first attempt of
    a torchrun group that may be restarted starts a new run when there is nothing to resume.
    `chosen_by_user`: `new_dir` is the user's `hydra.run.dir`, used as it is.
    """
    resuming = config["trainer"]["resume"] == "auto" or restarted()
    if config["ckpt_path"]:
        path = checkpoint.resolve(config["ckpt_path"], "last.pt")
        check_same_config(checkpoint.load(path), config, path)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    elif resuming and chosen_by_user:
        if not (new_dir / "checkpoints" / "last.pt").exists() and not may_restart():
            raise UserError(
                f"trainer.resume=auto found nothing to resume in {new_dir}: it has no "
                "checkpoints/last.pt; start a new run without trainer.resume"
            )
        return claimed(new_dir, "run")
    elif resuming:
        unfinished = newest_unfinished(new_dir.parent, config)
        if unfinished is None and may_restart():  # nothing yet: a restart will resume this new run
            return claimed(new_directory(new_dir), "run")
        if unfinished is None:
            raise UserError(
                f"trainer.resume=auto found nothing to resume: no unfinished run under "
                f"{new_dir.parent} with this config that no other process is writing; start a "
                "new run without trainer.resume, or pass ckpt_path=..."
            )
        return unfinished
    else:
        return claimed(new_dir if chosen_by_user else new_directory(new_dir), "run")
    if finished(run_dir):
        raise UserError(f"{run_dir} has finished (metrics.json exists): nothing to resume")
    return claimed(run_dir, "run")


def resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint this run continues from, if any (`run_dir_for` chose `run_dir`)."""
    if cfg.ckpt_path:
        return checkpoint.resolve(cfg.ckpt_path, "last.pt")
    last = run_dir / "checkpoints" / "last.pt"
    resuming = cfg.trainer.resume == "auto" or restarted()
    return last if resuming and last.exists() else None


def resumed_sweep_job_finished(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether this is a job of a resumed sweep that finished before: it is kept, not rerun."""
    return cfg.trainer.resume == "auto" and in_sweep() and finished(run_dir)


def in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


# --------------------------------------------------------------------------------------------
# The Hydra callbacks, and what a command does with its directory
# --------------------------------------------------------------------------------------------


def stops_the_run(callback: Callable[..., None]) -> Callable[..., None]:
    """Hydra only warns about an exception in a callback and goes on, which would start the run
    in a directory nobody chose: a user's mistake ends in its one line, anything else stops."""
    reporting = reports_user_errors(callback)

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            reporting(*args, **kwargs)
        except Exception:
            traceback.print_exc()
            sys.exit(1)

    return wrapper


def chosen_by_user(config: DictConfig, key: str) -> bool:
    """Whether the user set `key` (e.g. `hydra.run.dir`) on the command line."""
    return any(item.split("=", 1)[0] == key for item in config.hydra.overrides.hydra)


def _on_main(decide: Callable[[], Path]) -> Path:
    """`decide()` on rank 0 alone (it creates and locks), its result or error on every rank."""
    result: tuple[str, str] | None = None
    if distributed.is_main():
        try:
            result = ("dir", str(decide()))
        except UserError as e:
            result = ("error", str(e))
    agreed = distributed.agree(result)
    assert agreed is not None  # rank 0 always decides, and every rank receives its result
    kind, value = agreed
    if kind == "error":
        raise UserError(value)
    return Path(value)


def set_directory(config: DictConfig, key: str, directory: Path) -> None:
    """Point `hydra.<key>` at `directory`, for this config and for the jobs composed from it."""
    with read_write(config), open_dict(config):
        OmegaConf.update(config, f"hydra.{key}", str(directory))
        overrides = [o for o in config.hydra.overrides.hydra if not o.startswith(f"hydra.{key}=")]
        config.hydra.overrides.hydra = [*overrides, f"hydra.{key}={directory}"]


class OutputDirectory(Callback):
    """Give a command's run a new directory of its own (unless the user named one)."""

    @stops_the_run
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not chosen_by_user(config, "hydra.run.dir"):
            set_directory(
                config, "run.dir", _on_main(lambda: new_directory(Path(config.hydra.run.dir)))
            )


class RunDirectory(Callback):
    """Validate a training run's config, then choose its directory (a sweep's: fmnist.sweeps)."""

    @stops_the_run
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        job = OmegaConf.masked_copy(config, [str(key) for key in config if key != "hydra"])
        validate(job)
        settings = cast(dict[str, Any], OmegaConf.to_container(job, resolve=True))
        user_dir = chosen_by_user(config, "hydra.run.dir")
        new_dir = Path(config.hydra.run.dir)
        set_directory(config, "run.dir", _on_main(lambda: run_dir_for(settings, new_dir, user_dir)))


def output_dir() -> Path:
    """The directory Hydra made for this command's outputs."""
    return Path(HydraConfig.get().runtime.output_dir)


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run directory holding nothing but Hydra's config copy, its log and our lock, so
    a command that failed before doing its work leaves no half-made output (a resumed run is
    never removed)."""
    if (
        not run_dir.is_dir()
        or run_dir.resolve() == Path.cwd().resolve()
        or not distributed.is_main()
    ):
        return
    if all(p.name in (".hydra", LOCK) or p.name.endswith(".log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def removed_if_unused(run_dir: Path) -> Iterator[Path]:
    """`discard_if_unused(run_dir)` when the block fails."""
    try:
        yield run_dir
    except BaseException:
        discard_if_unused(run_dir)
        raise
