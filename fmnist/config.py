"""The configuration schema: structured configs that type- and range-check every field.

Hydra merges the YAML files of `configs/` onto these dataclasses, so a wrong type or an unknown
key fails at composition; `validate` then builds the dataclasses, whose `__post_init__` checks
ranges and choices, and turns the first violation into one `UserError` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from fmnist.checkpoint import run_dir_for
from fmnist.data import SYSTEM_DIRS
from fmnist.engine import TTA_MODES
from fmnist.errors import UserError


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise the one-line error for `key=value` unless `ok`."""
    if not ok:
        raise UserError(f"{key}={value} is invalid: {rule}")


def choose(key: str, value: str, options: tuple[str, ...]) -> None:
    require(value in options, key, value, f"choose one of {', '.join(options)}")


@dataclass
class DataConfig:
    _target_: str = "fmnist.loaders.FashionMNIST"
    root: str | None = None  # default: $FMNIST_DATA, else data/ at the project root
    source_dirs: list[str] = field(default_factory=lambda: list(SYSTEM_DIRS))
    download: bool = True  # let torchvision download it when no local source has it
    loader: str = "device"  # device: batches sliced on the device; torch: DataLoader + transforms
    batch_size: int = 256
    eval_batch_size: int = 512
    val_size: int = 5000  # carved from the official train split; 0 for none
    subset: int | None = None  # train on the first N shuffled training samples
    crop_padding: int = 2  # random-crop augmentation: pad by this many pixels; 0 turns it off
    flip: bool = True  # random horizontal flips
    num_workers: int = 2  # loader=torch only

    def __post_init__(self) -> None:
        choose("data.loader", self.loader, ("device", "torch"))
        require(self.batch_size > 0, "data.batch_size", self.batch_size, "must be at least 1")
        require(
            self.eval_batch_size > 0,
            "data.eval_batch_size",
            self.eval_batch_size,
            "must be at least 1",
        )
        require(self.val_size >= 0, "data.val_size", self.val_size, "must be 0 or more")
        require(
            self.subset is None or self.subset > 0, "data.subset", self.subset, "must be at least 1"
        )
        require(
            0 <= self.crop_padding <= 14, "data.crop_padding", self.crop_padding, "must be in 0..14"
        )
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be 0 or more")


@dataclass
class SmallCNNConfig:
    _target_: str = "fmnist.models.SmallCNN"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
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


@dataclass
class LinearConfig:
    _target_: str = "fmnist.models.Linear"


@dataclass
class LossConfig:
    _target_: str = "fmnist.losses.CrossEntropyLoss"
    label_smoothing: float = 0.0
    weight: list[float] | None = None  # one weight per class

    def __post_init__(self) -> None:
        choose(
            "loss._target_",
            self._target_,
            ("fmnist.losses.CrossEntropyLoss", "torch.nn.CrossEntropyLoss"),
        )
        require(
            0 <= self.label_smoothing <= 1,
            "loss.label_smoothing",
            self.label_smoothing,
            "must be in [0, 1]",
        )
        require(
            self.weight is None or (len(self.weight) == 10 and min(self.weight) >= 0),
            "loss.weight",
            self.weight,
            "give 10 non-negative class weights",
        )


def _check_optimizer(lr: float, weight_decay: float) -> None:
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    require(weight_decay >= 0, "optimizer.weight_decay", weight_decay, "must be >= 0")


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        _check_optimizer(self.lr, self.weight_decay)
        require(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "must be in [0, 1)")


@dataclass
class AdamWConfig:
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


@dataclass
class OneCycleConfig:
    _target_: str = "fmnist.schedules.one_cycle"
    _partial_: bool = True
    warmup: float = 0.2  # fraction of the steps spent ramping the learning rate up from 0

    def __post_init__(self) -> None:
        require(0 <= self.warmup < 1, "scheduler.warmup", self.warmup, "must be in [0, 1)")


@dataclass
class ConstantConfig:
    _target_: str = "fmnist.schedules.constant"
    _partial_: bool = True


@dataclass
class TrainerConfig:
    max_epochs: int = 15
    device: str = "auto"  # auto: cuda when present, else cpu
    precision: str = "auto"  # auto: bf16 autocast where the hardware runs it fast, else 32
    channels_last: bool = True  # NHWC convolutions: faster on CPUs with AVX-512 and on GPUs
    compile: bool = False  # torch.compile the model (measured slower on 2-core CPUs)
    tta: str = "flip"  # test-time augmentation: none | flip (2 views) | flip_shift (18 views)
    deterministic: bool = False  # bit-reproducible CPU runs
    progress: bool = True  # tqdm bars (never when output is not a terminal)
    checkpoint_every_steps: int = (
        100  # also write checkpoints/last.pt mid-epoch; 0: epoch ends only
    )
    resume: str | None = None  # auto: continue the newest unfinished run with this config
    sync_batchnorm: bool = False  # under torchrun with GPUs: BatchNorm statistics over all ranks
    skip_nonfinite: bool = False  # skip steps whose loss is NaN/inf instead of stopping

    def __post_init__(self) -> None:
        require(self.max_epochs >= 1, "trainer.max_epochs", self.max_epochs, "must be at least 1")
        choose("trainer.device", self.device, ("auto", "cpu", "cuda"))
        choose("trainer.precision", str(self.precision), ("auto", "32", "bf16"))
        choose("trainer.tta", self.tta, TTA_MODES)
        require(
            self.checkpoint_every_steps >= 0,
            "trainer.checkpoint_every_steps",
            self.checkpoint_every_steps,
            "must be 0 (epoch ends only) or more",
        )
        require(
            self.resume in (None, "auto"),
            "trainer.resume",
            self.resume,
            "use auto, or leave it unset",
        )


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: Any = None
    scheduler: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    ckpt_path: str | None = None  # resume from this checkpoint (or run directory)


GROUP_SCHEMAS = {
    "model": {"small_cnn": SmallCNNConfig, "linear": LinearConfig},
    "loss": {"loss": LossConfig},
    "optimizer": {"sgd": SGDConfig, "adamw": AdamWConfig},
    "scheduler": {"one_cycle": OneCycleConfig, "constant": ConstantConfig},
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore, where the YAML files of configs/ extend them."""
    OmegaConf.register_new_resolver("fmnist_run_dir", run_dir_for, replace=True)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)


def validate(cfg: DictConfig) -> TrainConfig:
    """Check every range and choice; the first problem is raised as a one-line `UserError`."""
    return OmegaConf.to_object(cfg)


register()
