"""Evaluate a checkpoint: accuracy, both losses, per-class metrics, confusions, worst mistakes.

The logic of `python scripts/evaluate.py ckpt_path=...` (configured by configs/evaluate.yaml).
Everything is rebuilt from the checkpoint alone: the model from its saved config and weights,
the normalisation and class names it stores, and the precision (bf16 autocast or float32),
channels-last layout and test-time augmentation its run evaluated with, so the accuracy equals
the one the run recorded, exactly. Loading is weights-only and the model's class must be one of
fmnist's models: nothing named in a file is ever imported or called.

Also used by `fmnist.snapshot`: `load_checkpoint`, `save_figure`,
and `fmnist.files.write_atomically` through it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf
from torch import Tensor, nn

from fmnist import checkpoint, data, distributed
from fmnist.config import choose, require
from fmnist.engine import TTA_MODES, Compute, confusion_matrix, predict
from fmnist.errors import UserError, reports_user_errors
from fmnist.files import write_atomically
from fmnist.losses import cross_entropy, softmax

SPLITS = ("test", "val", "train")
DEVICES = ("auto", "cpu", "cuda")
AGREE_TOLERANCE = 1e-5  # relative: both losses sum float32 per-sample losses in another order


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class EvalDataConfig:
    root: str | None = None  # default: $FMNIST_DATA, else data/ at the project root
    batch_size: int | None = None  # null: the run's data.eval_batch_size

    def __post_init__(self) -> None:
        require(
            self.batch_size is None or self.batch_size > 0,
            "data.batch_size",
            self.batch_size,
            "must be at least 1 (or null for the run's data.eval_batch_size)",
        )


@dataclass
class EvaluateConfig:
    ckpt_path: str = MISSING  # a .pt file, or a run directory (then its checkpoints/best.pt)
    split: str = "test"
    device: str = "auto"
    tta: str | None = None  # null: as the run evaluated (its trainer.tta); none|flip|flip_shift
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    top_confused: int = 5  # most confused class pairs to list
    wrong_images: int = 16  # most confidently wrong images in the grid PNG
    tensorboard: bool = False  # also write the results as TensorBoard events in the run directory

    def __post_init__(self) -> None:
        choose("split", self.split, SPLITS)
        choose("device", self.device, DEVICES)
        if self.tta is not None:
            choose("tta", self.tta, TTA_MODES)
        require(self.top_confused >= 1, "top_confused", self.top_confused, "must be at least 1")
        require(
            1 <= self.wrong_images <= 100, "wrong_images", self.wrong_images, "must be in 1..100"
        )


def register() -> None:
    """Put the schema in Hydra's ConfigStore, where configs/evaluate.yaml extends it."""
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def validate(cfg: DictConfig) -> EvaluateConfig:
    """Check every range and choice; the first problem is raised as a one-line `UserError`."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError(
            "ckpt_path is required: python scripts/evaluate.py ckpt_path=outputs/runs/<time> "
            "(a run directory, for its checkpoints/best.pt) or ckpt_path=<file>.pt"
        )
    return OmegaConf.to_object(cfg)


# --------------------------------------------------------------------------------------------
# Shared with fmnist.snapshot: devices, run directories, safe checkpoint loading, normalisation
# --------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A checkpoint and what it rebuilds: model, class names, normalisation, compute settings."""

    path: Path
    checkpoint: dict[str, Any]
    model: nn.Module  # on the CPU, in eval mode
    classes: list[str]
    mean: float
    std: float
    precision: str  # "bf16" or "32", as the run trained and evaluated

    def setting(self, key: str, types: type | tuple[type, ...]) -> Any:
        """A value of the run's saved config, e.g. `data.val_size`, checked to be of `types`."""
        return _setting(self.checkpoint["config"], key, types, self.path)

    def compute(self, device: torch.device) -> Compute:
        """The run's precision and memory layout, so its results are reproduced exactly."""
        return Compute(
            device, self.precision == "bf16", self.setting("trainer.channels_last", bool)
        )

    def model_name(self) -> str:
        return type(self.model).__name__


def _setting(config: Any, key: str, types: type | tuple[type, ...], path: Path) -> Any:
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise UserError(
                f"{path} has no {key} in its saved config: it is not a checkpoint of an fmnist "
                "training run"
            )
        value = value[part]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise UserError(f"{path} has an invalid {key}={value!r} in its saved config")
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def load_checkpoint(path: str | os.PathLike) -> Loaded:
    """Load a checkpoint (file or run directory) weights-only and rebuild its model.

    Every way a file can fail to be an fmnist checkpoint of a known model becomes one
    `UserError` line naming the file: missing, unreadable or truncated, refused by the
    weights-only unpickler, another kind of file, another format version, a model class that is
    not fmnist's, a model config the schema rejects, or weights that do not fit the model.
    """
    path = checkpoint.resolve(path)
    ckpt = checkpoint.load(path)  # weights only: nothing in the file can run
    if not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path} has no saved config: it is not a checkpoint of a training run")
    model = checkpoint.build_model(ckpt, path)  # fmnist's model classes only
    model.eval()

    classes = ckpt.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) != len(data.CLASSES)
        or not all(isinstance(c, str) for c in classes)
    ):
        raise UserError(f"{path} does not hold the {len(data.CLASSES)} class names")
    norm = ckpt.get("normalization")
    mean, std = (norm.get("mean"), norm.get("std")) if isinstance(norm, dict) else (None, None)
    if not all(_is_real(v) for v in (mean, std)) or std <= 0:
        raise UserError(f"{path} does not hold a valid normalization (mean, std > 0)")
    precision = ckpt.get("precision")
    if precision not in ("bf16", "32"):
        raise UserError(f"{path} has precision={precision!r}: expected 'bf16' or '32'")
    return Loaded(path, ckpt, model, classes, float(mean), float(std), precision)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class SplitData:
    images: Tensor  # uint8 (N, 28, 28), as stored
    labels: Tensor  # int64 (N,)
    indices: Tensor  # each image's index in the official split it comes from
    source: str  # the official split: "train" or "test"


def split_data(loaded: Loaded, split: str, root: str | None) -> SplitData:
    """The images of `split` as the checkpoint's run saw them.

    test: the official test split. val: the validation images the run carved from the official
    train split (same seed and data.val_size). train: the run's training images (its data.subset
    of what remains), without augmentation.
    """
    if split == "test":
        images, labels = data.load_split("test", root)
        return SplitData(images, labels, torch.arange(len(labels)), "test")
    seed = loaded.setting("seed", int)
    val_size = loaded.setting("data.val_size", int)
    if split == "val" and val_size == 0:
        raise UserError(
            f"split=val: the run of {loaded.path} had data.val_size=0, so it has no validation "
            "images; use split=test or split=train"
        )
    from fmnist.loaders import split_train_val

    subset = loaded.setting("data.subset", (int, type(None)))
    train_index, val_index = split_train_val(seed, val_size, subset if split == "train" else None)
    index = val_index if split == "val" else train_index
    images, labels = data.load_split("train", root)
    return SplitData(images[index], labels[index], index, "train")


class Batches:
    """Consecutive batches of normalised images, in order (the shape of a loader's `epoch()`)."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.num_samples = len(labels)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self.num_samples, self.batch_size):
            end = start + self.batch_size
            yield self.images[start:end], self.labels[start:end]


@dataclass
class Predictions:
    logits: Tensor  # float32 (N, 10), on the CPU
    labels: Tensor  # int64 (N,)
    loss: float  # mean cross-entropy, fmnist.losses.cross_entropy
    torch_loss: float  # the same by torch.nn.CrossEntropyLoss
    confusion: Tensor  # (10, 10), rows: true class, columns: predicted

    @property
    def accuracy(self) -> float:
        return self.confusion.trace().item() / self.confusion.sum().item()


@torch.no_grad()
def predict_split(model: nn.Module, loader: Batches, compute: Compute, tta: str) -> Predictions:
    """One pass keeping every logit, computed exactly as `fmnist.engine.evaluate` computes its
    loss, accuracy and confusion matrix (same `predict`, same float64 sum of per-batch sums)."""
    model.eval()
    torch_loss = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(2, dtype=torch.float64, device=compute.device)
    all_logits, all_labels = [], []
    for images, labels in loader.epoch():
        logits = predict(model, images, compute, tta)
        totals[0] += cross_entropy(logits, labels, reduction="sum")
        totals[1] += torch_loss(logits, labels)
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    count = len(labels)
    return Predictions(
        logits,
        labels,
        totals[0].item() / count,
        totals[1].item() / count,
        confusion_matrix(labels, logits.argmax(1)),
    )


def per_class(confusion: Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class (0 where undefined, as scikit-learn)."""
    c = confusion.double()
    correct, predicted, actual = c.diagonal(), c.sum(0), c.sum(1)
    rows = []
    for k, name in enumerate(classes):
        precision = (correct[k] / predicted[k]).item() if predicted[k] else 0.0
        recall = (correct[k] / actual[k]).item() if actual[k] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "class": k,
                "name": name,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "support": int(actual[k].item()),
            }
        )
    return rows


def most_confused(confusion: Tensor, classes: list[str], top: int) -> list[dict[str, Any]]:
    """The `top` largest off-diagonal counts: (true class, predicted class), most first."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    counts, order = off.flatten().sort(descending=True, stable=True)
    pairs = []
    for count, flat in zip(counts.tolist()[:top], order.tolist()[:top], strict=True):
        if count == 0:
            break
        true, pred = divmod(flat, len(classes))
        support = int(confusion[true].sum().item())
        pairs.append(
            {
                "true": true,
                "true_name": classes[true],
                "predicted": pred,
                "predicted_name": classes[pred],
                "count": count,
                "share_of_true": count / support,
            }
        )
    return pairs


def confidently_wrong(p: Predictions, indices: Tensor, top: int) -> list[dict[str, Any]]:
    """The `top` wrong predictions made with the highest probability, most confident first."""
    q = softmax(p.logits.double(), dim=1)
    confidence, predicted = q.max(1)
    wrong = (predicted != p.labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:top]
    return [
        {
            "position": i,
            "index": int(indices[i]),
            "true": int(p.labels[i]),
            "predicted": int(predicted[i]),
            "confidence": confidence[i].item(),
            "q_true": q[i, p.labels[i]].item(),
        }
        for i in order.tolist()
    ]


def evaluate_checkpoint(cfg: EvaluateConfig) -> tuple[dict[str, Any], SplitData]:
    """Everything eval.json holds, computed in memory (nothing is written here)."""
    loaded = load_checkpoint(cfg.ckpt_path)
    device = distributed.device(cfg.device, "device")
    compute = loaded.compute(device)
    tta = loaded.setting("trainer.tta", str) if cfg.tta is None else cfg.tta
    batch_size = cfg.data.batch_size or loaded.setting("data.eval_batch_size", int)
    split = split_data(loaded, cfg.split, cfg.data.root)

    model = loaded.model.to(
        device, memory_format=torch.channels_last if compute.channels_last else None
    )
    images = data.normalise(split.images.to(device), loaded.mean, loaded.std).unsqueeze(1)
    p = predict_split(model, Batches(images, split.labels.to(device), batch_size), compute, tta)

    count = len(p.labels)
    accuracy = p.accuracy
    difference = abs(p.loss - p.torch_loss)
    metrics = loaded.checkpoint.get("metrics") or {}
    recorded = metrics.get(f"{cfg.split}_acc") if isinstance(metrics, dict) else None
    classes = loaded.classes
    results = {
        "ckpt_path": str(loaded.path.resolve()),
        "model": loaded.model_name(),
        "epoch": loaded.checkpoint.get("epoch"),
        "step": loaded.checkpoint.get("step"),
        "split": cfg.split,
        "num_samples": count,
        "device": str(device),
        "precision": loaded.precision,
        "channels_last": compute.channels_last,
        "tta": tta,
        "batch_size": batch_size,
        "accuracy": accuracy,
        "correct": int(p.confusion.trace().item()),
        "loss": p.loss,
        "loss_torch": p.torch_loss,
        "loss_difference": difference,
        "losses_agree": difference <= AGREE_TOLERANCE * max(1.0, abs(p.loss)),
        "recorded_accuracy": recorded,
        "reproduces_recorded_accuracy": None if recorded is None else recorded == accuracy,
        "per_class": per_class(p.confusion, classes),
        "confusion": p.confusion.tolist(),
        "most_confused": most_confused(p.confusion, classes, cfg.top_confused),
        "confidently_wrong": confidently_wrong(p, split.indices, cfg.wrong_images),
        "classes": classes,
        "normalization": {"mean": loaded.mean, "std": loaded.std},
        "training_metrics": metrics,
    }
    for wrong in results["confidently_wrong"]:
        wrong["true_name"], wrong["predicted_name"] = (
            classes[wrong["true"]],
            classes[wrong["predicted"]],
        )
    return results, split


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
    """The results as text: accuracy, both losses, per-class table, confusion matrix, pairs."""
    mode = ("bf16 autocast" if r["precision"] == "bf16" else "float32") + (
        "" if r["tta"] == "none" else f", TTA {r['tta']}"
    )
    lines = [
        f"Checkpoint: {r['ckpt_path']}",
        f"  {r['model']}, epoch {r['epoch']}, step {r['step']}; evaluated on {r['device']} in "
        f"{mode}, as its run did",
        f"Split: {r['split']}, {r['num_samples']} images",
        "",
        f"Accuracy: {r['accuracy']:.4f} ({r['correct']} / {r['num_samples']})",
        "Mean cross-entropy:",
        f"  ours, fmnist.losses.cross_entropy:  {r['loss']:.6f}",
        f"  PyTorch, nn.CrossEntropyLoss:       {r['loss_torch']:.6f}",
        f"  They agree: {'yes' if r['losses_agree'] else 'NO'} "
        f"(difference {r['loss_difference']:.1e}).",
    ]
    recorded = r["recorded_accuracy"]
    if recorded is None:
        lines.append(f"(The checkpoint records no {r['split']} accuracy to compare with.)")
    else:
        verdict = "reproduced exactly" if r["reproduces_recorded_accuracy"] else "DIFFERS"
        lines.append(f"Training recorded {r['split']}_acc {recorded:.4f}: {verdict}.")

    width = max(len(name) for name in r["classes"]) + 2
    lines += ["", "Per class:", f"  {'class':<{width + 2}} precision  recall      F1  support"]
    for row in r["per_class"]:
        lines.append(
            f"  {row['class']} {row['name']:<{width}} {row['precision']:9.4f} "
            f"{row['recall']:7.4f} {row['f1']:7.4f} {row['support']:8d}"
        )
    macro = {
        k: sum(row[k] for row in r["per_class"]) / len(r["per_class"])
        for k in ("precision", "recall", "f1")
    }
    lines.append(
        f"  {'macro average':<{width + 2}} {macro['precision']:9.4f} {macro['recall']:7.4f} "
        f"{macro['f1']:7.4f} {r['num_samples']:8d}"
    )

    cell = max(5, len(str(max(max(row) for row in r["confusion"]))) + 1)
    header = "".join(f"{k:>{cell}}" for k in range(len(r["classes"])))
    lines += [
        "",
        "Confusion matrix (rows: true class, columns: predicted class, numbered as the rows):",
        f"  {'':<{width + 2}}{header}",
    ]
    for k, (name, row) in enumerate(zip(r["classes"], r["confusion"], strict=True)):
        lines.append(f"  {k} {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))

    lines += ["", "Most confused (true -> predicted):"]
    for pair in r["most_confused"]:
        lines.append(
            f"  {pair['true_name']} -> {pair['predicted_name']}: {pair['count']} "
            f"({pair['share_of_true']:.1%} of {pair['true_name']})"
        )
    if not r["most_confused"]:
        lines.append("  none: every image is classified correctly")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Figures and files
# --------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(r: dict[str, Any]):
    """The confusion matrix figure of fmnist.logging, labelled with the checkpoint's classes."""
    from fmnist.logging import confusion_figure

    title = f"{r['model']} on {r['split']}: accuracy {r['accuracy']:.4f}"
    fig = confusion_figure(torch.tensor(r["confusion"]), title)
    ax = fig.axes[0]
    ax.set_xticklabels(r["classes"], rotation=45, ha="right")
    ax.set_yticklabels(r["classes"])
    fig.tight_layout()
    return fig


def wrong_grid(r: dict[str, Any], images: Tensor):
    """A grid of the most confidently wrong images: index, true label, predicted label and q."""
    plt = _pyplot()
    wrong = r["confidently_wrong"]
    columns = min(4, len(wrong))
    rows = math.ceil(len(wrong) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.3 * columns, 2.6 * rows + 0.5), dpi=100, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, w in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[w["position"]].numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"#{w['index']}  true: {w['true_name']}\n"
            f"pred: {w['predicted_name']} ({w['confidence']:.0%})",
            fontsize=8,
        )
    fig.suptitle(f"Most confidently wrong {r['split']} images ({r['model']})", fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path) -> None:
    plt = _pyplot()
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def write_outputs(
    r: dict[str, Any], split: SplitData, run_dir: Path, tensorboard: bool
) -> list[str]:
    """Figures, optional TensorBoard events, then eval.json last: a run directory that holds
    eval.json holds everything."""
    run_dir.mkdir(parents=True, exist_ok=True)
    before = set(run_dir.iterdir())
    figures = {"confusion.png": confusion_png(r)}
    if r["confidently_wrong"]:
        figures["wrong.png"] = wrong_grid(r, split.images)
    r["files"] = {name.replace(".", "_"): name for name in figures}
    try:
        if tensorboard:
            from fmnist.logging import TensorBoard

            step = r["step"] if isinstance(r["step"], int) else 0
            with TensorBoard(run_dir) as board:
                board.scalars(
                    step, **{f"{r['split']}_acc": r["accuracy"], f"{r['split']}_loss": r["loss"]}
                )
                for name, fig in figures.items():
                    tag = f"{r['split']}/{Path(name).stem}"
                    board.writer.add_figure(tag, fig, step, close=False)
        for name, fig in figures.items():
            save_figure(fig, run_dir / name)
        text = json.dumps(r, indent=2) + "\n"
        write_atomically(run_dir / "eval.json", lambda tmp: Path(tmp).write_text(text))
    except BaseException:
        for path in set(run_dir.iterdir()) - before:  # no half set of outputs
            path.unlink(missing_ok=True)
        raise
    return ["eval.json", *figures, *(["TensorBoard events"] if tensorboard else [])]


@reports_user_errors
def main(cfg: DictConfig) -> dict[str, Any]:
    """`scripts/evaluate.py`: evaluate, print the report, write the outputs to Hydra's run dir."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings = validate(cfg)
        results, split = evaluate_checkpoint(settings)
        print(report(results))
        written = write_outputs(results, split, run_dir, settings.tensorboard)
    except BaseException:
        checkpoint.discard_if_unused(run_dir)
        raise
    print(f"\nWrote {', '.join(written)} to {run_dir}")
    return results


register()
