"""Atomic file writes: a temporary file beside the target, then a rename; and sets of files that
are written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fmnist.errors import UserError


def write_atomically(path: Path, write: Callable[[Path], object], what: str = "") -> None:
    """`write(tmp)`, then rename `tmp` to `path`: a crash, a full disk or a failed write never
    leaves `path` half-written, and whatever was there before stays intact. `what` names the
    file in the one-line error ("checkpoint")."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        write(Path(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise UserError(
            f"cannot write {what + ' ' if what else ''}{path} ({reason}): free disk space or fix "
            "permissions; "
            f"the previous {what or 'file'}, if any, is intact"
        ) from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


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
