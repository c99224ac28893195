"""The Hydra callbacks that choose a command's directory before Hydra writes into it (the top
configs install them: `hydra.callbacks`). `OutputDirectory` gives a command a new directory of its
own (or the one its config names); `RunDirectory`, for training, first validates the config,
then picks a new directory or the run being continued (fmnist.resume); a sweep's directory is
fmnist.sweeps' choice. Nothing is decided while the config is merely resolved: `--cfg job`
stays cheap.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fmnist import distributed
from fmnist.config import validate
from fmnist.errors import UserError, reports_user_errors
from fmnist.resume import run_dir_for
from fmnist.runs import forget_all, new_directory, writable


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
