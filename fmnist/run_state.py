"""What a training run carries across an interruption: its checkpoints (weights, optimizer,
schedule, position in the data, every rank's RNG states), and the signals that stop it cleanly."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmnist import checkpoint, distributed, ood
from fmnist.engine import Metrics, Position, Training
from fmnist.errors import Interrupted
from fmnist.files import write_text_atomically
from fmnist.resume import check_same_config


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

    def __init__(self, run_dir: Path, training: Training, config: dict[str, Any]) -> None:
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
        if improved:  # best.pt first: last.pt is never newer than a best.pt it should replace
            self.save("best.pt", progress, progress.train_seconds, metrics)
        self.save("last.pt", progress, progress.train_seconds, metrics)

    def save(
        self,
        name: str,
        progress: Progress,
        train_seconds: float,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Write `name` with the whole training state (every rank takes part: RNG states)."""
        rng = distributed.gather(rng_states())  # each rank draws its own dropout masks
        if not self.writes:
            return
        training = self.training
        checkpoint.save(
            self.directory / name,
            model=training.model.state_dict(),
            **({"ema": training.ema.state_dict()} if training.ema is not None else {}),
            optimizer=training.optimizer.state_dict(),
            scheduler=training.scheduler.state_dict(),
            position=vars(progress.position).copy(),
            epoch=progress.position.epoch,
            step=progress.position.step,
            rng=rng,
            best_val_acc=progress.best_val_acc,
            train_seconds=train_seconds,
            config=self.config,
            precision="bf16" if training.compute.bf16 else "32",  # evaluation must match it
            metrics=metrics or {},
        )

    def restore(self, source: Path) -> Progress:
        """Continue from the checkpoint `source`: weights, optimizer, schedule, RNG, position.

        Loaded onto the CPU first (RNG states must be CPU tensors); the weights and optimizer
        state then go to wherever the model is.
        """
        training = self.training
        state = checkpoint.load(source)
        check_same_config(state, self.config, source)
        training.model.load_state_dict(state["model"])
        if training.ema is not None:
            training.ema.load_state_dict(state["ema"])
        training.optimizer.load_state_dict(state["optimizer"])
        training.scheduler.load_state_dict(state["scheduler"])
        states = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if distributed.rank() < len(states):
            set_rng_states(states[distributed.rank()])
        else:  # a checkpoint of fewer processes: this rank starts a stream of its own
            distributed.seed_per_rank(self.config["seed"] + state["position"]["step"])
        return Progress(
            Position(**state["position"]), state["best_val_acc"], state["train_seconds"]
        )

    def load_best(self) -> dict[str, Any]:
        """best.pt (once rank 0 has written it), its weights loaded into the model."""
        distributed.barrier()
        best = checkpoint.load(self.directory / "best.pt")
        self.training.model.load_state_dict(best["model"])
        if self.training.ema is not None:
            self.training.ema.load_state_dict(best["ema"])
        return best

    def finish(
        self, best: dict[str, Any], metrics: dict[str, Any], threshold: ood.Threshold | None
    ) -> None:
        """best.pt gets the run's final metrics and the threshold of its out-of-distribution
        flag (fitted on rank 0: None on the others), then metrics.json marks the run
        finished."""
        if not self.writes:
            return
        extra = {"ood": threshold.as_dict()} if threshold is not None else {}
        checkpoint.save(self.directory / "best.pt", **{**best, "metrics": metrics, **extra})
        text = json.dumps(metrics, indent=2) + "\n"
        write_text_atomically(self.directory.parent / "metrics.json", text)

    def last_good(self) -> str:
        last = self.directory / "last.pt"
        return str(last) if last.exists() else "none written yet"


def rng_states() -> dict[str, Any]:
    """Every random state a training step draws from (the loaders' come from (seed, epoch))."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop after the current step (a second one stops at once).
    `resume`: the command that continues the run, for the message."""

    def __init__(self, resume: str) -> None:
        self.resume = resume

    def __enter__(self) -> StopSignals:
        self.received: int | None = None
        self.previous = {
            sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise Interrupted(
                f"a second {signal.Signals(signum).name}: stopped at once, without saving; "
                f"continue from the last checkpoint with: {self.resume}",
                exit_code=128 + signum,
            )
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
