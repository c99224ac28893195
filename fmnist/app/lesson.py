"""The "Cross-entropy by hand" tab: softmax and the loss worked out for a table of logits, or for
given probabilities, as `scripts/explain.py` does it (fmnist.explain checks the input and writes
the step-by-step text), with fmnist.losses' values beside PyTorch's.

A table row is one sample: its target class first, then its logits (or probabilities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from fmnist import explain
from fmnist.data import CLASSES
from fmnist.explain import DECIMALS, class_label, number, worked_expansion
from fmnist.i18n import class_name, say
from fmnist.losses import cross_entropy, cross_entropy_from_probs, softmax

PLOT_TOP = -math.log(0.005)  # the plot's loss axis ends here (q = 0.005)


def class_names(classes: int, lang: str) -> list[str]:
    """Fashion-MNIST's class names for 10 classes (in `lang`), else the indices."""
    if classes != len(CLASSES):
        return [str(c) for c in range(classes)]
    return [class_name(c, CLASSES, lang) for c in range(classes)]


@dataclass
class Worked:
    """One batch worked out: q, each sample's loss, the mean (ours and PyTorch's) and the text."""

    q: list[list[float]]  # softmax of the logits, or the given probabilities
    targets: list[int]
    losses: list[float]  # fmnist.losses, per sample
    mean: float  # fmnist.losses, the batch's loss
    torch_mean: float  # PyTorch's
    ours_call: str  # what computed `mean`, in words
    torch_call: str  # what computed `torch_mean`
    steps: str  # fmnist.explain's step-by-step text, as scripts/explain.py prints it
    by_hand: bool  # each sample's value from q rounded as shown (logits: as explain.py does)
    lang: str = "en"  # the language of the words: en | zh

    @property
    def agree(self) -> bool:
        return explain.agree(self.mean, self.torch_mean)

    def expansions(self) -> list[str]:
        """-sum_c p_c * log(q_c) of each sample, term by term, and its value."""
        return [
            worked_expansion(q, t, None if self.by_hand else torch.tensor(loss))
            for q, t, loss in zip(self.q, self.targets, self.losses, strict=True)
        ]

    def summary(self) -> str:
        """The per-sample expansions, the mean and PyTorch's value, as Markdown."""
        lang = self.lang
        lines = [
            say(lang, "lesson.sample", i=i, label=class_label(t, len(q), lang), line=line)
            for i, (q, t, line) in enumerate(
                zip(self.q, self.targets, self.expansions(), strict=True), start=1
            )
        ]
        if self.by_hand:
            lines.append(say(lang, "lesson.rounded"))
        verdict = explain.verdict(self.mean, self.torch_mean, lang)
        lines += [
            "",
            say(lang, "lesson.mean", call=self.ours_call, mean=number(self.mean)),
            say(
                lang,
                "lesson.torch",
                call=self.torch_call,
                value=number(self.torch_mean),
                verdict=verdict,
            ),
        ]
        return "\n".join(lines)

    def q_table(self) -> tuple[list[str], list[list[Any]]]:
        """Headers and rows: each sample's target, q rounded as on paper, and its loss."""
        lang, classes = self.lang, len(self.q[0])
        names = class_names(classes, lang)
        headers = [
            say(lang, "lesson.column.sample"),
            say(lang, "lesson.column.target"),
            *(f"q {name}" for name in names),
            say(lang, "lesson.column.loss"),
        ]
        rows = [
            [i, t, *(round(v, DECIMALS) for v in q), _json(round(loss, DECIMALS))]
            for i, (q, t, loss) in enumerate(
                zip(self.q, self.targets, self.losses, strict=True), start=1
            )
        ]
        return headers, rows

    def plot(self) -> pd.DataFrame:
        """The loss of one sample, -log q[target], against q[target] (0 for a sure right answer,
        ln C for an unsure one, without bound for a sure wrong one), with each sample's q[target]
        and q = 1/C marked by a vertical line up to the curve: a line plot's rows (q, loss,
        series), drawn in the browser."""
        lang, classes = self.lang, len(self.q[0])
        grid = [0.005 + i * (1 - 0.005) / 199 for i in range(200)]
        rows = [(q, -math.log(q), say(lang, "lesson.plot.curve")) for q in grid]
        marks = [(1 / classes, say(lang, "lesson.plot.unsure", c=classes))]
        pairs = zip(self.q, self.targets, strict=True)
        marks += [(q[t], say(lang, "lesson.plot.sample", i=i)) for i, (q, t) in enumerate(pairs, 1)]
        for q, name in marks:
            top = min(-math.log(q), PLOT_TOP) if q > 0 else PLOT_TOP  # a q of 0: at the edge
            rows += [(q, 0.0, name), (q, top, name)]
        return pd.DataFrame(rows, columns=["q", "loss", "series"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "q": self.q,
            "targets": self.targets,
            "losses": [_json(v) for v in self.losses],
            "mean": _json(self.mean),
            "torch": _json(self.torch_mean),
            "agree": self.agree,
            "expansions": self.expansions(),
        }


def from_logits(rows: list[list[Any]], lang: str = "en") -> Worked:
    """Rows of [target, x_1, ..., x_C]; bad input is a `UserError` (fmnist.explain's message)."""
    targets, logits = _split(rows)
    steps = explain.explain({"logits": logits, "targets": targets}, lang)  # checks them
    x = torch.tensor(logits, dtype=torch.float64)
    t = torch.tensor(targets)
    return Worked(
        softmax(x, dim=1).tolist(),
        targets,
        cross_entropy(x, t, reduction="none").tolist(),
        cross_entropy(x, t).item(),
        nn.CrossEntropyLoss()(x, t).item(),
        "fmnist.losses.cross_entropy(logits, targets)",
        "torch.nn.CrossEntropyLoss()(logits, targets)",
        steps,
        by_hand=True,
        lang=lang,
    )


def from_probs(rows: list[list[Any]], lang: str = "en") -> Worked:
    """Rows of [target, q_1, ..., q_C] that are already distributions (a softmax's output)."""
    targets, probs = _split(rows)
    steps = explain.explain({"probs": probs, "target": targets}, lang)  # checks them
    q = torch.tensor(probs, dtype=torch.float64)
    t = torch.tensor(targets)
    return Worked(
        probs,
        targets,
        cross_entropy_from_probs(q, t, reduction="none").tolist(),
        cross_entropy_from_probs(q, t).item(),
        nn.NLLLoss()(q.log(), t).item(),
        "fmnist.losses.cross_entropy_from_probs(q, target)",
        "torch.nn.NLLLoss()(log(q), target)",
        steps,
        by_hand=False,
        lang=lang,
    )


def _json(value: float) -> float | str:
    """A number as JSON can hold it: an infinite loss (q = 0 on the true class) as "inf", which
    JSON has no number for (it would arrive as null)."""
    return value if math.isfinite(value) else str(value)


def _split(rows: list[list[Any]]) -> tuple[list[Any], list[list[Any]]]:
    """The targets (first column) and the values (the others), as numbers where they are."""
    cells = [[_number(v) for v in row] for row in rows]
    targets = [_whole(row[0]) if row else None for row in cells]
    return targets, [row[1:] for row in cells]


def _number(value: Any) -> Any:
    """A cell as typed: a number, or text that reads as one; anything else is left for
    fmnist.explain to name."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def _whole(value: Any) -> Any:
    """2.0 -> 2: a table's number cells give floats, a class index is whole."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value
