"""A search's trial: an ordinary training run (fmnist.train) with the settings Optuna chose,
judged on the validation split, in a run directory of its own under the search's.

A trial's directory is named like a sweep's job, by its number and what it varies
(`3_optimizer.lr-0.0412_scheduler-constant`), and holds what any run's does (checkpoints,
TensorBoard events with HPARAMS, metrics.json, .hydra/config.yaml), so `make tensorboard` and
`scripts/train.py ckpt_path=` treat it as a run; a pruned trial's also holds pruned.txt, a failed
one's failed.txt. The test split is never read (`data.test=false`). A retried trial (its worker
died, or a stop signal interrupted it) continues in its first attempt's directory from that
run's last checkpoint, so it ends with the weights the first attempt would have had.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf

from fmnist import runs
from fmnist.config import compose_train
from fmnist.engine import Metrics, Position
from fmnist.errors import Interrupted, SettingsError, report
from fmnist.files import write_text_atomically
from fmnist.search.space import Dimension, override, short
from fmnist.search.study import original
from fmnist.sweeps import FAILED, safe_name
from fmnist.train import Launch, train

PRUNED = "pruned.txt"  # in a pruned trial's directory: when and why it was stopped
NOT_TESTED = "data.test=false"  # a trial never reads the test split


@dataclass
class Objective:
    """Optuna's objective: one trial trained and judged (the values of `objectives`)."""

    search_dir: Path
    dimensions: list[Dimension]
    base: list[str]  # the training overrides every trial starts from
    objectives: list[str]  # metrics.json keys: val_acc, and maybe train_seconds
    prunes: bool  # whether the trial reports each epoch to the pruner
    continue_command: str  # what continues the search after a stop

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        values = {d.key: d.suggest(trial) for d in self.dimensions}
        chosen = [override(key, value) for key, value in values.items()]
        run_dir = self.run_dir(trial, values)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", socket.gethostname())
        done = run_dir / "metrics.json"
        if done.is_file():  # a retried trial whose first attempt finished, but was not told
            return self.values(json.loads(done.read_text()))
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        overrides = [*self.base, *chosen, NOT_TESTED, *(["trainer.resume=auto"] if resume else [])]
        cfg = compose_train(overrides)
        runs.claimed(run_dir, "trial", "search.study")
        try:
            saved_config(run_dir, cfg, [*self.base, *chosen])
            launch = Launch(list(values), self.continue_command, self.pruning(trial, run_dir))
            (run_dir / FAILED).unlink(missing_ok=True)
            metrics = train(cfg, run_dir, launch)
        except Interrupted:
            trial.set_user_attr("interrupted", True)  # the next start queues it again
            raise
        except SettingsError as e:  # its own settings: the search goes on without it
            report(e)
            write_text_atomically(run_dir / FAILED, f"{e}\n")
            trial.set_user_attr("failed", str(e))
            return (
                math.nan if len(self.objectives) == 1 else tuple(math.nan for _ in self.objectives)
            )
        finally:
            runs.release(run_dir)
        kept = ("val_acc", "val_loss", "best_epoch", "epochs", "train_seconds")
        trial.set_user_attr("metrics", {key: metrics[key] for key in kept if key in metrics})
        trial.set_user_attr("epochs", metrics["epochs"])
        print(f"trial {trial.number} ({' '.join(chosen)}): {outcome(metrics)}", flush=True)
        return self.values(metrics)

    def run_dir(self, trial: optuna.Trial, values: dict[str, Any]) -> Path:
        """A new trial's directory, or the one its first attempt ran in (a retry)."""
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        first = original(frozen)
        if first is not None:
            earlier = trial.study.get_trials(deepcopy=False)[first].user_attrs.get("run_dir")
            if earlier:
                return Path(earlier)
        varied = "_".join(f"{key}-{short(value)}" for key, value in values.items())
        return self.search_dir / f"{trial.number}_{safe_name(varied)}"

    def pruning(
        self, trial: optuna.Trial, run_dir: Path
    ) -> Callable[[Position, Metrics | None], None] | None:
        """After each epoch: report its validation accuracy, and stop the trial when the pruner
        says it is hopeless (its directory says so in pruned.txt)."""
        if not self.prunes:
            return None

        def after_epoch(position: Position, val: Metrics | None) -> None:
            assert val is not None  # a search validates (data.val_size > 0: checked first)
            trial.report(val.accuracy, position.epoch)
            trial.set_user_attr("epochs", position.epoch)
            if trial.should_prune():
                why = (
                    f"pruned after epoch {position.epoch}: val acc {val.accuracy:.4f}, below what "
                    "the search's other trials had reached by then"
                )
                write_text_atomically(run_dir / PRUNED, why + "\n")
                print(f"trial {trial.number}: {why}", flush=True)
                raise optuna.TrialPruned(why)

        return after_epoch

    def values(self, metrics: dict[str, Any]) -> float | tuple[float, ...]:
        found = tuple(float(metrics[name]) for name in self.objectives)
        return found[0] if len(found) == 1 else found


def saved_config(run_dir: Path, cfg: Any, overrides: list[str]) -> None:
    """What Hydra keeps of a run (.hydra/config.yaml and overrides.yaml), for a trial too: the
    page and the readers of runs find its settings where they find any run's."""
    hydra = run_dir / ".hydra"
    hydra.mkdir(parents=True, exist_ok=True)
    write_text_atomically(hydra / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text_atomically(hydra / "overrides.yaml", OmegaConf.to_yaml(overrides))


def outcome(metrics: dict[str, Any]) -> str:
    return (
        f"val acc {metrics['val_acc']:.4f} (epoch {metrics['best_epoch']} of "
        f"{metrics['epochs']}), {metrics['train_seconds']:.1f} s of training"
    )
