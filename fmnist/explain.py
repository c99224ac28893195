"""Explain softmax + cross-entropy step by step, as a person would on paper.

The logic of `python scripts/explain.py` (configured by configs/explain.yaml). Give either logits
with targets (softmax is worked out first) or probabilities that are already normalised with
their target(s); the explanation ends by checking our result against PyTorch's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from fmnist.data import CLASSES
from fmnist.errors import UserError, reports_user_errors
from fmnist.losses import cross_entropy, cross_entropy_from_probs, softmax
from fmnist.script_configs import validate_explain

DECIMALS = 4  # probabilities and losses are shown to 4 decimals, as on paper
AGREE_TOLERANCE = 1e-6

Matrix = list[list[float]]


@reports_user_errors
def main(cfg: DictConfig) -> None:
    """Print the explanation for the input in `cfg` (`ExplainConfig`: logits, targets, probs,
    target, example)."""
    validate_explain(cfg)
    print(explain(cfg))


def explain(cfg: DictConfig | Mapping[str, Any]) -> str:
    """The whole explanation as text; raises UserError naming the fix for bad input."""
    if isinstance(cfg, DictConfig):
        cfg = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    logits, probs = cfg.get("logits"), cfg.get("probs")
    targets, target = cfg.get("targets"), cfg.get("target")
    if logits is not None and probs is not None:
        raise UserError("give either logits (with targets) or probs (with target), not both")
    if targets is not None and target is not None:
        raise UserError("give the target classes once, as targets=... or target=..., not both")
    targets = targets if targets is not None else target
    if logits is None and probs is None:
        if targets is not None:
            raise UserError(
                "targets given without logits or probs: add logits=[...] or probs=[...]"
            )
        example = cfg.get("example") or {}
        logits, targets = example.get("logits"), example.get("targets")
        if logits is None:
            raise UserError(
                "nothing to explain: give logits=[...] targets=... or probs=[...] target=..."
            )

    name = "logits" if probs is None else "probs"
    rows = _read_matrix(logits if probs is None else probs, name)
    if targets is None:
        key = "targets" if probs is None else "target"
        raise UserError(f"{name} given without {key}: add {key}=... (one class index per row)")
    labels = _read_targets(targets, len(rows), len(rows[0]))
    if probs is None:
        return explain_logits(rows, labels)
    return explain_probs(rows, labels)


# --------------------------------------------------------------------------------------------
# The two explanations
# --------------------------------------------------------------------------------------------


def explain_logits(logits: Matrix, targets: list[int]) -> str:
    """Logits -> shift by the max -> exp -> softmax q -> -sum p*log(q) per sample -> mean."""
    x = torch.tensor(logits, dtype=torch.float64)
    t = torch.tensor(targets)
    q = softmax(x, dim=1)
    n, c = x.shape
    lines = [f"Softmax + cross-entropy, step by step: {_count(n, 'sample')}, {c} classes.", ""]
    for i in range(n):
        m = max(logits[i])
        shifted = [v - m for v in logits[i]]
        exps = [math.exp(v) for v in shifted]
        lines += [
            f"Sample {i + 1}: logits x = {_list(logits[i], 'g')}, "
            f"target class {class_label(targets[i], c)}",
            f"  1. subtract the max ({m:g}) so that exp cannot overflow: "
            f"x - max = {_list(shifted, 'g')}",
            f"  2. exponentiate: exp(x - max) = {_list(exps)}, sum = {sum(exps):.{DECIMALS}f}",
            "  3. divide by the sum: softmax q = exp(x - max) / sum",
            *_distribution_lines(q[i].tolist(), targets[i], step="4. "),
            f"  5. loss = -sum_c p_c * log(q_c) = {worked_expansion(q[i].tolist(), targets[i])}",
            "",
        ]
    ours = cross_entropy(x, t)
    theirs = torch.nn.CrossEntropyLoss()(x, t)
    exact = ", ".join(
        f"{v:.6f}" if abs(v) < 1e6 else number(v)
        for v in cross_entropy(x, t, reduction="none").tolist()
    )
    lines += [
        "(Step 5 uses q rounded to 4 decimals, as on paper; the mean uses the exact q.)",
        f"Mean loss over {_count(n, 'sample')} (exact per-sample losses {exact}): "
        f"{number(ours.item())}",
        f"PyTorch, torch.nn.CrossEntropyLoss()(logits, targets): {number(theirs.item())}",
        _agreement(ours.item(), theirs.item()),
    ]
    return "\n".join(lines)


def explain_probs(probs: Matrix, targets: list[int]) -> str:
    """Probabilities q already normalised: loss = -log(q[target]) per sample, then the mean."""
    q = torch.tensor(probs, dtype=torch.float64)
    t = torch.tensor(targets)
    n, c = q.shape
    for i in range(n):
        try:
            cross_entropy_from_probs(q[i], t[i])  # checks that the row is a distribution
        except ValueError as e:
            raise UserError(f"sample {i + 1}: {e}" if n > 1 else str(e)) from None
    losses = cross_entropy_from_probs(q, t, reduction="none")
    lines = [f"Cross-entropy from probabilities: {_count(n, 'sample')}, {c} classes.", ""]
    for i in range(n):
        lines += [
            f"Sample {i + 1}: target class {class_label(targets[i], c)}",
            *_distribution_lines(probs[i], targets[i], step=""),
            f"  loss = -sum_c p_c * log(q_c) = {worked_expansion(probs[i], targets[i], losses[i])}",
            f"       = -log(q[target]) = -log({probs[i][targets[i]]:.{DECIMALS}f}) "
            f"= {number(losses[i].item())}",
            "",
        ]
    ours = losses.mean()
    theirs = torch.nn.NLLLoss()(q.log(), t)  # NLLLoss picks -log q[target] and averages
    lines += [
        f"Mean loss over {_count(n, 'sample')}: {number(ours.item())}",
        f"PyTorch, torch.nn.NLLLoss()(log(q), target): {number(theirs.item())}",
        _agreement(ours.item(), theirs.item()),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _distribution_lines(q: list[float], target: int, step: str) -> list[str]:
    """q and the one-hot p: inline for a few classes, a table with class names for Fashion-MNIST."""
    p = [int(c == target) for c in range(len(q))]
    if len(q) != len(CLASSES):
        return [
            f"     q = {_list(q)}",
            f"  {step}one-hot target p = {_list(p, 'd')}",
        ]
    lines = [f"  {step}q and the one-hot target p, per Fashion-MNIST class:"]
    for c, (name, qc) in enumerate(zip(CLASSES, q, strict=True)):
        mark = "   <- target" if p[c] else ""
        lines.append(f"       {c} {name:<12} q = {qc:.{DECIMALS}f}  p = {p[c]}{mark}")
    return lines


def expansion(q: list[float], target: int) -> str:
    """-(0*log(0.0391)+1*log(0.1753)+0*log(0.7856)): every term of -sum_c p_c * log(q_c), for
    the one-hot p of `target`, with q shown to 4 decimals as on paper."""
    shown = [round(v, DECIMALS) for v in q]
    return (
        "-("
        + "+".join(f"{int(c == target)}*log({v:.{DECIMALS}f})" for c, v in enumerate(shown))
        + ")"
    )


def worked_expansion(q: list[float], target: int, value: torch.Tensor | None = None) -> str:
    """The expansion and its value: ... = 1.7413. Without `value`, the value is worked out from
    the rounded q as written (what the reader gets by hand)."""
    shown = [round(v, DECIMALS) for v in q]
    if value is None:
        qy = shown[target]
        result = -math.log(qy) if qy > 0 else math.inf
    else:
        result = value.item()
    return f"{expansion(q, target)} = {number(result)}"


def class_label(target: int, num_classes: int) -> str:
    """`4 (Coat)` with Fashion-MNIST's 10 classes, else just `4`."""
    return f"{target} ({CLASSES[target]})" if num_classes == len(CLASSES) else str(target)


def _list(values: list[float] | list[int], fmt: str = f".{DECIMALS}f") -> str:
    """[0.0391, 0.1753, 0.7856]; with fmt "g", logits as typed: [-1, 0.5, 2]."""
    return "[" + ", ".join(format(v + 0 if fmt == "g" else v, fmt) for v in values) + "]"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def agree(ours: float, theirs: float) -> bool:
    """The one rule by which our loss and PyTorch's agree (every command and the page use it):
    within `AGREE_TOLERANCE`, or both the same infinity (a true class with q = 0)."""
    return (math.isinf(ours) and ours == theirs) or abs(ours - theirs) <= AGREE_TOLERANCE


def verdict(ours: float, theirs: float) -> str:
    """`yes (difference 2.2e-16)`, `yes (both infinite)` or `NO (difference ...)`."""
    if math.isinf(ours) and ours == theirs:
        return "yes (both infinite)"
    return f"{'yes' if agree(ours, theirs) else 'NO'} (difference {abs(ours - theirs):.1e})"


def number(value: float) -> str:
    """A loss or a logit as people write it: 4 decimals (1.7413), or 4 significant digits
    beyond a million (1e+308, not its 309 digits); `inf` as it is."""
    if abs(value) < 1e6 or not math.isfinite(value):
        return f"{value:.{DECIMALS}f}"
    return f"{value:.4g}"


def _agreement(ours: float, theirs: float) -> str:
    return f"They agree: {verdict(ours, theirs)}."


# --------------------------------------------------------------------------------------------
# Reading the input
# --------------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    # bool first: mypy does not know that bool is a Real (numbers registers it at runtime).
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)


def _read_matrix(value: object, name: str) -> Matrix:
    """One row [x1, ..., xC] or rows [[...], [...]] of finite numbers, all of the same length."""
    if not isinstance(value, list | tuple) or not value:
        raise UserError(f"{name} must be a list of numbers like [1,2,3], or a list of such rows")
    rows = value if all(isinstance(v, list | tuple) for v in value) else [value]
    for i, row in enumerate(rows, start=1):
        where = f"{name} row {i}" if len(rows) > 1 else name
        bad = [v for v in row if not _is_number(v)]
        if bad or not row:
            raise UserError(
                f"{where} must hold finite numbers, got {bad[0]!r}" if bad else f"{where} is empty"
            )
        if len(row) != len(rows[0]):
            raise UserError(
                f"{name} row {i} has {_count(len(row), 'value')} but row 1 has {len(rows[0])}: "
                f"every row needs one value per class"
            )
    if len(rows[0]) < 2:
        raise UserError(f"{name} need at least 2 classes per row, got {len(rows[0])}")
    return [[float(v) for v in row] for row in rows]


def _read_targets(value: object, num_rows: int, num_classes: int) -> list[int]:
    """One class index per row, each in [0, num_classes - 1]; a single row may give a bare int."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    targets: list[int] = []
    for t in values:
        if isinstance(t, str) and t.strip().isdigit():  # target='1': quoted, still an index
            t = int(t)
        if isinstance(t, bool) or not isinstance(t, int):
            raise UserError(f"targets must be whole class indices like 0 or [1,2], got {t!r}")
        if not 0 <= t < num_classes:
            raise UserError(
                f"target {t} is out of range: with {num_classes} classes, "
                f"targets must be in [0, {num_classes - 1}]"
            )
        targets.append(t)
    if len(targets) != num_rows:
        raise UserError(
            f"got {len(targets)} targets for {_count(num_rows, 'row')}: give one target per row"
        )
    return targets
