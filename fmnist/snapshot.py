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
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from fmnist import checkpoint, data, engine, runs
from fmnist.engine import Compute, predict
from fmnist.errors import UserError, reports_user_errors
from fmnist.explain import agree, expansion, verdict
from fmnist.files import write_text_atomically
from fmnist.losses import cross_entropy, cross_entropy_from_probs, softmax
from fmnist.report import figures
from fmnist.script_configs import SnapshotConfig, validate_snapshot

DEFAULT_TARGET = 4  # Coat: the seed's example
NUM_CLASSES = len(data.CLASSES)
DECIMALS = 4  # q is shown to 4 decimals, as on paper
LN10 = math.log(NUM_CLASSES)


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
    picture: str | None = None  # instead of split and index: the user's picture file
    details: dict[str, Any] = field(default_factory=dict)  # model, seed, checkpoint, precision

    @property
    def p(self) -> list[int]:
        return [int(c == self.target) for c in range(len(self.q))]

    @property
    def shown(self) -> list[float]:
        """q rounded as printed: what a reader computes with by hand."""
        return [round(v, DECIMALS) for v in self.q]

    @property
    def subject(self) -> str:
        """The image, in words: the picture file, or `test image #17`."""
        return self.picture or f"{self.split} image #{self.index}"

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
            "picture": self.picture,
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
                "agree": agree(self.loss_ours, self.loss_torch),
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
    device = engine.device(cfg.device, "device")
    if cfg.ckpt_path:
        loaded = checkpoint.load_model(cfg.ckpt_path)
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
    model = compute.place(model)
    model.eval()  # BatchNorm's running statistics, no dropout

    images, labels = data.load_split(cfg.split, cfg.data.root)
    index = pick_image(labels, cfg.split, cfg.index, cfg.true_class)
    x = data.normalise(images[index : index + 1].to(device), mean, std).unsqueeze(1)
    logits = predict(model, x, compute)  # float32 (1, 10), autocast as the checkpoint's run
    return from_logits(
        logits,
        int(labels[index]),
        source,
        classes,
        split=cfg.split,
        index=index,
        image=images[index],
        details=details,
    )


def from_logits(
    logits: Tensor, target: int, source: str, classes: list[str], **image: Any
) -> Snapshot:
    """The cross-entropy of a model's float32 logits (1, 10) for one image against `target`:
    q = softmax(logits), our loss and PyTorch's. `image`: the Snapshot fields saying which."""
    t = torch.tensor([target], device=logits.device)
    return Snapshot(
        source,
        classes,
        target,
        softmax(logits.double(), dim=1)[0].tolist(),
        cross_entropy(logits, t).item(),
        nn.CrossEntropyLoss()(logits, t).item(),
        logits=logits[0].tolist(),
        **image,
    )


# --------------------------------------------------------------------------------------------
# The lesson as text, and the files
# --------------------------------------------------------------------------------------------


def report(s: Snapshot) -> str:
    """q, p, the loss term by term, its value, ours and PyTorch's, and the ln 10 reference."""
    f = f".{DECIMALS}f"
    name = s.classes[s.target]
    if s.logits is None:
        head = [f"Cross-entropy of {s.source}, true class {s.target} ({name})."]
        q_is = "q = the given probabilities"
    else:
        head = [
            f"Snapshot of {s.source}, in eval mode, on {s.subject}: "
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
        f"They agree: {verdict(s.loss_ours, s.loss_torch)}.",
    ]
    if round(s.loss_by_hand, DECIMALS) != round(s.loss_ours, DECIMALS):
        lines.append("(By hand uses q rounded to 4 decimals, as printed; the losses use exact q.)")
    lines += [
        "",
        f"An untrained {NUM_CLASSES}-class model gives about ln {NUM_CLASSES} = {LN10:{f}}: its q "
        f"is close to 1/{NUM_CLASSES} for every class, and -log(1/{NUM_CLASSES}) = "
        f"ln {NUM_CLASSES}.",
        f"This loss, {s.loss_ours:{f}}, is {abs(s.loss_ours - LN10):{f}} {side} it.",
        _verdict(s),
    ]
    return "\n".join(lines)


def _verdict(s: Snapshot) -> str:
    """Why this answer costs what it costs: right or wrong, sure or unsure."""
    top = max(range(len(s.q)), key=s.q.__getitem__)
    if top == s.target:
        return (
            f"The top class is the true one, with q = {s.q[top]:.{DECIMALS}f}: the surer a right "
            "answer, the closer its loss is to 0."
        )
    return (
        f"The top class is {s.classes[top]} (q = {s.q[top]:.{DECIMALS}f}), not "
        f"{s.classes[s.target]} (q = {s.q[s.target]:.{DECIMALS}f}): the loss looks only at "
        f"q[{s.target}], so a wrong answer costs more the surer it is (the less it leaves for the "
        f"true class), and an unsure one (q near 1/{NUM_CLASSES} everywhere) about "
        f"ln {NUM_CLASSES}."
    )


def write_outputs(s: Snapshot, run_dir: Path) -> list[str]:
    """snapshot.png (when there is an image), then snapshot.json last."""
    run_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if s.image is not None:
        f = f".{DECIMALS}f"
        figure = figures.image_and_probabilities(
            s.image,
            f"{s.split} #{s.index}: {s.classes[s.target]}",
            s.q,
            s.classes,
            s.target,
            f"loss = -log(q[{s.target}]) = {s.loss_ours:{f}}  (ln 10 = {LN10:{f}})",
            DECIMALS,
        )
        figures.save_figure(figure, run_dir / "snapshot.png")
        written.append("snapshot.png")
    text = json.dumps(s.as_dict(), indent=2) + "\n"
    write_text_atomically(run_dir / "snapshot.json", text)
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
    with runs.removed_if_unused(runs.output_dir()) as run_dir:
        snapshot = take(validate_snapshot(cfg), cfg.model)
        print(report(snapshot))
        written = write_outputs(snapshot, run_dir)
    print(f"\nWrote {', '.join(written)} to {run_dir}")
    return snapshot
