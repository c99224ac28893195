"""The training configuration: every option of every config group, with its defaults and rules.

Each group option is a dataclass stored in Hydra's ConfigStore by `@option(group, name)`, so
`model=linear` selects one and `model.dropout=0.2` overrides one of its fields; this file is the
only place a default is written (configs/ keeps train.yaml, the experiment presets and the other
scripts' top configs). A wrong type or an unknown key fails while Hydra composes; `validate` then
builds the dataclasses, whose `__post_init__` checks ranges and choices and raises the first
violation as one `UserError` line. Adding a model is one class in fmnist/models.py and one
`@option("model", ...)` dataclass here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fmnist.data import CLASSES, PROJECT_ROOT, SYSTEM_DIRS
from fmnist.engine import TTA_MODES
from fmnist.errors import SettingsError, UserError

T = TypeVar("T")
CONFIGS = PROJECT_ROOT / "configs"

# Every option of every group: {"model": {"small_cnn": SmallCNNConfig, ...}, ...}.
OPTIONS: dict[str, dict[str, type[Any]]] = {}


def option(group: str, name: str) -> Callable[[type[T]], type[T]]:
    """Register a dataclass as option `name` of config group `group` (`group=name` selects it)."""

    def register(node: type[T]) -> type[T]:
        ConfigStore.instance().store(group=group, name=name, node=node)
        OPTIONS.setdefault(group, {})[name] = node
        return node

    return register


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise the one-line error for `key=value` unless `ok`."""
    if not ok:
        raise SettingsError(f"{key}={value} is invalid: {rule}")


def choose(key: str, value: str, options: tuple[str, ...]) -> None:
    require(value in options, key, value, f"choose one of {', '.join(options)}")


def at_least(key: str, value: int | None, minimum: int, rule: str | None = None) -> None:
    """`value` must be None or >= `minimum`."""
    if value is not None:
        require(value >= minimum, key, value, rule or f"must be at least {minimum}")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@option("data", "fashion_mnist")
@dataclass
class DataConfig:
    """Fashion-MNIST: 60000 training images (val_size of them held out for validation), 10000
    test."""

    _target_: str = "fmnist.loaders.FashionMNIST"
    root: str | None = None  # null: $FMNIST_DATA, else data/ at the project root
    source_dirs: list[str] = field(default_factory=lambda: list(SYSTEM_DIRS))  # with the .gz files
    download: bool = True  # torchvision's download when no local source has the data
    loader: str = "device"  # device (fast, on-device batches) | torch (DataLoader + transforms)
    batch_size: int = 256
    eval_batch_size: int = 512  # evaluates fastest on CPUs (1024 spills the caches)
    val_size: int = 5000  # carved from train with the run's seed; 0 for none
    subset: int | None = None  # N: train on the first N shuffled training samples only
    crop_padding: int = 2  # random crop after padding by this many pixels; 0: off
    flip: bool = True  # random horizontal flip
    erase: float = 0.0  # random erasing: the share of training images with a box blacked out
    zoom: float = 0.0  # random scale about the centre by a factor in 1 +- zoom; 0: off
    num_workers: int = 2  # loader=torch only
    test: bool = True  # read the official test split and test the run's model on it; false: a
    # search's trials, chosen on validation alone, never read it

    def __post_init__(self) -> None:
        choose("data.loader", self.loader, ("device", "torch"))
        at_least("data.batch_size", self.batch_size, 1)
        at_least("data.eval_batch_size", self.eval_batch_size, 1)
        at_least("data.val_size", self.val_size, 0, "must be 0 or more")
        at_least("data.subset", self.subset, 1)
        require(
            0 <= self.crop_padding <= 14, "data.crop_padding", self.crop_padding, "must be in 0..14"
        )
        require(0 <= self.erase <= 1, "data.erase", self.erase, "must be in [0, 1]")
        require(0 <= self.zoom < 1, "data.zoom", self.zoom, "must be in [0, 1)")
        at_least("data.num_workers", self.num_workers, 0, "must be 0 or more")


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


@option("model", "small_cnn")
@dataclass
class SmallCNNConfig:
    """Conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), global max-pool, dropout, linear."""

    _target_: str = "fmnist.models.SmallCNN"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # 1 to 4 blocks
    convs_per_block: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        require(
            1 <= len(self.widths) <= 4 and min(self.widths) > 0,
            "model.widths",
            self.widths,
            "give 1 to 4 positive channel counts (each block halves the 28-pixel side)",
        )
        require(
            self.convs_per_block >= 1, "model.convs_per_block", self.convs_per_block, "must be >= 1"
        )
        require(0 <= self.dropout < 1, "model.dropout", self.dropout, "must be in [0, 1)")


@option("model", "linear")
@dataclass
class LinearConfig:
    """Softmax regression on the 784 raw pixels: the classic from-scratch lesson."""

    _target_: str = "fmnist.models.Linear"


# --------------------------------------------------------------------------------------------
# loss: ours or PyTorch's, with the same options
# --------------------------------------------------------------------------------------------

LOSS_TARGETS = ("fmnist.losses.CrossEntropyLoss", "torch.nn.CrossEntropyLoss")


@dataclass
class LossConfig:
    _target_: str
    label_smoothing: float = 0.0
    weight: list[float] | None = None  # or one weight per class

    def __post_init__(self) -> None:
        choose("loss._target_", self._target_, LOSS_TARGETS)
        require(
            0 <= self.label_smoothing <= 1,
            "loss.label_smoothing",
            self.label_smoothing,
            "must be in [0, 1]",
        )
        require(
            self.weight is None or (len(self.weight) == len(CLASSES) and min(self.weight) >= 0),
            "loss.weight",
            self.weight,
            f"give {len(CLASSES)} non-negative class weights",
        )


@option("loss", "scratch")
@dataclass
class ScratchLossConfig(LossConfig):
    """Our from-scratch softmax + cross-entropy (fmnist/losses.py)."""

    _target_: str = LOSS_TARGETS[0]


@option("loss", "torch")
@dataclass
class TorchLossConfig(LossConfig):
    """PyTorch's nn.CrossEntropyLoss, with the same options as loss=scratch."""

    _target_: str = LOSS_TARGETS[1]


# --------------------------------------------------------------------------------------------
# optimizer and scheduler: partial, given the parameters and step count once the model exists
# --------------------------------------------------------------------------------------------


def _check_optimizer(lr: float, weight_decay: float) -> None:
    require(math.isfinite(lr) and lr > 0, "optimizer.lr", lr, "must be > 0 and finite")
    require(
        math.isfinite(weight_decay) and weight_decay >= 0,
        "optimizer.weight_decay",
        weight_decay,
        "must be >= 0 and finite",
    )


@option("optimizer", "sgd")
@dataclass
class SGDConfig:
    """SGD with Nesterov momentum and L2 weight decay: the fast CNN recipe's optimizer."""

    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        _check_optimizer(self.lr, self.weight_decay)
        require(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "must be in [0, 1)")


@option("optimizer", "adamw")
@dataclass
class AdamWConfig:
    """Adam with decoupled weight decay."""

    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        _check_optimizer(self.lr, self.weight_decay)
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optimizer.betas",
            self.betas,
            "give two numbers in [0, 1)",
        )


@option("scheduler", "constant")
@dataclass
class ConstantConfig:
    """optimizer.lr at every step."""

    _target_: str = "fmnist.schedules.constant"
    _partial_: bool = True


@option("scheduler", "one_cycle")
@dataclass
class OneCycleConfig:
    """Learning rate per step: linear warm-up from 0 to optimizer.lr, then linear decay to 0."""

    _target_: str = "fmnist.schedules.one_cycle"
    _partial_: bool = True
    warmup: float = 0.2  # fraction of all steps spent warming up

    def __post_init__(self) -> None:
        require(0 <= self.warmup < 1, "scheduler.warmup", self.warmup, "must be in [0, 1)")


# --------------------------------------------------------------------------------------------
# trainer, and the whole training config
# --------------------------------------------------------------------------------------------


DEVICES = ("auto", "cpu", "cuda", "mps")


@option("trainer", "default")
@dataclass
class TrainerConfig:
    max_epochs: int = 15
    device: str = "auto"  # auto (cuda, else Apple's mps, else cpu) | cpu | cuda | mps
    precision: str = "auto"  # auto (bf16 autocast where the hardware is fast at it) | 32 | bf16
    channels_last: bool = True  # NHWC convolutions: faster on CPUs with AVX-512 and on GPUs
    compile: bool = False  # torch.compile; slower than eager on 2-core CPUs
    tta: str = "flip"  # test-time augmentation, averaging logits: none | flip | flip_shift
    deterministic: bool = False  # true: bit-reproducible CPU runs
    progress: bool = True  # tqdm bars (off anyway when output is not a terminal)
    checkpoint_every_steps: int = 100  # also save checkpoints/last.pt every N steps; 0: epoch ends
    resume: str | None = None  # auto: continue the newest unfinished run with this config
    sync_batchnorm: bool = False  # torchrun on GPUs: BatchNorm statistics over all ranks
    skip_nonfinite: bool = False  # true: skip steps whose loss is NaN/inf (counted), not stop
    max_skipped_in_a_row: int = 10  # with skip_nonfinite: stop after more skips in a row
    histograms_every: int = 0  # TensorBoard weight and gradient histograms every N epochs; 0: off
    ema_decay: float = 0.0  # > 0: validate, test and save an average of the weights; 0: off

    def __post_init__(self) -> None:
        at_least("trainer.max_epochs", self.max_epochs, 1)
        choose("trainer.device", self.device, DEVICES)
        choose("trainer.precision", str(self.precision), ("auto", "32", "bf16"))
        choose("trainer.tta", self.tta, TTA_MODES)
        at_least(
            "trainer.checkpoint_every_steps",
            self.checkpoint_every_steps,
            0,
            "must be 0 (epoch ends only) or more",
        )
        require(
            self.resume in (None, "auto"),
            "trainer.resume",
            self.resume,
            "use auto, or leave it unset",
        )
        at_least("trainer.max_skipped_in_a_row", self.max_skipped_in_a_row, 1)
        at_least("trainer.histograms_every", self.histograms_every, 0, "must be 0 (off) or more")
        require(0 <= self.ema_decay < 1, "trainer.ema_decay", self.ema_decay, "must be in [0, 1)")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None
    loss: Any = None
    optimizer: Any = None
    scheduler: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    ckpt_path: str | None = None  # resume from this checkpoint (a .pt file or a run directory)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def validate(cfg: DictConfig) -> object:
    """Check every key, range and choice; the first problem is raised as a one-line `UserError`
    (`+optimizer.lrr=0.1` adds a key Hydra lets through: refused here, as a typo is)."""
    check_keys(cfg)
    return OmegaConf.to_object(cfg)


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """The training config, as `scripts/train.py` would compose it with these overrides, checked
    (`validate`). Inside a running Hydra app (a benchmark, a search) from the same configs/."""
    if GlobalHydra.instance().is_initialized():
        cfg = compose("train", overrides=list(overrides))
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
            cfg = compose("train", overrides=list(overrides))
    validate(cfg)
    return cfg


def check_keys(node: DictConfig, prefix: str = "") -> None:
    """Every key of `node`, and of the sections under it, must be a field of its dataclass."""
    schema = OmegaConf.get_type(node)
    keys = [str(key) for key in node]
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        for key in keys:
            if key not in {f.name for f in dataclasses.fields(schema)}:
                raise unknown_key(f"{prefix}{key}", schema)
    for key in keys:
        if not OmegaConf.is_missing(node, key) and isinstance(node[key], DictConfig):
            check_keys(node[key], f"{prefix}{key}.")


def unknown_key(key: str, schema: type[Any]) -> UserError:
    """The one line for a key its config section does not have, naming the keys it has."""
    options = {
        node: f"{group}={name}" for group, named in OPTIONS.items() for name, node in named.items()
    }
    section = options.get(schema) or key.rpartition(".")[0] or "the config"
    names = ", ".join(f.name for f in dataclasses.fields(schema) if not f.name.startswith("_"))
    return UserError(f"{key} is not a setting of {section}: its settings are {names}")


def option_name(group: str, settings: Any) -> str:
    """The name of the group option a config section came from (`sgd`, `small_cnn`, ...)."""
    target = settings.get("_target_") if isinstance(settings, dict) else None
    names = [name for name, node in OPTIONS[group].items() if node._target_ == target]
    return names[0] if names else str(target)


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """('optimizer.lr', 0.05), ... for a nested config; lists become strings."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield (
                f"{prefix}{key}",
                value if isinstance(value, (int, float, str, bool)) else str(value),
            )
