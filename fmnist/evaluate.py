"""Evaluate a checkpoint: accuracy, both losses, per-class metrics, confusions, worst mistakes.

The logic of `python scripts/evaluate.py ckpt_path=...` (configured by configs/evaluate.yaml and
fmnist.script_configs). Everything is rebuilt from the checkpoint alone (`checkpoint.load_model`):
the model from its saved config and weights, the normalisation and class names it stores, and the
precision, channels-last layout and test-time augmentation its run evaluated with. The split goes
through the training loader and `engine.evaluate`, so the accuracy equals the one the run
recorded, exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from fmnist import checkpoint, data, engine, ood, runs
from fmnist.errors import UserError, reports_user_errors
from fmnist.files import all_or_nothing, write_text_atomically
from fmnist.loaders import DeviceLoader, split_train_val
from fmnist.losses import softmax
from fmnist.report import figures, text
from fmnist.report.board import TensorBoard
from fmnist.script_configs import EvaluateConfig, validate_evaluate

AGREE_TOLERANCE = 1e-5  # relative: both losses sum float32 per-sample losses in another order


@dataclass
class SplitData:
    images: Tensor  # uint8 (N, 28, 28), as stored
    labels: Tensor  # int64 (N,)
    indices: Tensor  # each image's index in the official split it comes from
    source: str  # the official split: "train" or "test"


def split_data(loaded: checkpoint.Loaded, split: str, root: str | None) -> SplitData:
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
    subset = loaded.setting("data.subset", (int, type(None)))
    train_index, val_index = split_train_val(seed, val_size, subset if split == "train" else None)
    index = val_index if split == "val" else train_index
    images, labels = data.load_split("train", root)
    return SplitData(images[index], labels[index], index, "train")


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


def confidently_wrong(p: engine.Metrics, indices: Tensor, top: int) -> list[dict[str, Any]]:
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
    loaded = checkpoint.load_model(cfg.ckpt_path)
    compute = loaded.compute(engine.device(cfg.device, "device"))
    run_tta = loaded.setting("trainer.tta", str)
    tta = run_tta if cfg.tta is None else cfg.tta
    batch_size = cfg.data.batch_size or loaded.setting("data.eval_batch_size", int)
    split = split_data(loaded, cfg.split, cfg.data.root)
    batches = DeviceLoader(
        split.images, split.labels, batch_size, compute.device, mean=loaded.mean, std=loaded.std
    )
    p = engine.evaluate(compute.place(loaded.model), batches, compute, tta)
    torch_loss = nn.functional.cross_entropy(p.logits, p.labels, reduction="sum").item() / len(
        p.labels
    )

    count = len(p.labels)
    accuracy = p.accuracy
    difference = abs(p.loss - torch_loss)
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
        "device": str(compute.device),
        "precision": loaded.precision,
        "channels_last": compute.channels_last,
        "tta": tta,
        "run_tta": run_tta,
        "batch_size": batch_size,
        "accuracy": accuracy,
        "correct": int(p.confusion.trace().item()),
        "loss": p.loss,
        "loss_torch": torch_loss,
        "loss_difference": difference,
        "losses_agree": difference <= AGREE_TOLERANCE * max(1.0, abs(p.loss)),
        "recorded_accuracy": recorded,
        # Comparable only when the run evaluated the same views of each image.
        "reproduces_recorded_accuracy": (
            None if recorded is None or tta != run_tta else recorded == accuracy
        ),
        "per_class": per_class(p.confusion, classes),
        "confusion": p.confusion.tolist(),
        "most_confused": most_confused(p.confusion, classes, cfg.top_confused),
        "confidently_wrong": confidently_wrong(p, split.indices, cfg.wrong_images),
        "classes": classes,
        "normalization": {"mean": loaded.mean, "std": loaded.std},
        "training_metrics": metrics,
    }
    threshold = ood.from_checkpoint(loaded.checkpoint)
    results["ood"] = {
        "threshold": threshold.value if threshold else None,
        "flagged": (
            (ood.energy(p.logits) > threshold.value).double().mean().item() if threshold else None
        ),
        "rule": ood.rule(threshold.value if threshold else None, str(loaded.path)),
    }
    for wrong in results["confidently_wrong"]:
        wrong["true_name"], wrong["predicted_name"] = (
            classes[wrong["true"]],
            classes[wrong["predicted"]],
        )
    return results, split


def write_outputs(
    r: dict[str, Any], split: SplitData, run_dir: Path, tensorboard: bool
) -> list[str]:
    """Figures, optional TensorBoard events, then eval.json last: a run directory that holds
    eval.json holds everything."""
    drawn = {"confusion.png": figures.evaluation_confusion(r)}
    if r["confidently_wrong"]:
        drawn["wrong.png"] = figures.wrong_grid(r, split.images)
    r["files"] = {name.replace(".", "_"): name for name in drawn}
    with all_or_nothing(run_dir):  # no half set of outputs
        if tensorboard:
            step = r["step"] if isinstance(r["step"], int) else 0
            with TensorBoard(run_dir) as board:
                board.scalars(
                    step, **{f"{r['split']}_acc": r["accuracy"], f"{r['split']}_loss": r["loss"]}
                )
                for name, fig in drawn.items():
                    tag = f"{r['split']}/{Path(name).stem}"
                    board.figure(tag, fig, step, close=False)
        for name, fig in drawn.items():
            figures.save_figure(fig, run_dir / name)
        results = json.dumps(r, indent=2) + "\n"
        write_text_atomically(run_dir / "eval.json", results)
    return ["eval.json", *drawn, *(["TensorBoard events"] if tensorboard else [])]


@reports_user_errors
def main(cfg: DictConfig) -> dict[str, Any]:
    """`scripts/evaluate.py`: evaluate, print the report, write the outputs to Hydra's run dir."""
    with runs.removed_if_unused(runs.output_dir()) as run_dir:
        settings = validate_evaluate(cfg)
        results, split = evaluate_checkpoint(settings)
        print(text.evaluation(results))
        written = write_outputs(results, split, run_dir, settings.tensorboard)
    print(f"\nWrote {', '.join(written)} to {run_dir}")
    return results
