"""User-facing errors: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (bad input, a missing file, a bad config); names the fix."""

    exit_code = EXIT_USER_ERROR
    label = "error"

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SettingsError(UserError):
    """A mistake in the run's own settings (a value out of range, a learning rate that diverges):
    the same settings fail again, so a sweep's resume cannot mend it."""


class Interrupted(UserError):
    """Training stopped on a signal, after saving a checkpoint: it ends a sweep too."""

    label = "stopped"


def user_error(error: BaseException) -> UserError | None:
    """The `UserError` an exception is, or wraps (Hydra's instantiate wraps what a constructor
    raises); None for anything else."""
    found = error if isinstance(error, UserError) else error.__cause__
    return found if isinstance(found, UserError) else None


def report(error: UserError) -> None:
    """`error: <message>` (or `stopped: ...`) on stderr."""
    print(f"{error.label}: {error}", file=sys.stderr)


def reports_user_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn a `UserError` raised by `fn` into `error: <message>` on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            error = user_error(e)
            if error is None:
                raise
            report(error)
            sys.exit(error.exit_code)

    return wrapper
