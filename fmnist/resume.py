"""Which run a resume continues: `trainer.resume=auto` (the newest unfinished run with the same
config that no process is writing), `ckpt_path` (the run holding that checkpoint), or a restart
by torchrun; and the refusals, each one line naming every setting that differs, when the config
is not the run's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig

from fmnist import checkpoint
from fmnist.config import flatten, option_name
from fmnist.errors import UserError
from fmnist.runs import claim, claimed, finished, new_directory

# Settings a resume may change: how to start, and what does not change the result
# (data.num_workers only with data.loader=device, which does not use it: `_comparable`).
IGNORED_WHEN_RESUMING = (
    "trainer.resume",
    "ckpt_path",
    "trainer.progress",
    "trainer.checkpoint_every_steps",
    "data.num_workers",
)


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
