"""Durable, atomic file writes: a temporary file beside the target, fsynced, then renamed over it;
and sets of files that are written whole or not at all.

A crash, a kill or a full disk never leaves a file half-written, and whatever was there before
stays intact until the new version is complete on disk. Files get the permissions the umask
gives any new file (0644 under the usual 022), not the temporary file's private 0600.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fmnist.errors import UserError

# The failures a user fixes outside fmnist, each with its fix; other OSErrors keep their reason.
FIXES = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is exceeded: free some space",
    errno.EACCES: "permission denied: fix the permissions or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable (the directory entry itself is data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind `error`, if any, following its chain of causes."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def cannot_write(path: Path, cause: OSError, what: str = "") -> str:
    """ "cannot write WHAT PATH (reason): fix", one line, the fix where `FIXES` has one."""
    fix = FIXES.get(cause.errno) if cause.errno is not None else None
    reason = cause.strerror or str(cause).splitlines()[0]
    return f"cannot write {what + ' ' if what else ''}{path} ({reason}){': ' + fix if fix else ''}"


def write_atomically(path: Path, write: Callable[[BinaryIO], object], what: str = "") -> None:
    """`write(f)` into a temporary file beside `path`, then make it `path`, durably.

    `what` names the file in the one-line error ("checkpoint"). An OSError (a full disk, no
    permission, a file where a directory should be) becomes that one line, with the fix where
    there is one; any other exception is a bug and propagates as it is.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)
    except Exception as e:
        cause = _os_error(e)  # torch.save wraps the OSError of a full disk in its own error
        if cause is None:
            raise
        raise UserError(
            f"{cannot_write(path, cause, what)}; the previous {what or 'file'}, if any, is intact"
        ) from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str, what: str = "") -> None:
    """`write_atomically` for text (UTF-8)."""
    write_atomically(path, lambda f: f.write(text.encode()), what)


def write_bytes_atomically(path: Path, data: bytes, what: str = "") -> None:
    """`write_atomically` for bytes."""
    write_atomically(path, lambda f: f.write(data), what)


@contextmanager
def all_or_nothing(directory: Path) -> Iterator[Path]:
    """Files the block creates in `directory` are removed again if it fails, so a command's set of
    outputs is whole or absent (files that were there before are left alone)."""
    directory.mkdir(parents=True, exist_ok=True)
    before = set(directory.iterdir())
    try:
        yield directory
    except BaseException:
        for path in set(directory.iterdir()) - before:
            path.unlink(missing_ok=True)
        raise
