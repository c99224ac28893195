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
from fmnist.i18n import Text, class_name, padded, say
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
        return self.picture or Text("snapshot.subject", split=self.split, index=self.index)

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
        Text("snapshot.source.probs"),
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
        source = Text(
            "snapshot.source.checkpoint", model=type(model).__name__, path=loaded.path, step=step
        )
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
        source = Text("snapshot.source.untrained", model=type(model).__name__, seed=cfg.seed)
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


def report(s: Snapshot, lang: str = "en") -> str:
    """q, p, the loss term by term, its value, ours and PyTorch's, and the ln 10 reference; in
    `lang` (en, zh)."""
    f = f".{DECIMALS}f"
    name = class_name(s.target, s.classes, lang)
    if s.logits is None:
        head = [say(lang, "snapshot.head.probs", source=s.source, target=s.target, name=name)]
        q_is = say(lang, "snapshot.q.probs")
    else:
        subject = s.subject
        head = [
            say(
                lang,
                "snapshot.head.model",
                source=s.source,
                subject=subject,
                target=s.target,
                name=name,
            )
        ]
        q_is = say(lang, "snapshot.q.model")
    width = max(len(c) for c in s.classes) + 2
    lines = [*head, "", say(lang, "snapshot.p", q_is=q_is)]
    column = padded(say(lang, "snapshot.column.class"), width + 2)
    lines.append(f"  {column}{'q':>6}  p")
    for c, (qc, pc) in enumerate(zip(s.q, s.p, strict=True)):
        mark = say(lang, "snapshot.true_mark") if pc else ""
        lines.append(f"  {c} {padded(class_name(c, s.classes, lang), width)}{qc:{f}}  {pc}{mark}")
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
        say(lang, "snapshot.loss"),
        f"     = {expansion(s.q, s.target)} = {s.loss_by_hand:{f}}",
        say(lang, "snapshot.vanish", target=s.target, q=f"{s.shown[s.target]:{f}}"),
        "",
        say(lang, "snapshot.ours", call=ours_call, value=f"{s.loss_ours:.6f}"),
        say(lang, "snapshot.torch", call=torch_call, value=f"{s.loss_torch:.6f}"),
        say(lang, "explain.agree", verdict=verdict(s.loss_ours, s.loss_torch, lang)),
    ]
    if round(s.loss_by_hand, DECIMALS) != round(s.loss_ours, DECIMALS):
        lines.append(say(lang, "snapshot.rounded"))
    side = "snapshot.above" if s.loss_ours >= LN10 else "snapshot.below"
    lines += [
        "",
        say(lang, "snapshot.untrained", c=NUM_CLASSES, ln=f"{LN10:{f}}"),
        say(lang, side, loss=f"{s.loss_ours:{f}}", distance=f"{abs(s.loss_ours - LN10):{f}}"),
        _verdict(s, lang),
    ]
    return "\n".join(lines)


def _verdict(s: Snapshot, lang: str) -> str:
    """Why this answer costs what it costs: right or wrong, sure or unsure."""
    top = max(range(len(s.q)), key=s.q.__getitem__)
    f = f".{DECIMALS}f"
    if top == s.target:
        return say(lang, "snapshot.right", q=f"{s.q[top]:{f}}")
    return say(
        lang,
        "snapshot.wrong",
        top=class_name(top, s.classes, lang),
        q_top=f"{s.q[top]:{f}}",
        true=class_name(s.target, s.classes, lang),
        q_true=f"{s.q[s.target]:{f}}",
        target=s.target,
        c=NUM_CLASSES,
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
