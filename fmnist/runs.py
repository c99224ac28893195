"""Run directories: where a run writes, which run a resume continues, and what a failed command
leaves behind.

Hydra creates a run's directory, writes `.hydra/` and starts its log before our code runs, so
the directory is chosen just before, by the Hydra callbacks the top configs install
(`hydra.callbacks`). `OutputDirectory` gives every command a directory of its own, created
atomically (`<time>`, else `<time>_2`, ...), so runs started in the same second never share
one. `RunDirectory`, for training, first validates the config, then picks a new directory or
the run being continued (`trainer.resume=auto`, `ckpt_path`, or a restart by torchrun); a
sweep's directory is fmnist.sweeps' choice. A run or sweep in progress holds a lock on its
directory, so a resume never picks one that another process is still writing. Nothing is
decided while the config is merely resolved: `--cfg job` stays cheap.

Before anything is written, the callbacks note what the chosen directory held (`remember`): a
command that fails before producing anything (`removed_if_unused`) then removes only what it
created (a new directory, Hydra's `.hydra/`, its log, our lock) and puts back what it rewrote
(`.hydra/*`, an earlier log's length), so a user's directory is never lost and a refused resume
leaves its run exactly as it was.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fmnist import checkpoint, distributed
from fmnist.checkpoint import SWEEP_CONFIG
from fmnist.config import flatten, option_name, validate
from fmnist.errors import UserError, reports_user_errors

# Settings a resume may change: how to start, and what does not change the result
# (data.num_workers only with data.loader=device, which does not use it: `_comparable`).
IGNORED_WHEN_RESUMING = (
    "trainer.resume",
    "ckpt_path",
    "trainer.progress",
    "trainer.checkpoint_every_steps",
    "data.num_workers",
)
LOCK = ".lock"
_held: dict[Path, int] = {}  # the lock files this process holds, open until it exits (or
# `release`), by directory


# --------------------------------------------------------------------------------------------
# What a directory held before this command, and putting it back when the command fails
# --------------------------------------------------------------------------------------------


def _bookkeeping(name: str) -> bool:
    """What every command writes into its directory before its own work: Hydra's config copy
    and log (a sweep's config), our lock."""
    return name in (".hydra", LOCK, SWEEP_CONFIG) or name.endswith(".log")


@dataclass
class Before:
    """What an output directory held before this command wrote to it."""

    created: Path | None = None  # when it is new: the outermost directory made for it
    entries: dict[str, int] = field(default_factory=dict)  # top-level name: mtime (ns)
    contents: dict[str, bytes] = field(default_factory=dict)  # .hydra/*, .lock, multirun.yaml
    log_sizes: dict[str, int] = field(default_factory=dict)  # top-level *.log files

    @classmethod
    def look(cls, path: Path) -> Before:
        if not path.is_dir():
            return cls(created=_outermost_missing(path))
        before = cls()
        for entry in path.iterdir():
            before.entries[entry.name] = entry.lstat().st_mtime_ns
            if entry.name.endswith(".log") and entry.is_file():
                before.log_sizes[entry.name] = entry.stat().st_size
        hydra = (path / ".hydra").glob("*") if (path / ".hydra").is_dir() else []
        saved = [path / LOCK, path / SWEEP_CONFIG, *hydra]
        for file in saved:
            if file.is_file():
                before.contents[str(file.relative_to(path))] = file.read_bytes()
        return before


_before: dict[Path, Before] = {}  # this command's output directories, as they were


def _outermost_missing(path: Path) -> Path:
    """The outermost of `path` and its parents that does not exist (creating `path` makes it)."""
    outermost = path
    while not outermost.parent.exists() and outermost.parent != outermost:
        outermost = outermost.parent
    return outermost


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def remember(path: Path, before: Before | None = None) -> None:
    """Note what `path` holds now, before this command writes there (the first note counts)."""
    _before.setdefault(_key(path), before or Before.look(path))


def forget_all() -> None:
    """A new command starts (tests run several in one process)."""
    _before.clear()


def _found(run_dir: Path) -> Before | None:
    """What `run_dir` held, if this command noted it; a sweep's job directory that was not there
    when the sweep started is new."""
    key = _key(run_dir)
    if key in _before:
        return _before[key]
    if key.parent in _before:
        return Before(created=key)
    return None


def put_back(run_dir: Path) -> None:
    """Undo what this command did to `run_dir`, unless it produced something of its own: remove
    the entries it created (all of them, and the directory, when the directory is new), restore
    the `.hydra/` files and lock it rewrote and cut the logs it appended to."""
    before = _found(run_dir)
    if before is None or not run_dir.is_dir() or not distributed.is_main():
        return
    now = {entry.name: entry for entry in run_dir.iterdir()}
    created = [name for name in now if name not in before.entries]
    changed = [
        name
        for name, entry in now.items()
        if name in before.entries
        and not _bookkeeping(name)
        and entry.lstat().st_mtime_ns != before.entries[name]
    ]
    if changed or not all(_bookkeeping(name) for name in created):
        return  # the command's own outputs (checkpoints, ...): kept
    for name in created:
        _remove(now[name])
    hydra = run_dir / ".hydra"
    if hydra.is_dir():
        for file in hydra.iterdir():
            if str(file.relative_to(run_dir)) not in before.contents:
                _remove(file)
    for name, content in before.contents.items():
        (run_dir / name).write_bytes(content)
    for name, size in before.log_sizes.items():
        if (run_dir / name).is_file():
            os.truncate(run_dir / name, size)
    if before.created is not None:  # empty directories this command made, innermost first
        for directory in [run_dir, *run_dir.parents]:
            try:
                directory.rmdir()
            except OSError:
                break
            if _key(directory) == _key(before.created):
                break


def put_back_all() -> None:
    """`put_back` every directory this command noted: for a command that fails after choosing
    them but before its jobs run (a sweep whose jobs' overrides Hydra refuses)."""
    for path in list(_before):
        put_back(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def removed_if_unused(run_dir: Path) -> Iterator[Path]:
    """`put_back(run_dir)` when the block fails: a command that failed before doing its work
    leaves no half-made output, and nothing of what was there before is lost."""
    try:
        yield run_dir
    except BaseException:
        put_back(run_dir)
        raise


# --------------------------------------------------------------------------------------------
# Directories of their own, and locks
# --------------------------------------------------------------------------------------------


def unwritable(path: Path, error: OSError, key: str = "hydra.run.dir") -> UserError:
    """The one line for an output directory that cannot be created or written."""
    reason = error.strerror or str(error)
    return UserError(
        f"cannot create or write the output directory {path} ({reason}): give one you can "
        f"write, {key}=DIR"
    )


def new_directory(path: Path, key: str = "hydra.run.dir") -> Path:
    """Create `path`, or `path_2`, `path_3`, ... if taken: atomically, so that commands started
    at the same moment never share a directory."""
    outermost = _outermost_missing(path.parent) if not path.parent.exists() else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for n in count(1):
            candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            remember(candidate, Before(created=outermost or candidate))
            return candidate
    except OSError as e:
        raise unwritable(path, e, key) from None
    raise AssertionError("unreachable")


def writable(directory: Path, key: str = "hydra.run.dir") -> Path:
    """`directory`, created if needed and proven writable (one line if not); noted first."""
    remember(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        put_back(directory)
        raise unwritable(directory, e, key) from None
    return directory


def claim(directory: Path, key: str = "hydra.run.dir") -> bool:
    """Lock `directory` for this process until it exits; False if another process holds it."""
    remember(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        put_back(directory)
        raise unwritable(directory, e, key) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[_key(directory)] = fd
    return True


def release(directory: Path) -> None:
    """Unlock `directory` (a search's trial, done while its process goes on to the next)."""
    fd = _held.pop(_key(directory), None)
    if fd is not None:
        os.close(fd)


def claimed(directory: Path, what: str, key: str = "hydra.run.dir", new: bool = False) -> Path:
    """`claim(directory)`, or the one-line error saying another process is writing it (`new`:
    for a new run or sweep, which can go elsewhere)."""
    if not claim(directory, key):
        holder = (directory / LOCK).read_text().strip() or "?"
        fix = (
            f"give another {key} for this new {what}, or wait for it"
            if new
            else f"wait for it, or stop it before continuing this {what}"
        )
        raise UserError(f"{directory} is in use by another process (pid {holder}): {fix}")
    return directory


# --------------------------------------------------------------------------------------------
# Which run a resume continues
# --------------------------------------------------------------------------------------------


def finished(run_dir: Path) -> bool:
    """A run is finished once it has written metrics.json."""
    return (run_dir / "metrics.json").exists()


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as flat keys, without the keys that only say how to start or show a run."""
    ignored = set(IGNORED_WHEN_RESUMING)
    if config.get("data", {}).get("loader") == "torch":  # its workers' seeds shape the data
        ignored.discard("data.num_workers")
    return {
        key: value
        for key, value in flatten(config)
        if key not in ignored and not key.startswith("hydra.")
    }


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every setting that differs between two configs, as phrases (a group whose option differs
    as the option, not its every key); empty when they agree."""
    old, new = _comparable(saved), _comparable(current)
    differing = [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    other_option = [  # groups whose option differs (model=linear): their keys differ anyway
        key.split(".")[0] for key in differing if key.endswith("._target_") and key.count(".") == 1
    ]
    differences = [
        f"{group}={option_name(group, saved[group])} there, "
        f"{option_name(group, current[group])} now"
        for group in other_option
    ]
    return differences + [
        f"{key}={old.get(key)} there, {new.get(key)} now"
        for key in differing
        if key.split(".", 1)[0] not in other_option
    ]


def check_same_config(state: dict[str, Any], config: dict[str, Any], source: Path) -> None:
    """Resuming with other settings would silently change the run: refuse, naming each one."""
    differences = config_differences(state["config"], config)
    if differences:
        raise UserError(
            f"{source} was trained with another config ({'; '.join(differences)}): resume with "
            "the same overrides, or start a new run"
        )


def restarted() -> bool:
    """Whether torchrun restarted this worker group after a failure (`--max-restarts`)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def may_restart() -> bool:
    """Whether torchrun would restart this worker group after a failure."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0


def saved_config(path: Path) -> dict[str, Any]:
    """The config a training checkpoint was saved with (one line if it is not one)."""
    state = checkpoint.load(path)
    if not isinstance(state.get("config"), dict):
        raise UserError(f"{path} has no saved config: it is not a checkpoint of a training run")
    return cast(dict[str, Any], state["config"])


@dataclass
class Search:
    """What a look for the run to resume found: the run (claimed), else what came closest."""

    found: Path | None = None
    closest: tuple[Path, list[str]] | None = None  # an unfinished run and how it differs
    in_use: int = 0  # unfinished runs with this config that another process is writing

    def why_not(self, parent: Path) -> str:
        """The one line for a search that found nothing."""
        message = (
            f"trainer.resume=auto found nothing to resume: no unfinished run under {parent} "
            "with this config that no other process is writing"
        )
        if self.in_use:
            message += f" ({self.in_use} with this config in use by another process)"
        if self.closest is None:
            return message + "; start a new run without trainer.resume"
        run_dir, differences = self.closest
        return (
            f"{message}; the closest, {run_dir}, differs in {'; '.join(differences)}: resume "
            "it with its overrides (or ckpt_path=...), or start a new run without trainer.resume"
        )


def search_unfinished(parent: Path, config: dict[str, Any]) -> Search:
    """Claim the newest run under `parent` with this config that has a checkpoint, no
    metrics.json, and no process writing it. A checkpoint that cannot be read, or is not a
    training run's, is skipped with a one-line note."""
    newest_first = sorted(
        parent.glob("*/checkpoints/last.pt"), key=lambda path: path.stat().st_mtime, reverse=True
    )
    search = Search()
    for path in newest_first:
        run_dir = path.parent.parent
        if finished(run_dir):
            continue
        try:
            differences = config_differences(saved_config(path), config)
        except UserError as e:
            print(f"note: skipped while looking for a run to resume: {e}", file=sys.stderr)
            continue
        if not differences and claim(run_dir):
            search.found = run_dir
            return search
        if not differences:
            search.in_use += 1
        elif search.closest is None or len(differences) < len(search.closest[1]):
            search.closest = (run_dir, differences)
    return search


def run_dir_for(config: dict[str, Any], new_dir: Path, chosen_by_user: bool) -> Path:
    """Where a run writes: a new directory, or the directory of the run it continues.

    `ckpt_path=...` continues the run holding that checkpoint; `trainer.resume=auto` (and every
    torchrun restart) the newest unfinished run with the same config under `new_dir`'s parent,
    so a resumed run appends to its own directory and TensorBoard series. The first attempt of
    a torchrun group that may be restarted starts a new run when there is nothing to resume.
    `chosen_by_user`: `new_dir` is the user's `hydra.run.dir`, used as it is; a new run there
    never replaces a run, and a resume there is refused with another config.
    """
    resuming = config["trainer"]["resume"] == "auto" or restarted()
    if config["ckpt_path"]:
        path = checkpoint.resolve(config["ckpt_path"], "last.pt")
        check_same_config(checkpoint.load(path), config, path)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    elif resuming and chosen_by_user:
        last = new_dir / "checkpoints" / "last.pt"
        if not last.exists() and not may_restart():
            raise UserError(
                f"trainer.resume=auto found nothing to resume in {new_dir}: it has no "
                "checkpoints/last.pt; start a new run without trainer.resume"
            )
        if last.exists() and not finished(new_dir):
            check_same_config({"config": saved_config(last)}, config, last)
        run_dir = new_dir
    elif resuming:
        search = search_unfinished(new_dir.parent, config)
        if search.found is None and may_restart():  # nothing yet: a restart resumes this run
            return claimed(new_directory(new_dir), "run")
        if search.found is None:
            raise UserError(search.why_not(new_dir.parent))
        return search.found
    elif chosen_by_user:
        refuse_to_replace(new_dir)
        return claimed(new_dir, "run", new=True)
    else:
        return claimed(new_directory(new_dir), "run")
    if finished(run_dir):
        raise UserError(f"{run_dir} has finished (metrics.json exists): nothing to resume")
    return claimed(run_dir, "run")


def refuse_to_replace(run_dir: Path) -> None:
    """A new run in a directory that holds a run would overwrite its checkpoints and mix its
    TensorBoard series and log: refused, in one line."""
    if finished(run_dir):
        raise UserError(
            f"{run_dir} holds a finished run (metrics.json exists): give another hydra.run.dir "
            "for a new run"
        )
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise UserError(
            f"{run_dir} holds an unfinished run: continue it with trainer.resume=auto (same "
            "overrides), or give another hydra.run.dir for a new run"
        )


def resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint this run continues from, if any (`run_dir_for` chose `run_dir`)."""
    if cfg.ckpt_path:
        return checkpoint.resolve(cfg.ckpt_path, "last.pt")
    last = run_dir / "checkpoints" / "last.pt"
    resuming = cfg.trainer.resume == "auto" or restarted()
    return last if resuming and last.exists() else None


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


def set_hydra(config: DictConfig, key: str, value: Any, override: str) -> None:
    """Set `hydra.<key>` for this config and, as the override `hydra.<key>=<override>`, for the
    jobs composed from it."""
    with read_write(config), open_dict(config):
        OmegaConf.update(config, f"hydra.{key}", value)
        overrides = [o for o in config.hydra.overrides.hydra if not o.startswith(f"hydra.{key}=")]
        config.hydra.overrides.hydra = [*overrides, f"hydra.{key}={override}"]


def set_directory(config: DictConfig, key: str, directory: Path) -> None:
    """Point `hydra.<key>` at `directory`, for this config and for the jobs composed from it."""
    set_hydra(config, key, str(directory), str(directory))


class OutputDirectory(Callback):
    """Give a command's run a new directory of its own (unless the user named one); `fixed`:
    always the directory its config names (a search's, which its workers share)."""

    def __init__(self, fixed: bool = False) -> None:
        self.fixed = fixed

    @stops_the_run
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        forget_all()
        path = Path(config.hydra.run.dir)
        if self.fixed or chosen_by_user(config, "hydra.run.dir"):
            _on_main(lambda: writable(path))
        else:
            set_directory(config, "run.dir", _on_main(lambda: new_directory(path)))


class RunDirectory(Callback):
    """Validate a training run's config, then choose its directory (a sweep's: fmnist.sweeps)."""

    @stops_the_run
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        forget_all()
        job = OmegaConf.masked_copy(config, [str(key) for key in config if key != "hydra"])
        validate(job)
        settings = cast(dict[str, Any], OmegaConf.to_container(job, resolve=True))
        user_dir = chosen_by_user(config, "hydra.run.dir")
        new_dir = Path(config.hydra.run.dir)
        set_directory(config, "run.dir", _on_main(lambda: run_dir_for(settings, new_dir, user_dir)))


def output_dir() -> Path:
    """The directory Hydra made for this command's outputs."""
    return Path(HydraConfig.get().runtime.output_dir)
