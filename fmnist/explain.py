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
from fmnist.i18n import Text, class_name, padded, say
from fmnist.losses import cross_entropy, cross_entropy_from_probs, softmax
from fmnist.script_configs import validate_explain

DECIMALS = 4  # probabilities and losses are shown to 4 decimals, as on paper
AGREE_TOLERANCE = 1e-6

Matrix = list[list[float]]


@reports_user_errors
def main(cfg: DictConfig) -> None:
    """Print the explanation for the input in `cfg` (`ExplainConfig`: logits, targets, probs,
    target, example; lang: en or zh)."""
    settings = validate_explain(cfg)
    print(explain(cfg, settings.lang))


def explain(cfg: DictConfig | Mapping[str, Any], lang: str = "en") -> str:
    """The whole explanation as text, in `lang` (en, zh); raises UserError naming the fix for
    bad input."""
    if isinstance(cfg, DictConfig):
        cfg = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    logits, probs = cfg.get("logits"), cfg.get("probs")
    targets, target = cfg.get("targets"), cfg.get("target")
    if logits is not None and probs is not None:
        raise UserError(Text("explain.error.both"))
    if targets is not None and target is not None:
        raise UserError(Text("explain.error.targets_twice"))
    targets = targets if targets is not None else target
    if logits is None and probs is None:
        if targets is not None:
            raise UserError(Text("explain.error.targets_alone"))
        example = cfg.get("example") or {}
        logits, targets = example.get("logits"), example.get("targets")
        if logits is None:
            raise UserError(Text("explain.error.nothing"))

    name = "logits" if probs is None else "probs"
    rows = _read_matrix(logits if probs is None else probs, name)
    if targets is None:
        key = "targets" if probs is None else "target"
        raise UserError(Text("explain.error.no_targets", name=name, key=key))
    labels = _read_targets(targets, len(rows), len(rows[0]))
    if probs is None:
        return explain_logits(rows, labels, lang)
    return explain_probs(rows, labels, lang)


# --------------------------------------------------------------------------------------------
# The two explanations
# --------------------------------------------------------------------------------------------


def explain_logits(logits: Matrix, targets: list[int], lang: str = "en") -> str:
    """Logits -> shift by the max -> exp -> softmax q -> -sum p*log(q) per sample -> mean."""
    x = torch.tensor(logits, dtype=torch.float64)
    t = torch.tensor(targets)
    q = softmax(x, dim=1)
    n, c = x.shape
    samples = _count(n, "explain.samples", lang)
    lines = [say(lang, "explain.logits.head", samples=samples, classes=c), ""]
    for i in range(n):
        m = max(logits[i])
        shifted = [v - m for v in logits[i]]
        exps = [math.exp(v) for v in shifted]
        label = class_label(targets[i], c, lang)
        lines += [
            say(lang, "explain.logits.sample", i=i + 1, logits=_list(logits[i], "g"), label=label),
            say(lang, "explain.logits.shift", max=f"{m:g}", shifted=_list(shifted, "g")),
            say(lang, "explain.logits.exp", exps=_list(exps), total=f"{sum(exps):.{DECIMALS}f}"),
            say(lang, "explain.logits.divide"),
            *_distribution_lines(q[i].tolist(), targets[i], "4. ", lang),
            say(lang, "explain.logits.loss", expansion=worked_expansion(q[i].tolist(), targets[i])),
            "",
        ]
    ours = cross_entropy(x, t)
    theirs = torch.nn.CrossEntropyLoss()(x, t)
    exact = ", ".join(
        f"{v:.6f}" if abs(v) < 1e6 else number(v)
        for v in cross_entropy(x, t, reduction="none").tolist()
    )
    lines += [
        say(lang, "explain.logits.rounded"),
        say(lang, "explain.logits.mean", samples=samples, exact=exact, mean=number(ours.item())),
        say(lang, "explain.logits.torch", value=number(theirs.item())),
        _agreement(ours.item(), theirs.item(), lang),
    ]
    return "\n".join(lines)


def explain_probs(probs: Matrix, targets: list[int], lang: str = "en") -> str:
    """Probabilities q already normalised: loss = -log(q[target]) per sample, then the mean."""
    q = torch.tensor(probs, dtype=torch.float64)
    t = torch.tensor(targets)
    n, c = q.shape
    for i in range(n):
        try:
            cross_entropy_from_probs(q[i], t[i])  # checks that the row is a distribution
        except ValueError as e:
            problem = e.args[0]
            raise UserError(
                Text("explain.error.sample", i=i + 1, problem=problem) if n > 1 else problem
            ) from None
    losses = cross_entropy_from_probs(q, t, reduction="none")
    samples = _count(n, "explain.samples", lang)
    lines = [say(lang, "explain.probs.head", samples=samples, classes=c), ""]
    for i in range(n):
        lines += [
            say(lang, "explain.probs.sample", i=i + 1, label=class_label(targets[i], c, lang)),
            *_distribution_lines(probs[i], targets[i], "", lang),
            say(
                lang,
                "explain.probs.loss",
                expansion=worked_expansion(probs[i], targets[i], losses[i]),
            ),
            say(
                lang,
                "explain.probs.pick",
                q=f"{probs[i][targets[i]]:.{DECIMALS}f}",
                loss=number(losses[i].item()),
            ),
            "",
        ]
    ours = losses.mean()
    theirs = torch.nn.NLLLoss()(q.log(), t)  # NLLLoss picks -log q[target] and averages
    lines += [
        say(lang, "explain.probs.mean", samples=samples, mean=number(ours.item())),
        say(lang, "explain.probs.torch", value=number(theirs.item())),
        _agreement(ours.item(), theirs.item(), lang),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _distribution_lines(q: list[float], target: int, step: str, lang: str) -> list[str]:
    """q and the one-hot p: inline for a few classes, a table with class names for Fashion-MNIST."""
    p = [int(c == target) for c in range(len(q))]
    if len(q) != len(CLASSES):
        one_hot = say(lang, "explain.p", step=step, p=_list(p, "d"))
        return [say(lang, "explain.q", q=_list(q)), one_hot]
    lines = [say(lang, "explain.table", step=step)]
    for c, qc in enumerate(q):
        mark = say(lang, "explain.target_mark") if p[c] else ""
        name = padded(class_name(c, CLASSES, lang), 12)
        lines.append(f"       {c} {name} q = {qc:.{DECIMALS}f}  p = {p[c]}{mark}")
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


def class_label(target: int, num_classes: int, lang: str = "en") -> str:
    """`4 (Coat)` with Fashion-MNIST's 10 classes (`4（外套）` in Chinese), else just `4`."""
    if num_classes != len(CLASSES):
        return str(target)
    return say(lang, "explain.class_label", k=target, name=class_name(target, CLASSES, lang))


def _list(values: list[float] | list[int], fmt: str = f".{DECIMALS}f") -> str:
    """[0.0391, 0.1753, 0.7856]; with fmt "g", logits as typed: [-1, 0.5, 2]."""
    return "[" + ", ".join(format(v + 0 if fmt == "g" else v, fmt) for v in values) + "]"


def _count(n: int, key: str, lang: str) -> str:
    """`1 sample`, `2 samples` (key.one, key.many)."""
    name, values = _count_key(n, key)
    return say(lang, name, **values)


def _count_key(n: int, key: str) -> tuple[str, dict[str, int]]:
    return (f"{key}.one", {}) if n == 1 else (f"{key}.many", {"n": n})


def _counted(n: int, key: str) -> Text:
    """`_count` as a `Text`, for a message that may be told in either language."""
    name, values = _count_key(n, key)
    return Text(name, **values)


def agree(ours: float, theirs: float) -> bool:
    """The one rule by which our loss and PyTorch's agree (every command and the page use it):
    within `AGREE_TOLERANCE`, or both the same infinity (a true class with q = 0)."""
    return (math.isinf(ours) and ours == theirs) or abs(ours - theirs) <= AGREE_TOLERANCE


def verdict(ours: float, theirs: float, lang: str = "en") -> str:
    """`yes (difference 2.2e-16)`, `yes (both infinite)` or `NO (difference ...)`."""
    if math.isinf(ours) and ours == theirs:
        return say(lang, "explain.verdict.infinite")
    key = "explain.verdict.yes" if agree(ours, theirs) else "explain.verdict.no"
    return say(lang, key, difference=f"{abs(ours - theirs):.1e}")


def number(value: float) -> str:
    """A loss or a logit as people write it: 4 decimals (1.7413), or 4 significant digits
    beyond a million (1e+308, not its 309 digits); `inf` as it is."""
    if abs(value) < 1e6 or not math.isfinite(value):
        return f"{value:.{DECIMALS}f}"
    return f"{value:.4g}"


def _agreement(ours: float, theirs: float, lang: str = "en") -> str:
    return say(lang, "explain.agree", verdict=verdict(ours, theirs, lang))


# --------------------------------------------------------------------------------------------
# Reading the input
# --------------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    # bool first: mypy does not know that bool is a Real (numbers registers it at runtime).
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)


def _read_matrix(value: object, name: str) -> Matrix:
    """One row [x1, ..., xC] or rows [[...], [...]] of finite numbers, all of the same length."""
    if not isinstance(value, list | tuple) or not value:
        raise UserError(Text("explain.error.not_a_list", name=name))
    rows = value if all(isinstance(v, list | tuple) for v in value) else [value]
    for i, row in enumerate(rows, start=1):
        where = Text("explain.error.row", name=name, i=i) if len(rows) > 1 else name
        bad = [v for v in row if not _is_number(v)]
        if bad:
            raise UserError(Text("explain.error.not_finite", where=where, bad=repr(bad[0])))
        if not row:
            raise UserError(Text("explain.error.empty", where=where))
        if len(row) != len(rows[0]):
            count = _counted(len(row), "explain.error.values")
            raise UserError(
                Text("explain.error.ragged", name=name, i=i, count=count, first=len(rows[0]))
            )
    if len(rows[0]) < 2:
        raise UserError(Text("explain.error.classes", name=name, n=len(rows[0])))
    return [[float(v) for v in row] for row in rows]


def _read_targets(value: object, num_rows: int, num_classes: int) -> list[int]:
    """One class index per row, each in [0, num_classes - 1]; a single row may give a bare int."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    targets: list[int] = []
    for t in values:
        if isinstance(t, str) and t.strip().isdigit():  # target='1': quoted, still an index
            t = int(t)
        if isinstance(t, bool) or not isinstance(t, int):
            raise UserError(Text("explain.error.whole", t=repr(t)))
        if not 0 <= t < num_classes:
            raise UserError(Text("explain.error.range", t=t, c=num_classes, last=num_classes - 1))
        targets.append(t)
    if len(targets) != num_rows:
        rows = _counted(num_rows, "explain.error.rows")
        raise UserError(Text("explain.error.count", n=len(targets), rows=rows))
    return targets
