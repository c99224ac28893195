"""The checks of `fmnist.losses`' arguments: a clear one-line error naming the problem and the
fix, where PyTorch's kernels would fail deep inside, or silently compute something else."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fmnist.i18n import Text

REDUCTIONS = ("none", "mean", "sum")
# Probabilities rounded to 4 decimals (as printed) sum to 1 only within about 1e-3.
PROB_SUM_TOLERANCE = 1e-3


def check_options(reduction: str, label_smoothing: float) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: use one of 'none', 'mean', 'sum'")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")


def as_weight(weight: Tensor | Sequence[float] | None) -> Tensor | None:
    """A 1-D float tensor of class weights from a tensor, list or Hydra ListConfig (or None)."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        try:
            weight = torch.tensor(list(weight), dtype=torch.get_default_dtype())
        except (TypeError, ValueError):
            raise TypeError(
                f"weight must be a tensor or a list of numbers, got {weight!r}"
            ) from None
    elif not weight.is_floating_point():
        weight = weight.to(torch.get_default_dtype())
    if weight.dim() != 1:
        raise ValueError(
            f"weight must be 1-D (one weight per class), got shape {tuple(weight.shape)}"
        )
    return weight


def check_weight(weight: Tensor | None, num_classes: int) -> None:
    if weight is not None and weight.numel() != num_classes:
        raise ValueError(
            f"weight has {weight.numel()} entries but the input has {num_classes} classes: "
            f"give one weight per class"
        )


def check_class_targets(
    target: Tensor, expected_shape: tuple[int, ...], num_classes: int, ignore_index: int | None
) -> Tensor | None:
    """Validate class-index targets; return the mask of ignored targets (None if there are none).

    `ignore_index=None`: no target is ignored, so every one must be a class (a -100 would
    otherwise index from the end of the classes, or past them).
    """
    if target.dtype not in (torch.int64, torch.uint8):
        raise TypeError(
            f"class-index targets must be int64 (torch.long), got {target.dtype}; for class "
            f"probabilities give a float target with the same shape as the input"
        )
    if tuple(target.shape) != expected_shape:
        raise ValueError(
            f"target has shape {tuple(target.shape)} but input needs {expected_shape} "
            f"(one class index per sample) or the input's own shape (class probabilities)"
        )
    if target.numel() == 0:
        return None
    lo, hi = (v.item() for v in torch.aminmax(target))
    ignores_a_class = ignore_index is not None and 0 <= ignore_index < num_classes
    if lo >= 0 and hi < num_classes and not ignores_a_class:
        return None  # the common case: every target valid, none ignored
    if ignore_index is None:
        ignored = torch.zeros_like(target, dtype=torch.bool)
    else:
        ignored = target == ignore_index
    bad = ~ignored & ((target < 0) | (target >= num_classes))
    if bad.any():
        value = target[bad][0].item()
        allowed = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(
            f"target {value} is out of range: class indices must be in "
            f"[0, {num_classes - 1}]{allowed}"
        )
    return ignored if ignored.any() else None


def describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__


def check_distribution(q: Tensor, where: str) -> None:
    """Each row of q must be a probability distribution, or the loss means nothing."""
    bad = torch.isnan(q).any(1) | (q < 0).any(1)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(Text("probs.error.negative", where=where.format(row=row)))
    sums = q.double().sum(1)
    off = (sums - 1).abs() > PROB_SUM_TOLERANCE
    if off.any():
        row = int(off.nonzero()[0, 0])
        total = f"{sums[row].item():.4f}"
        raise ValueError(Text("probs.error.sum", where=where.format(row=row), total=total))
