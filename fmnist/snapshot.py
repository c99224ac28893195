"""Snapshot: one image through an unfinished network, and its cross-entropy worked out by hand.

The logic of `python scripts/snapshot.py` (configured by configs/snapshot.yaml). The seed's
scenario: stop a network before it has learned, feed it one image whose class is known, read the
10 probabilities q it predicts, and compute the cross-entropy against the one-hot truth p term
by term, -sum_c p_c * log(q_c), then check it against our loss and PyTorch's.

The network is an untrained model of the `model` group, seeded (default: `small_cnn`), or a
partially trained checkpoint (`ckpt_path`), always in eval mode (BatchNorm uses its running
statistics, dropout is off). Or skip the network and give the probabilities: `probs=[...]`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import fmnist.config  # noqa: F401  (registers the model schemas that configs/model/ extends)
from fmnist import checkpoint, data, distributed
from fmnist.config import choose, require
from fmnist.engine import Compute, predict
from fmnist.errors import UserError, reports_user_errors
from fmnist.evaluate import (
    DEVICES,
    load_checkpoint,
    save_figure,
    write_atomically,
)
from fmnist.explain import expansion
from fmnist.losses import cross_entropy, cross_entropy_from_probs, softmax

DEFAULT_TARGET = 4  # Coat: the seed's example
NUM_CLASSES = len(data.CLASSES)
DECIMALS = 4  # q is shown to 4 decimals, as on paper
AGREE_TOLERANCE = 1e-6
LN10 = math.log(NUM_CLASSES)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _check_class(key: str, value: int | None) -> None:
    require(
        value is None or 0 <= value < NUM_CLASSES,
        key,
        value,
        f"a class is 0..{NUM_CLASSES - 1} "
        f"({', '.join(f'{k} {n}' for k, n in enumerate(data.CLASSES))})",
    )


@dataclass
class SnapshotDataConfig:
    root: str | None = None  # default: $FMNIST_DATA, else data/ at the project root


@dataclass
class SnapshotConfig:
    model: Any = None  # the `model` group (untrained, seeded); ignored with ckpt_path or probs
    seed: int = 0  # seeds the untrained model's initial weights
    target_class: int | None = None  # the image: the split's first of this class (default 4)
    target: int | None = None  # the same as target_class (the name explain.py uses with probs)
    index: int | None = None  # the image: this index in the split (its label is the target)
    split: str = "test"  # test | train: the official split the image comes from
    ckpt_path: str | None = None  # a (partially) trained checkpoint instead of an untrained model
    probs: list[float] | None = None  # 10 probabilities instead of a model and an image
    device: str = "auto"
    data: SnapshotDataConfig = field(default_factory=SnapshotDataConfig)

    def __post_init__(self) -> None:
        require(self.seed >= 0, "seed", self.seed, "must be 0 or more")
        _check_class("target_class", self.target_class)
        _check_class("target", self.target)
        if None not in (self.target, self.target_class) and self.target != self.target_class:
            raise UserError(
                f"target={self.target} and target_class={self.target_class} disagree: "
                "they are the same setting, give one"
            )
        require(self.index is None or self.index >= 0, "index", self.index, "must be 0 or more")
        choose("split", self.split, data.SPLITS)
        choose("device", self.device, DEVICES)
        if self.probs is not None:
            require(
                len(self.probs) == NUM_CLASSES,
                "probs",
                self.probs,
                f"give {NUM_CLASSES} probabilities, one per Fashion-MNIST class",
            )
            for key in ("index", "ckpt_path"):
                if getattr(self, key) is not None:
                    raise UserError(
                        f"probs=[...] stands in for a model's output on an image: leave out {key}"
                    )

    @property
    def true_class(self) -> int | None:
        return self.target if self.target is not None else self.target_class


def register() -> None:
    """Put the schema in Hydra's ConfigStore, where configs/snapshot.yaml extends it."""
    ConfigStore.instance().store(name="snapshot_schema", node=SnapshotConfig)


def validate(cfg: DictConfig) -> SnapshotConfig:
    """Check every range and choice (the model's too); the first problem is one `UserError`."""
    return OmegaConf.to_object(cfg)


# --------------------------------------------------------------------------------------------
# The snapshot
# --------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """One prediction q against its one-hot truth, and the cross-entropy three ways."""

    source: str  # what produced q, in words
    classes: list[str]
    target: int
    q: list[float]  # the 10 probabilities
    loss_ours: float  # fmnist.losses (cross_entropy on logits, or cross_entropy_from_probs)
    loss_torch: float  # torch.nn.CrossEntropyLoss on logits, or NLLLoss on log(q)
    logits: list[float] | None = None  # None when q was given
    split: str | None = None
    index: int | None = None  # the image's index in the split
    image: Tensor | None = None  # uint8 (28, 28)
    details: dict[str, Any] = field(default_factory=dict)  # model, seed, checkpoint, precision

    @property
    def p(self) -> list[int]:
        return [int(c == self.target) for c in range(len(self.q))]

    @property
    def shown(self) -> list[float]:
        """q rounded as printed: what a reader computes with by hand."""
        return [round(v, DECIMALS) for v in self.q]

    @property
    def loss_by_hand(self) -> float:
        qy = self.shown[self.target]
        return -math.log(qy) if qy > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            **self.details,
            "split": self.split,
            "index": self.index,
            "target": self.target,
            "target_name": self.classes[self.target],
            "classes": self.classes,
            "logits": self.logits,
            "q": self.q,
            "q_rounded": self.shown,
            "p": self.p,
            "loss": {
                "by_hand": self.loss_by_hand,
                "ours": self.loss_ours,
                "torch": self.loss_torch,
                "agree": abs(self.loss_ours - self.loss_torch) <= AGREE_TOLERANCE,
            },
            "ln10": LN10,
        }


def from_probs(probs: list[float], target: int) -> Snapshot:
    """The cross-entropy of given probabilities (already a softmax output) against `target`."""
    q = torch.tensor(probs, dtype=torch.float64)
    t = torch.tensor(target)
    try:
        ours = cross_entropy_from_probs(q, t)  # checks that q is a distribution
    except ValueError as e:
        raise UserError(str(e)) from None
    theirs = nn.NLLLoss()(q.log().unsqueeze(0), t.unsqueeze(0))  # picks -log q[target]
    return Snapshot(
        "the given probabilities q",
        list(data.CLASSES),
        target,
        [float(v) for v in probs],
        ours.item(),
        theirs.item(),
    )


def pick_image(labels: Tensor, split: str, index: int | None, target: int | None) -> int:
    """`index` if given (its label must agree with `target`), else the split's first image of
    class `target` (default 4, Coat)."""
    if index is not None:
        if index >= len(labels):
            raise UserError(
                f"index={index} is out of range: the {split} split has {len(labels)} images "
                f"(0..{len(labels) - 1})"
            )
        label = int(labels[index])
        if target is not None and label != target:
            raise UserError(
                f"index={index} is a {data.CLASSES[label]} (class {label}), not class {target}: "
                "give index or target_class, not both"
            )
        return index
    target = DEFAULT_TARGET if target is None else target
    return int((labels == target).nonzero()[0, 0])


@torch.no_grad()
def from_model(cfg: SnapshotConfig, model_cfg: DictConfig) -> Snapshot:
    """Feed one image of the split to the model (untrained and seeded, or a checkpoint's)."""
    device = distributed.device(cfg.device, "device")
    if cfg.ckpt_path:
        loaded = load_checkpoint(cfg.ckpt_path)
        model, classes, mean, std = loaded.model, loaded.classes, loaded.mean, loaded.std
        compute = loaded.compute(device)
        step = loaded.checkpoint.get("step")
        source = f"{type(model).__name__} from {loaded.path} (step {step})"
        details = {
            "model": type(model).__name__,
            "ckpt_path": str(loaded.path.resolve()),
            "step": step,
            "precision": loaded.precision,
        }
    else:
        torch.manual_seed(cfg.seed)
        model = instantiate(model_cfg)
        classes, mean, std = list(data.CLASSES), data.MEAN, data.STD
        compute = Compute(device, bf16=False, channels_last=False)
        source = f"an untrained {type(model).__name__} (seed {cfg.seed})"
        details = {"model": type(model).__name__, "seed": cfg.seed, "precision": "32"}
    model = model.to(device, memory_format=torch.channels_last if compute.channels_last else None)
    model.eval()  # BatchNorm's running statistics, no dropout

    images, labels = data.load_split(cfg.split, cfg.data.root)
    index = pick_image(labels, cfg.split, cfg.index, cfg.true_class)
    target = int(labels[index])
    x = data.normalise(images[index : index + 1].to(device), mean, std).unsqueeze(1)
    logits = predict(model, x, compute)  # float32 (1, 10), autocast as the checkpoint's run
    t = torch.tensor([target], device=device)
    return Snapshot(
        source,
        classes,
        target,
        softmax(logits.double(), dim=1)[0].tolist(),
        cross_entropy(logits, t).item(),
        nn.CrossEntropyLoss()(logits, t).item(),
        logits=logits[0].tolist(),
        split=cfg.split,
        index=index,
        image=images[index],
        details=details,
    )


# --------------------------------------------------------------------------------------------
# Report and files
# --------------------------------------------------------------------------------------------


def report(s: Snapshot) -> str:
    """q, p, the loss term by term, its value, ours and PyTorch's, and the ln 10 reference."""
    f = f".{DECIMALS}f"
    name = s.classes[s.target]
    if s.index is None:
        head = [f"Cross-entropy of {s.source}, true class {s.target} ({name})."]
        q_is = "q = the given probabilities"
    else:
        head = [
            f"Snapshot of {s.source}, in eval mode, on {s.split} image #{s.index}: "
            f"true class {s.target} ({name}).",
        ]
        q_is = "q = the model's probabilities, softmax(logits)"
    width = max(len(c) for c in s.classes) + 2
    lines = [*head, "", f"{q_is}; p = the one-hot truth:"]
    lines.append(f"  {'class':<{width + 2}}{'q':>6}  p")
    for c, (cls, qc, pc) in enumerate(zip(s.classes, s.q, s.p, strict=True)):
        mark = "   <- true class" if pc else ""
        lines.append(f"  {c} {cls:<{width}}{qc:{f}}  {pc}{mark}")
    side = "above" if s.loss_ours >= LN10 else "below"
    difference = abs(s.loss_ours - s.loss_torch)
    agree = "yes" if difference <= AGREE_TOLERANCE else "NO"
    ours_call, torch_call = (
        ("cross_entropy_from_probs(q, target)", "torch.nn.NLLLoss()(log(q), target)")
        if s.logits is None
        else ("cross_entropy(logits, target)", "torch.nn.CrossEntropyLoss()(logits, target)")
    )
    lines += [
        "",
        f"q = [{', '.join(format(v, f) for v in s.q)}]",
        f"p = [{', '.join(map(str, s.p))}]",
        "",
        "loss = -sum_c p_c * log(q_c)",
        f"     = {expansion(s.q, s.target)} = {s.loss_by_hand:{f}}",
        f"     = -log(q[{s.target}]) = -log({s.shown[s.target]:{f}})   (the p_c = 0 terms vanish)",
        "",
        f"Our loss, fmnist.losses.{ours_call}: {s.loss_ours:.6f}",
        f"PyTorch, {torch_call}: {s.loss_torch:.6f}",
        f"They agree: {agree} (difference {difference:.1e}).",
    ]
    if round(s.loss_by_hand, DECIMALS) != round(s.loss_ours, DECIMALS):
        lines.append("(By hand uses q rounded to 4 decimals, as printed; the losses use exact q.)")
    lines += [
        "",
        f"An untrained {NUM_CLASSES}-class model gives about ln {NUM_CLASSES} = {LN10:{f}}: its q "
        f"is close to 1/{NUM_CLASSES} for every class, and -log(1/{NUM_CLASSES}) = "
        f"ln {NUM_CLASSES}.",
        f"This loss, {s.loss_ours:{f}}, is {abs(s.loss_ours - LN10):{f}} {side} it.",
    ]
    return "\n".join(lines)


def snapshot_figure(s: Snapshot):
    """The image, and the 10 probabilities as bars with the true class highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(9, 3.6), dpi=100, gridspec_kw={"width_ratios": [1, 2]}
    )
    left.imshow(s.image.numpy(), cmap="gray", vmin=0, vmax=255)
    left.set_title(f"{s.split} #{s.index}: {s.classes[s.target]}", fontsize=10)
    left.axis("off")
    colors = ["tab:orange" if pc else "tab:blue" for pc in s.p]
    bars = right.bar(range(len(s.q)), s.q, color=colors)
    right.bar_label(bars, labels=[f"{v:.{DECIMALS}f}" for v in s.q], fontsize=7)
    right.axhline(1 / len(s.q), color="gray", linestyle=":", linewidth=1, label="1/10 (untrained)")
    right.bar(0, 0, color="tab:orange", label="true class")
    right.legend(loc="upper right", fontsize=8)
    right.set_xticks(range(len(s.q)), s.classes, rotation=45, ha="right", fontsize=8)
    right.set_ylim(0, max(max(s.q) * 1.2, 0.15))
    right.set_ylabel("q")
    right.set_title(
        f"loss = -log(q[{s.target}]) = {s.loss_ours:.{DECIMALS}f}  (ln 10 = {LN10:.{DECIMALS}f})",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def write_outputs(s: Snapshot, run_dir: Path) -> list[str]:
    """snapshot.png (when there is an image), then snapshot.json last."""
    run_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if s.image is not None:
        save_figure(snapshot_figure(s), run_dir / "snapshot.png")
        written.append("snapshot.png")
    text = json.dumps(s.as_dict(), indent=2) + "\n"
    write_atomically(run_dir / "snapshot.json", lambda tmp: Path(tmp).write_text(text))
    return ["snapshot.json", *written]


def take(cfg: SnapshotConfig, model_cfg: DictConfig) -> Snapshot:
    """The snapshot the config asks for: from given probabilities, or from a model and an image."""
    if cfg.probs is not None:
        target = cfg.true_class
        if target is None:
            raise UserError("probs given without target: add target=... (the true class, 0..9)")
        return from_probs(cfg.probs, target)
    return from_model(cfg, model_cfg)


@reports_user_errors
def main(cfg: DictConfig) -> Snapshot:
    """`scripts/snapshot.py`: take the snapshot, print it, write it to Hydra's run directory."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        snapshot = take(validate(cfg), cfg.model)
        print(report(snapshot))
        written = write_outputs(snapshot, run_dir)
    except BaseException:
        checkpoint.discard_if_unused(run_dir)
        raise
    print(f"\nWrote {', '.join(written)} to {run_dir}")
    return snapshot


register()
