"""The search's settings (`scripts/tune.py`): the training config, whose every override applies to
every trial, plus a `search` section, with its defaults and rules written once. configs/tune.yaml
adds Hydra's settings; configs/hparams_search/<name>.yaml fills `search` for one search space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from fmnist.config import TrainConfig, at_least, choose, require, validate
from fmnist.errors import SettingsError

# What a trial is judged on, and which way is better: validation accuracy (the best epoch's), and
# optionally the seconds its training took (its Pareto front against accuracy).
OBJECTIVES = {"val_acc": "maximize", "train_seconds": "minimize"}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")  # Optuna's RDB storage, through SQLAlchemy


@dataclass
class SearchConfig:
    """How Optuna searches (fmnist.search); `space` and `overrides` come from the
    hparams_search option."""

    study: str = "search"  # the study's name, and its directory's (each hparams_search sets one)
    storage: str | None = None  # null: SQLite in the search's directory; several processes or
    # machines share a database: postgresql://user:password@host/db (or mysql://...)
    n_trials: int = 20  # trials the study runs in all, over every worker: complete or pruned
    objectives: list[str] = field(default_factory=lambda: ["val_acc"])  # and train_seconds: the
    # Pareto front of accuracy against time (no pruning then: Optuna prunes one objective only)
    sampler: str = "tpe"  # tpe (Optuna's default) | random
    pruner: str = "median"  # median | hyperband | none: stop a hopeless trial after an epoch
    startup_trials: int = 5  # trials run in full, their settings drawn at random, before TPE
    # and the median pruner use the others
    seed: int = 0  # the sampler's: the same settings are proposed in the same order
    heartbeat: int = 10  # seconds between a running trial's heartbeats in the storage
    grace: int = 60  # seconds without a heartbeat after which a trial is taken as dead, and
    # retried by the next worker from its last checkpoint
    worker: int = 0  # a label: -m search.worker=range(N) starts N workers (Hydra's launchers)
    overrides: list[str] = field(default_factory=list)  # training overrides every trial starts
    # from (the space's own: experiment=fast data.val_size=5000); the command line's come after
    space: dict[str, Any] = field(default_factory=dict)  # the settings searched, each
    # {low: L, high: H, log: bool, step: S} or {choices: [a, b]} (fmnist.search.space)

    def __post_init__(self) -> None:
        require(
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.study) is not None,
            "search.study",
            self.study,
            "give a name of letters, digits, '.', '_' or '-' (it names a directory)",
        )
        at_least("search.n_trials", self.n_trials, 1)
        require(
            len(self.objectives) == len(set(self.objectives))
            and self.objectives[:1] == ["val_acc"]
            and set(self.objectives) <= set(OBJECTIVES),
            "search.objectives",
            self.objectives,
            "give [val_acc], or [val_acc,train_seconds] for the Pareto front",
        )
        choose("search.sampler", self.sampler, SAMPLERS)
        choose("search.pruner", self.pruner, PRUNERS)
        if len(self.objectives) > 1 and self.pruner != "none":
            raise SettingsError(
                f"search.pruner={self.pruner} cannot stop trials of a two-objective search "
                "(Optuna prunes one objective only): set search.pruner=none, and keep each "
                "trial's budget small (trainer.max_epochs)"
            )
        at_least("search.startup_trials", self.startup_trials, 0, "must be 0 or more")
        at_least("search.heartbeat", self.heartbeat, 1)
        require(
            self.grace > self.heartbeat,
            "search.grace",
            self.grace,
            f"must be longer than search.heartbeat ({self.heartbeat} s)",
        )
        if self.storage is not None:
            scheme = self.storage.split(":", 1)[0].split("+", 1)[0]
            require(
                scheme in STORAGE_SCHEMES and "://" in self.storage,
                "search.storage",
                self.storage.split("@")[-1] if "@" in self.storage else self.storage,
                "give sqlite:///path/study.db, postgresql://user:password@host/db or "
                "mysql://user:password@host/db (or leave it out: SQLite in the search's "
                "directory)",
            )

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[name] for name in self.objectives]


@dataclass
class TuneConfig(TrainConfig):
    search: SearchConfig = field(default_factory=SearchConfig)


ConfigStore.instance().store(name="tune_schema", node=TuneConfig)


def validate_tune(cfg: DictConfig) -> TuneConfig:
    """Check every key, range and choice (the training settings' too); the first problem is
    raised as a one-line `UserError`."""
    return cast(TuneConfig, validate(cfg))
