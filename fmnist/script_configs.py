"""The configurations of every command but training (explain, evaluate, snapshot, predict, export,
app, the benchmarks), with their defaults and rules, written once; configs/<command>.yaml adds only
Hydra's settings and usage notes.

As in fmnist.config, Hydra checks types and keys while composing, and `validate` builds the
dataclass, whose `__post_init__` raises the first bad value as one `UserError` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fmnist.config import DEVICES, at_least, check_keys, choose, require, validate
from fmnist.data import CLASSES, SPLITS
from fmnist.engine import TTA_MODES
from fmnist.errors import UserError
from fmnist.i18n import LANGUAGES


@dataclass
class DataRootConfig:
    root: str | None = None  # null: $FMNIST_DATA, else data/ at the project root


# --------------------------------------------------------------------------------------------
# scripts/explain.py (fmnist.explain checks the numbers: their shapes depend on each other)
# --------------------------------------------------------------------------------------------


@dataclass
class ExampleConfig:
    """What `scripts/explain.py` explains when given nothing: the first worked example."""

    logits: Any = field(default_factory=lambda: [[-1, 0.5, 2], [-1, 0.5, 3]])
    targets: Any = field(default_factory=lambda: [1, 2])


@dataclass
class ExplainConfig:
    logits: Any = None  # class scores: one row [x1,...,xC], or rows [[...],[...]]
    targets: Any = None  # the true class of each row: an integer, or a list [1,2]
    probs: Any = None  # probabilities already normalised, one row or a list of rows
    target: Any = None  # the same as targets (the name used with probs)
    example: ExampleConfig = field(default_factory=ExampleConfig)
    lang: str = "en"  # en | zh: the explanation in English or in Simplified Chinese

    def __post_init__(self) -> None:
        choose("lang", self.lang, tuple(LANGUAGES))


def validate_explain(cfg: DictConfig) -> ExplainConfig:
    """Check every key (a misspelt one is refused, not ignored); fmnist.explain checks the
    numbers."""
    return cast(ExplainConfig, validate(cfg))


# --------------------------------------------------------------------------------------------
# scripts/evaluate.py
# --------------------------------------------------------------------------------------------

EVALUATION_SPLITS = ("test", "val", "train")


@dataclass
class EvalDataConfig(DataRootConfig):
    batch_size: int | None = None  # null: the run's data.eval_batch_size

    def __post_init__(self) -> None:
        at_least(
            "data.batch_size",
            self.batch_size,
            1,
            "must be at least 1 (or null for the run's data.eval_batch_size)",
        )


@dataclass
class EvaluateConfig:
    ckpt_path: str = MISSING  # required: a .pt file, or a run directory (then its best.pt)
    split: str = "test"  # test | val (the run's own validation images) | train (its training set)
    device: str = "auto"  # auto | cpu | cuda | mps
    tta: str | None = None  # null: as the run evaluated (its trainer.tta); none|flip|flip_shift
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    top_confused: int = 5  # most confused class pairs to list
    wrong_images: int = 16  # most confidently wrong images in wrong.png
    tensorboard: bool = False  # also write the results as TensorBoard events in the run dir

    def __post_init__(self) -> None:
        choose("split", self.split, EVALUATION_SPLITS)
        choose("device", self.device, DEVICES)
        if self.tta is not None:
            choose("tta", self.tta, TTA_MODES)
        at_least("top_confused", self.top_confused, 1)
        require(
            1 <= self.wrong_images <= 100, "wrong_images", self.wrong_images, "must be in 1..100"
        )


def required(cfg: DictConfig, key: str, usage: str) -> None:
    """`key` must be given: else one line showing how (`usage`). A misspelt key is named
    first: it may be the required one."""
    check_keys(cfg)
    if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, "", []):
        raise UserError(f"{key} is required: {usage}")


CHECKPOINT_USAGE = (
    "ckpt_path=outputs/runs/<time> (a run directory, for its checkpoints/best.pt) or "
    "ckpt_path=<file>.pt"
)


def validate_evaluate(cfg: DictConfig) -> EvaluateConfig:
    """Check every range and choice; the first problem is raised as a one-line `UserError`."""
    required(cfg, "ckpt_path", f"python scripts/evaluate.py {CHECKPOINT_USAGE}")
    return cast(EvaluateConfig, validate(cfg))


# --------------------------------------------------------------------------------------------
# scripts/snapshot.py
# --------------------------------------------------------------------------------------------


def _check_class(key: str, value: int | None) -> None:
    names = ", ".join(f"{k} {name}" for k, name in enumerate(CLASSES))
    require(
        value is None or 0 <= value < len(CLASSES),
        key,
        value,
        f"a class is 0..{len(CLASSES) - 1} ({names})",
    )


@dataclass
class SnapshotConfig:
    model: Any = None  # the `model` group (untrained, seeded); ignored with ckpt_path or probs
    seed: int = 0  # seeds the untrained model's initial weights
    target_class: int | None = None  # the image: the split's first of this class (default 4)
    target: int | None = None  # the same as target_class (the name explain.py uses with probs)
    index: int | None = None  # the image: this index in the split (its label is the target)
    split: str = "test"  # test | train: the official split the image comes from
    ckpt_path: str | None = None  # a (partially) trained checkpoint instead of an untrained model
    probs: list[float] | None = None  # 10 probabilities (4 decimals are fine) instead of a model
    device: str = "auto"  # auto | cpu | cuda | mps
    data: DataRootConfig = field(default_factory=DataRootConfig)

    def __post_init__(self) -> None:
        at_least("seed", self.seed, 0, "must be 0 or more")
        _check_class("target_class", self.target_class)
        _check_class("target", self.target)
        if None not in (self.target, self.target_class) and self.target != self.target_class:
            raise UserError(
                f"target={self.target} and target_class={self.target_class} disagree: "
                "they are the same setting, give one"
            )
        at_least("index", self.index, 0, "must be 0 or more")
        choose("split", self.split, SPLITS)
        choose("device", self.device, DEVICES)
        if self.probs is not None:
            require(
                len(self.probs) == len(CLASSES),
                "probs",
                self.probs,
                f"give {len(CLASSES)} probabilities, one per Fashion-MNIST class",
            )
            for key in ("index", "ckpt_path"):
                if getattr(self, key) is not None:
                    raise UserError(
                        f"probs=[...] stands in for a model's output on an image: leave out {key}"
                    )

    @property
    def true_class(self) -> int | None:
        return self.target if self.target is not None else self.target_class


def validate_snapshot(cfg: DictConfig) -> SnapshotConfig:
    """Check every range and choice (the model's too); the first problem is one `UserError`."""
    return cast(SnapshotConfig, validate(cfg))


# --------------------------------------------------------------------------------------------
# scripts/predict.py
# --------------------------------------------------------------------------------------------

INVERT_MODES = ("auto", "true", "false")


def _squashed(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def class_index(key: str, value: Any) -> int | None:
    """A class given as an index 0..9 or a name, in any case and spacing: `coat`, `Ankle_boot`,
    `t-shirt` (either half of T-shirt/top names it). None stays None."""
    if isinstance(value, str) and value.strip().isdigit():  # target='3': quoted, still an index
        value = int(value)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        _check_class(key, value)
        return value
    wanted = _squashed(str(value))
    for k, name in enumerate(CLASSES):
        if wanted in {_squashed(name), *(_squashed(part) for part in name.split("/"))}:
            return k
    names = ", ".join(f"{k} {name}" for k, name in enumerate(CLASSES))
    raise UserError(f"{key}={value} is invalid: give a class index or name ({names})")


@dataclass
class PrepareConfig:
    """How a picture is made Fashion-MNIST-like (the steps: fmnist/prepare/)."""

    invert: str = "auto"  # auto: when the picture's border is light | true | false
    crop: bool = True  # trim to the object (plus a small margin) before fitting it into 28x28

    def __post_init__(self) -> None:
        self.invert = str(self.invert).lower()  # prepare.invert=true arrives as the bool True
        choose("prepare.invert", self.invert, INVERT_MODES)


@dataclass
class PredictConfig:
    ckpt_path: str = (
        MISSING  # required: a checkpoint (.pt file or run directory) or an .onnx export
    )
    images: Any = MISSING  # required: image files and directories, images=[a.png,photos/]
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    target: Any = None  # a class, 0..9 or a name (target=coat): adds the cross-entropy lesson
    device: str = "auto"  # auto | cpu | cuda | mps, for a checkpoint (an .onnx runs on the CPU)

    def __post_init__(self) -> None:
        paths = self.images if isinstance(self.images, list) else [self.images]
        require(
            all(isinstance(path, str | int | float) for path in paths),
            "images",
            self.images,
            "give image files and directories: images=[a.png,photos/]",
        )
        self.images = [str(path) for path in paths]
        self.target = class_index("target", self.target)
        choose("device", self.device, DEVICES)


def validate_predict(cfg: DictConfig) -> PredictConfig:
    """Check every range and choice; the first problem is raised as a one-line `UserError`."""
    usage = "python scripts/predict.py ckpt_path=<run dir, .pt or .onnx> images=[a.png,photos/]"
    required(cfg, "ckpt_path", usage)
    required(cfg, "images", usage)
    return cast(PredictConfig, validate(cfg))


# --------------------------------------------------------------------------------------------
# scripts/export.py
# --------------------------------------------------------------------------------------------

EXPORT_FORMATS = ("onnx", "torchscript")


@dataclass
class ExportConfig:
    ckpt_path: str = MISSING  # required: a .pt file, or a run directory (then its best.pt)
    format: str = "onnx"  # onnx | torchscript

    def __post_init__(self) -> None:
        choose("format", self.format, EXPORT_FORMATS)


def validate_export(cfg: DictConfig) -> ExportConfig:
    """Check every range and choice; the first problem is raised as a one-line `UserError`."""
    required(cfg, "ckpt_path", f"python scripts/export.py {CHECKPOINT_USAGE} format=onnx")
    return cast(ExportConfig, validate(cfg))


# --------------------------------------------------------------------------------------------
# scripts/app.py
# --------------------------------------------------------------------------------------------


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # this machine only; 0.0.0.0 serves every network it is on
    port: int = 7860

    def __post_init__(self) -> None:
        require(1 <= self.port <= 65535, "server.port", self.port, "must be in 1..65535")
        require(bool(self.host.strip()), "server.host", repr(self.host), "give a host name or IP")


# A half-trained model's q for a test Coat (class 4): the seed's second worked example.
HALF_TRAINED_COAT = (0.1058, 0.1043, 0.0988, 0.1066, 0.0875, 0.0881, 0.1027, 0.1046, 0.1057, 0.0958)


@dataclass
class LessonConfig:
    """The lesson tab's second example, prefilled (the first is `ExplainConfig.example`): a
    half-trained model's q for a Coat, whose loss is -log(0.0875) = 2.4361."""

    probs: list[float] = field(default_factory=lambda: list(HALF_TRAINED_COAT))
    target: int = 4

    def __post_init__(self) -> None:
        require(
            len(self.probs) == len(CLASSES),
            "lesson.probs",
            self.probs,
            f"give {len(CLASSES)} probabilities, one per Fashion-MNIST class",
        )
        _check_class("lesson.target", self.target)


@dataclass
class AppConfig:
    ckpt_path: str | None = None  # a run directory, .pt or .onnx; null: the newest finished run
    # under outputs/runs/ (none: the lesson tab alone works, the others say how to train one)
    device: str = "auto"  # auto | cpu | cuda | mps, for the checkpoint's model
    server: ServerConfig = field(default_factory=ServerConfig)
    lesson: LessonConfig = field(default_factory=LessonConfig)
    data: DataRootConfig = field(default_factory=DataRootConfig)  # for the test images

    def __post_init__(self) -> None:
        choose("device", self.device, DEVICES)


@dataclass
class AppBenchmarkConfig:
    """`scripts/benchmark_app.py`: the page's /predict under load (fmnist.app.load)."""

    ckpt_path: str | None = None  # the model the page serves, as app.py's ckpt_path
    calls: int = 200  # /predict calls, one test image each
    clients: int = 8  # gradio_client clients sending them at once
    data: DataRootConfig = field(default_factory=DataRootConfig)  # for the test images

    def __post_init__(self) -> None:
        at_least("calls", self.calls, 1)
        at_least("clients", self.clients, 1)


def validate_app_benchmark(cfg: DictConfig) -> AppBenchmarkConfig:
    """Check every key, range and choice; the first problem is raised as a one-line `UserError`."""
    return cast(AppBenchmarkConfig, validate(cfg))


def validate_app(cfg: DictConfig) -> AppConfig:
    """Check every key, range and choice; the first problem is raised as a one-line `UserError`."""
    return cast(AppConfig, validate(cfg))


# --------------------------------------------------------------------------------------------
# scripts/benchmark.py
# --------------------------------------------------------------------------------------------


@dataclass
class BenchmarkConfig:
    """`scripts/benchmark.py`: speed side by side with the standard pipeline (fmnist.benchmark)."""

    steps: int = 40  # training batches timed per repeat
    repeats: int = 5  # medians over this many repeats (after one warm-up)
    data_subset: int | None = None  # time the data path on N training samples (null: all 55000)
    loss_shapes: list[list[int]] = field(
        default_factory=lambda: [[256, 10], [4096, 10], [1024, 1000]]
    )
    loss_calls: int = 200  # forward+backward calls per loss timing
    agreement_steps: int = 50  # compare loss=scratch and loss=torch over this many steps (0: skip)
    agreement_overrides: list[str] = field(default_factory=list)  # e.g. [model=linear]
    presets: list[str] = field(default_factory=list)  # whole training runs: [smoke, fast, default,
    # best, "model=linear"]: median times, mean ± std accuracy, the time-to-accuracy table
    preset_repeats: int = 3  # runs of each preset, seeds 0, 1, ...
    preset_timeout: float = 1800  # seconds
    photos: int = 100  # time reading, preparing and predicting this many 4032x3024 JPEGs (0: skip)

    def __post_init__(self) -> None:
        for key in ("steps", "repeats", "loss_calls", "preset_repeats"):
            at_least(key, getattr(self, key), 1)
        at_least("data_subset", self.data_subset, 1)
        for key in ("agreement_steps", "photos"):
            at_least(key, getattr(self, key), 0, "must be 0 (skip) or more")
        require(
            all(len(shape) == 2 and min(shape) >= 1 for shape in self.loss_shapes),
            "loss_shapes",
            self.loss_shapes,
            "give [N, C] pairs of positive sizes: [[256,10],[1024,1000]]",
        )
        require(self.preset_timeout > 0, "preset_timeout", self.preset_timeout, "must be > 0")


def validate_benchmark(cfg: DictConfig) -> BenchmarkConfig:
    """Check every key, range and choice; the first problem is raised as a one-line `UserError`."""
    return cast(BenchmarkConfig, validate(cfg))


store = ConfigStore.instance()
store.store(name="explain_schema", node=ExplainConfig)
store.store(name="benchmark_schema", node=BenchmarkConfig)
store.store(name="evaluate_schema", node=EvaluateConfig)
store.store(name="snapshot_schema", node=SnapshotConfig)
store.store(name="predict_schema", node=PredictConfig)
store.store(name="export_schema", node=ExportConfig)
store.store(name="app_schema", node=AppConfig)
store.store(name="benchmark_app_schema", node=AppBenchmarkConfig)
