"""Run directories: a directory of its own for every command, its lock, and what a failed
command leaves behind.

Hydra creates a run's directory, writes `.hydra/` and starts its log before our code runs, so
the directory is chosen just before, by the Hydra callbacks the top configs install
(fmnist.callbacks). `new_directory` gives every command a directory of its own, created
atomically (`<time>`, else `<time>_2`, ...), so runs started in the same second never share one.
A run or sweep in progress holds a lock on its directory (`claim`), so a resume never picks one
that another process is still writing.

Before anything is written, the callbacks note what the chosen directory held (`remember`): a
command that fails before producing anything (`removed_if_unused`) then removes only what it
created (a new directory, Hydra's `.hydra/`, its log, our lock) and puts back what it rewrote
(`.hydra/*`, an earlier log's length), so a user's directory is never lost and a refused resume
leaves its run exactly as it was.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from fmnist import distributed
from fmnist.checkpoint import SWEEP_CONFIG
from fmnist.errors import UserError

LOCK = ".lock"


_held: dict[Path, int] = {}  # the lock files this process holds, open until it exits (or
# `release`), by directory


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


def finished(run_dir: Path) -> bool:
    """A run is finished once it has written metrics.json."""
    return (run_dir / "metrics.json").exists()


def in_sweep() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def output_dir() -> Path:
    """The directory Hydra made for this command's outputs."""
    return Path(HydraConfig.get().runtime.output_dir)
