"""Run directories: where a run writes, which run a resume continues, and what a run carries
across an interruption (RNG states) or stops on (signals).

Hydra creates the run directory, writes `.hydra/` and starts `train.log` before our code runs, so
the directory is chosen just before that, by `RunDirectory`, a Hydra callback that train.yaml
installs (`hydra.callbacks`): it validates the config, then picks a new directory or, with
`trainer.resume=auto` or `ckpt_path`, the run being continued, and sets `hydra.run.dir` to it.
Nothing is decided while the config is merely resolved, so `--cfg job` and `--help` stay cheap.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fmnist import checkpoint, distributed
from fmnist.config import flatten, validate
from fmnist.engine import Metrics, Position, Training
from fmnist.errors import UserError, reports_user_errors
from fmnist.files import write_atomically

IGNORED_WHEN_RESUMING = ("trainer.resume", "ckpt_path")


# --------------------------------------------------------------------------------------------
# Choosing the run directory
# --------------------------------------------------------------------------------------------


def finished(run_dir: Path) -> bool:
    """A run is finished once it has written metrics.json."""
    return (run_dir / "metrics.json").exists()


def _comparable(config: dict) -> dict:
    """A config as flat keys, without the keys that only say how to start."""
    return {
        key: value
        for key, value in flatten(config)
        if key not in IGNORED_WHEN_RESUMING and not key.startswith("hydra.")
    }


def config_difference(saved: dict, current: dict) -> str | None:
    """The first setting that differs between two configs, as a phrase; None when they agree."""
    old, new = _comparable(saved), _comparable(current)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            return f"{key}={old.get(key)} there, {new.get(key)} now"
    return None


def check_same_config(state: dict[str, Any], config: dict, source: Path) -> None:
    """Resuming with other settings would silently change the run: refuse, naming the setting."""
    difference = config_difference(state["config"], config)
    if difference:
        raise UserError(
            f"{source} was trained with another config ({difference}): resume with the same "
            "overrides, or start a new run"
        )


def newest_unfinished(parent: Path, config: dict) -> Path:
    """The newest run under `parent` with this config that has a checkpoint and no metrics."""
    newest_first = sorted(
        parent.glob("*/checkpoints/last.pt"), key=lambda path: path.stat().st_mtime, reverse=True
    )
    unfinished = [path for path in newest_first if not finished(path.parent.parent)]
    matching = [
        path.parent.parent
        for path in unfinished
        if config_difference(checkpoint.load(path)["config"], config) is None
    ]
    if not matching:
        raise UserError(
            f"trainer.resume=auto found nothing to resume: no unfinished run under {parent} "
            f"with this config ({len(unfinished)} unfinished with another); start a new run "
            "without trainer.resume, or pass ckpt_path=..."
        )
    return matching[0]


def run_dir_for(config: dict, new_dir: str) -> str:
    """Where a run writes: `new_dir` for a new run, or the directory of the run it continues.

    `trainer.resume=auto` continues the newest unfinished run with the same config under
    `new_dir`'s parent, and `ckpt_path=...` the run holding that checkpoint, so a resumed run
    appends to its own directory and TensorBoard series.
    """
    if config["ckpt_path"]:
        path = checkpoint.resolve(config["ckpt_path"], "last.pt")
        check_same_config(checkpoint.load(path), config, path)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    elif config["trainer"]["resume"] == "auto":
        run_dir = newest_unfinished(Path(new_dir).parent, config)
    else:
        return distributed.agree(new_dir)  # under torchrun, rank 0's timestamp for all
    if finished(run_dir):
        raise UserError(f"{run_dir} has finished (metrics.json exists): nothing to resume")
    return distributed.agree(str(run_dir))


def resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint this run continues from, if any (see `run_dir_for`)."""
    if cfg.ckpt_path:
        return checkpoint.resolve(cfg.ckpt_path, "last.pt")
    if cfg.trainer.resume == "auto":
        return run_dir / "checkpoints" / "last.pt"
    return None


def _overridden(config: DictConfig, key: str) -> bool:
    return any(item.split("=", 1)[0] == key for item in config.hydra.overrides.hydra)


class RunDirectory(Callback):
    """Validate a single run's config, then choose its directory (Hydra creates it next)."""

    @reports_user_errors
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        job = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        validate(job)
        if _overridden(config, "hydra.run.dir"):  # the user's own choice stands
            return
        chosen = run_dir_for(OmegaConf.to_container(job, resolve=True), config.hydra.run.dir)
        with read_write(config), open_dict(config):
            config.hydra.run.dir = chosen


def output_dir() -> Path:
    """The directory Hydra made for this command's outputs."""
    return Path(HydraConfig.get().runtime.output_dir)


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run directory holding nothing but Hydra's config copy and log, so a command that
    failed before doing its work leaves no half-made output (a resumed run is never removed)."""
    if (
        not run_dir.is_dir()
        or run_dir.resolve() == Path.cwd().resolve()
        or not distributed.is_main()
    ):
        return
    if all(p.name == ".hydra" or p.name.endswith(".log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def removed_if_unused(run_dir: Path) -> Iterator[Path]:
    """`discard_if_unused(run_dir)` when the block fails."""
    try:
        yield run_dir
    except BaseException:
        discard_if_unused(run_dir)
        raise


# --------------------------------------------------------------------------------------------
# What a run carries across an interruption, and what stops it
# --------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """How far a run has got, as its checkpoints record it."""

    position: Position = field(default_factory=Position)
    best_val_acc: float = -1.0
    train_seconds: float = 0.0

    def summary(self, images_trained: int) -> dict[str, Any]:
        """The counts and timings metrics.json reports."""
        return {
            "epochs": self.position.epoch,
            "steps": self.position.step,
            "skipped_steps": self.position.skipped,
            "train_seconds": round(self.train_seconds, 2),
            "train_images_per_second": round(images_trained / self.train_seconds, 1),
        }


class Checkpoints:
    """A run's checkpoints/ directory: its whole training state, saved by rank 0 (`last.pt`,
    `best.pt`) and restored by every rank."""

    def __init__(self, run_dir: Path, training: Training, config: dict) -> None:
        self.directory, self.training, self.config = run_dir / "checkpoints", training, config
        self.every = config["trainer"]["checkpoint_every_steps"]
        self.writes = distributed.is_main()  # rank 0 alone writes files

    def due(self, step: int) -> bool:
        """Whether last.pt is also saved after this step (trainer.checkpoint_every_steps)."""
        return bool(self.every) and step % self.every == 0

    def save_epoch(self, progress: Progress, val: Metrics | None) -> None:
        """At an epoch's end: last.pt, and best.pt when validation accuracy improved (or when
        there is no validation split: then the last epoch is the model)."""
        improved = val is None or val.accuracy > progress.best_val_acc
        if val:
            progress.best_val_acc = max(progress.best_val_acc, val.accuracy)
        metrics = val.as_dict("val") if val else {}
        self.save("last.pt", progress, progress.train_seconds, metrics)
        if improved:
            self.save("best.pt", progress, progress.train_seconds, metrics)

    def save(
        self, name: str, progress: Progress, train_seconds: float, metrics: dict | None = None
    ) -> None:
        if not self.writes:
            return
        training = self.training
        checkpoint.save(
            self.directory / name,
            model=training.model.state_dict(),
            optimizer=training.optimizer.state_dict(),
            scheduler=training.scheduler.state_dict(),
            position=vars(progress.position).copy(),
            epoch=progress.position.epoch,
            step=progress.position.step,
            rng=rng_states(),
            best_val_acc=progress.best_val_acc,
            train_seconds=train_seconds,
            config=self.config,
            precision="bf16" if training.compute.bf16 else "32",  # evaluation must match it
            metrics=metrics or {},
        )

    def restore(self, source: Path) -> Progress:
        """Continue from the checkpoint `source`: weights, optimizer, schedule, RNG, position."""
        training = self.training
        state = checkpoint.load(source, training.compute.device)
        check_same_config(state, self.config, source)
        training.model.load_state_dict(state["model"])
        training.optimizer.load_state_dict(state["optimizer"])
        training.scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        return Progress(
            Position(**state["position"]), state["best_val_acc"], state["train_seconds"]
        )

    def load_best(self) -> dict[str, Any]:
        """best.pt (once rank 0 has written it), its weights loaded into the model."""
        distributed.barrier()
        best = checkpoint.load(self.directory / "best.pt", self.training.compute.device)
        self.training.model.load_state_dict(best["model"])
        return best

    def finish(self, best: dict[str, Any], metrics: dict) -> None:
        """best.pt gets the run's final metrics, then metrics.json marks the run finished."""
        if not self.writes:
            return
        checkpoint.save(self.directory / "best.pt", **{**best, "metrics": metrics})
        text = json.dumps(metrics, indent=2) + "\n"
        write_atomically(self.directory.parent / "metrics.json", lambda tmp: tmp.write_text(text))

    def last_good(self) -> str:
        last = self.directory / "last.pt"
        return str(last) if last.exists() else "none written yet"


def rng_states() -> dict:
    """Every random state a training step draws from (the loaders' come from (seed, epoch))."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop after the current step (a second one stops at once)."""

    def __enter__(self) -> StopSignals:
        self.received: int | None = None
        self.previous = {
            sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Interrupted(UserError):
    """Training stopped on a signal, after saving a checkpoint."""

    label = "stopped"
