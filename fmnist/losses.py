"""Softmax and cross-entropy from scratch, a drop-in for PyTorch's.

The story
---------
A classifier ends in C raw scores per image, the *logits* x_1..x_C. They can be any real
numbers, so we turn them into a predicted distribution q with the *softmax*:

    q_c = exp(x_c) / sum_k exp(x_k)          every q_c > 0, and sum_c q_c = 1

The truth is a distribution too: p, one-hot on the true class y (p_y = 1, every other p_c = 0).
*Cross-entropy* measures the gap between the truth p and the prediction q:

    H(p, q) = -sum_c p_c * log(q_c)  =  -log(q_y)      (for a one-hot p)

It is 0 when q puts all its mass on y and grows without bound as q_y -> 0. Over a batch of N
samples the loss is the mean, loss = -mean_i log(q_i[y_i]).

Worked example: logits [-1, 0.5, 2] with target 1 give q = [0.0391, 0.1753, 0.7856] and
loss -log(0.1753) = 1.7413; logits [-1, 0.5, 3] with target 2 give q = [0.0166, 0.0746, 0.9088]
and loss 0.0956; the batch loss is their mean, 0.9185.

Why subtract the max first
--------------------------
exp(1e4) overflows float32 to inf, and inf / inf is nan. Softmax does not change when the same m
is subtracted from every logit (the factor exp(-m) cancels between top and bottom), so we take
m = max_k x_k. Then every shifted logit is <= 0, every exp is in (0, 1], and the sum is >= 1
(the max contributes exp(0) = 1), so nothing overflows and log never sees 0:

    log q_c = (x_c - m) - log(sum_k exp(x_k - m))          (the "log-sum-exp trick")

The gradient
------------
d(-log q_y)/dx_c = q_c - p_c: "softmax minus one-hot", divided by N for the mean. We write this
backward pass ourselves (a `torch.autograd.Function`) instead of letting autograd differentiate
through exp, sum and log: it is the textbook formula, and it is cheaper.

The options of torch.nn.CrossEntropyLoss, all supported with the same meaning
------------------------------------------------------------------------------
- weight w_c: sample i counts w[y_i] times; the mean divides by sum_i w[y_i] (a weighted mean).
- ignore_index: samples whose target equals it add 0 and are not counted in the mean.
- label_smoothing eps: the target becomes (1 - eps) * one-hot + eps / C on every class. With
  weights, PyTorch weights the uniform part class by class: eps/C * sum_c w_c * (-log q_c).
- class-probability targets (same shape as the input): p is given directly, any weights
  multiply it class by class, and the mean divides by the number of samples, not by weights.

Every case is loss_i = -sum_c a_ic * log q_ic for a "weighted target" a_i, whose gradient is
dloss_i/dx_i = q_i * sum_c a_ic - a_i; for a plain one-hot target that is q_i - p_i again.

Only elementary tensor operations are used (max, subtract, exp, sum, log, gather, multiply):
no torch softmax, log-softmax, log-sum-exp, NLL or cross-entropy function. (exp is computed as
2 ** (z * log2(e)), for speed: see `_exp_`.)

Drop-in details: half and bfloat16 logits are computed in float32 and the loss is returned in
their dtype (under autocast, in float32), as PyTorch does. The training loop's case (class
indices, no weight or smoothing, mean) has its own lean Function, `_MeanCrossEntropy`; every
other case goes through `_ClassIndexCrossEntropy` or `_ProbTargetCrossEntropy`. Bad arguments
get one clear line from the checks in fmnist/loss_checks.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import torch
from torch import Tensor, nn

from fmnist.loss_checks import (
    as_weight,
    check_class_targets,
    check_distribution,
    check_options,
    check_weight,
    describe,
)

# Half and bfloat16 are computed in float32 (as PyTorch's kernels do) and returned in their dtype.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Softmax
# --------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half and bfloat16 (too coarse for exp and sums), else the dtype itself."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


LOG2_E = 1.4426950408889634  # log2(e)


def _exp_(z: Tensor) -> Tensor:
    """exp(z), in place, computed as 2 ** (z * log2(e)): the same number, up to float rounding.

    Why not z.exp_()? PyTorch's exp2 kernel is vectorised on every CPU, while its exp is 2-3x
    slower on some (this project's AVX-512 machine), and this is the loss's hot loop.
    """
    return z.mul_(LOG2_E).exp2_()


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """q = exp(x - max) / sum(exp(x - max)) along `dim`: logits -> probabilities.

    Shifting by the max makes every exponent <= 0, so large logits cannot overflow.
    Half and bfloat16 inputs are computed in float32 and returned in their own dtype.
    """
    xc = x.to(_compute_dtype(x.dtype))
    e = _exp_(xc - xc.amax(dim, keepdim=True))  # exp(x_c - m), in (0, 1]
    return (e / e.sum(dim, keepdim=True)).to(x.dtype)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """log q = (x - m) - log(sum(exp(x - m))) along `dim`, with m the max (log-sum-exp trick).

    Computed directly rather than as log(softmax(x)): a tiny q_c would round to 0 and its log
    to -inf, while (x_c - m) - log(sum) stays finite.
    """
    xc = x.to(_compute_dtype(x.dtype))
    shifted = xc - xc.amax(dim, keepdim=True)
    return (shifted - _exp_(shifted.clone()).sum(dim, keepdim=True).log()).to(x.dtype)


def _broadcast_weight(weight: Tensor, ndim: int) -> Tensor:
    """View the (C,) weight as (1, C, 1, ..., 1) so it multiplies (N, C, d1, ..., dk) tensors."""
    return weight.view(1, -1, *([1] * (ndim - 2)))


def _shifted_logits(x: Tensor) -> Tensor:
    """x - max over the class dim 1, in at least float32: the start of every softmax."""
    x = x.to(_compute_dtype(x.dtype))
    return x - x.amax(1, keepdim=True)


def _reduce_grad(
    grad_output: Tensor, reduction: str, denominator: Tensor | float, dtype: torch.dtype
) -> Tensor:
    """dloss/dloss_i per sample: g (sum), g / denominator (mean), or g_i with a class dim (none)."""
    g = grad_output.to(dtype)
    if reduction == "none":
        return g.unsqueeze(1)  # (N, 1, d1, ...): broadcasts over classes; fine if g is expanded
    if reduction == "mean":
        # PyTorch's gradient is 0, not nan, when the mean is over nothing (all targets ignored).
        if isinstance(denominator, Tensor):
            return torch.where(denominator == 0, 0.0, g / denominator)
        return g / denominator if denominator else g * 0.0
    return g


# --------------------------------------------------------------------------------------------
# Cross-entropy with class-index targets
# --------------------------------------------------------------------------------------------


# In the Functions below, `ctx` is Any: besides autograd's own context it carries our attributes
# (ctx.reduction, ctx.eps, ...), which no torch type declares.


class _MeanCrossEntropy(torch.autograd.Function):
    """The training-loop case, kept lean: loss = mean_i -log q_i[y_i], gradient (q - p) / N.

    Class-index targets, all valid and none ignored; no weight, no smoothing; float32/float64.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, target: Tensor) -> Tensor:
        index = target.unsqueeze(1)  # (N, 1, d1, ...): where the one-hot p is 1
        shifted = x - x.amax(1, keepdim=True)  # x_c - m <= 0
        picked = shifted.gather(1, index)  # x_y - m
        e = _exp_(shifted)  # exp(x_c - m), in (0, 1]; in place, `shifted` is done with
        total = e.sum(1, keepdim=True)  # sum_k exp(x_k - m) >= 1
        loss = (total.log() - picked).mean()  # -log q_y = log(sum) - (x_y - m)
        ctx.save_for_backward(e, total, index)  # q = e / total, divided only in backward
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        e, total, index = ctx.saved_tensors
        scale = grad_output / index.numel()  # d(mean)/d(loss_i) = 1/N
        grad = e * (scale / total)  # q / N, in one pass over the (N, C) tensor ...
        grad.scatter_add_(1, index, (-scale).expand(index.shape))  # ... - p / N
        return grad, None


class _ClassIndexCrossEntropy(torch.autograd.Function):
    """Every option: loss_i = (1-eps) * w[y_i] * (-log q_i[y_i]) + eps/C * sum_c w_c * (-log q_ic).

    Input x is (N, C, d1, ..., dk) and target (N, d1, ..., dk): a "sample" is one position.
    Ignored samples (mask `ignored`) add 0 and are not counted in the mean.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        target: Tensor,
        weight: Tensor | None,
        ignored: Tensor | None,
        reduction: str,
        eps: float,
    ) -> Tensor:
        num_classes = x.shape[1]
        if ignored is not None:
            target = target.masked_fill(ignored, 0)  # any valid index: their terms are zeroed
        index = target.long().unsqueeze(1)  # (N, 1, d1, ...) for gather along the class dim

        shifted = _shifted_logits(x)  # x_c - m
        w = None if weight is None else _broadcast_weight(weight.to(shifted.dtype), x.dim())
        picked = shifted.gather(1, index)  # x_y - m
        if eps > 0:  # sum_c w_c (x_c - m), for the smoothing term, before `shifted` is reused
            smooth = _times(shifted, w).sum(1, keepdim=True)
        e = _exp_(shifted)  # exp(x_c - m), in place: the shifted logits are no longer needed
        total = e.sum(1, keepdim=True)  # sum_k exp(x_k - m) >= 1
        log_total = total.log()
        nll = log_total - picked  # -log q_y = log(sum) - (x_y - m)
        q = e.div_(total)  # softmax, kept for backward

        # Per-sample factors (None stands for all ones): keep = 0 if ignored else 1, and
        # target_weight = w[y_i] * keep, the weight each sample's -log q_y counts with.
        keep = None if ignored is None else (~ignored).unsqueeze(1).to(q.dtype)
        w_y = None if w is None else w.view(-1)[index]
        target_weight = _times(w_y, keep)
        loss = _times(nll, target_weight)
        class_sum = num_classes if w is None else w.sum()  # sum_c w_c
        if eps > 0:
            smooth_loss = _times(class_sum * log_total - smooth, keep)  # sum_c w_c (-log q_c)
            loss = (1 - eps) * loss + (eps / num_classes) * smooth_loss

        # The mean divides by the number of counted samples, or the sum of their weights.
        denominator = nll.numel() if target_weight is None else target_weight.sum()
        ctx.save_for_backward(q, index, target_weight, keep, w)
        ctx.reduction, ctx.eps, ctx.class_sum = reduction, eps, class_sum
        ctx.denominator, ctx.input_dtype = denominator, x.dtype
        if reduction == "none":
            out = loss.squeeze(1)
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss.sum() / denominator  # nan when every target is ignored, like PyTorch
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None, None, None]:
        q, index, target_weight, keep, w = ctx.saved_tensors
        eps, num_classes = ctx.eps, q.shape[1]
        g = _reduce_grad(grad_output, ctx.reduction, ctx.denominator, q.dtype)

        # grad = g * (q * A - a) for the weighted target a = (1-eps) * w_y * onehot(y)
        # + eps/C * w * keep, whose total is A = (1-eps) * w_y + eps/C * sum(w) * keep.
        coef_y = _times(g, target_weight)  # g * w_y
        if eps == 0:
            grad = q * coef_y
        else:
            coef_y = coef_y * (1 - eps)
            coef_smooth = _times(g, keep) * (eps / num_classes)
            grad = q * (coef_y + coef_smooth * ctx.class_sum)
            grad -= _times(coef_smooth, w)  # the uniform part of a
        grad.scatter_add_(1, index, (-coef_y).expand(index.shape))  # the one-hot part of a
        return grad.to(ctx.input_dtype), None, None, None, None, None


@overload
def _times(a: Tensor, b: Tensor | None) -> Tensor: ...
@overload
def _times(a: Tensor | None, b: Tensor) -> Tensor: ...
@overload
def _times(a: Tensor | None, b: Tensor | None) -> Tensor | None: ...
def _times(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """a * b, where None stands for ones (saves multiplying by a tensor of ones)."""
    if a is None:
        return b
    return a if b is None else a * b


# --------------------------------------------------------------------------------------------
# Cross-entropy with class-probability targets
# --------------------------------------------------------------------------------------------


class _ProbTargetCrossEntropy(torch.autograd.Function):
    """loss_i = -sum_c w_c * p'_ic * log q_ic with p' = (1-eps) * p + eps/C; mean divides by N."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, target: Tensor, weight: Tensor | None, reduction: str, eps: float
    ) -> Tensor:
        num_classes = x.shape[1]
        dtype = _compute_dtype(torch.promote_types(x.dtype, target.dtype))
        shifted = _shifted_logits(x.to(dtype))
        e = _exp_(shifted.clone())
        total = e.sum(1, keepdim=True)
        log_q = shifted.sub_(total.log())  # log q = (x - m) - log(sum), in place
        q = e.div_(total)

        p = target.to(dtype)
        if eps > 0:
            p = p * (1 - eps) + eps / num_classes
        w = None if weight is None else _broadcast_weight(weight.to(dtype), x.dim())
        a = p if w is None else p * w  # the weighted target distribution
        loss = -(a * log_q).sum(1)  # (N, d1, ...)

        positions = loss.numel()
        ctx.save_for_backward(q, a, log_q, p, w)
        ctx.reduction, ctx.eps, ctx.positions = reduction, eps, positions
        ctx.dtypes = (x.dtype, target.dtype, None if weight is None else weight.dtype)
        out_dtype = torch.promote_types(x.dtype, target.dtype)
        if reduction == "none":
            return loss.to(out_dtype)
        total_loss = loss.sum()
        if reduction == "mean":
            total_loss = total_loss / positions  # nan for an empty batch, like PyTorch
        return total_loss.to(out_dtype)

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        q, a, log_q, p, w = ctx.saved_tensors
        g = _reduce_grad(grad_output, ctx.reduction, ctx.positions, q.dtype)
        x_dtype, target_dtype, weight_dtype = ctx.dtypes
        grad_x = grad_target = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = (q * a.sum(1, keepdim=True) - a) * g  # q * A - a
            grad_x = grad_x.to(x_dtype)
        if ctx.needs_input_grad[1]:  # dloss/dp_c = -(1-eps) * w_c * log q_c
            scale = g * (1 - ctx.eps)
            grad_target = -(log_q * scale if w is None else log_q * w * scale)
            grad_target = grad_target.to(target_dtype)
        if ctx.needs_input_grad[2]:  # dloss/dw_c = -sum_i p'_ic * log q_ic
            per_class = -(p * log_q * g)
            grad_weight = per_class.transpose(0, 1).reshape(q.shape[1], -1).sum(1)
            grad_weight = grad_weight.to(weight_dtype)
        return grad_x, grad_target, grad_weight, None, None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy between logits and targets: a drop-in for torch.nn.functional.cross_entropy.

    input: logits of shape (C,), (N, C) or (N, C, d1, ..., dk); the class dimension is 1
        (0 for an unbatched (C,) input).
    target: class indices (int64) of shape (), (N) or (N, d1, ..., dk), or class probabilities
        (float) of the input's own shape.
    weight, ignore_index, reduction, label_smoothing: as in torch.nn.CrossEntropyLoss.
    """
    check_options(reduction, label_smoothing)
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor of logits, got {describe(input)}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    if input.dim() == 0:
        raise ValueError("input is a scalar: give logits of shape (C,), (N, C) or (N, C, d1, ...)")
    weight = as_weight(weight)
    if input.dtype in _LOW_PRECISION and torch.is_autocast_enabled(input.device.type):
        input = input.float()  # autocast runs cross-entropy in float32, PyTorch's included

    unbatched = input.dim() == 1
    if unbatched:
        input, target = _add_batch_dim(input, target)
    num_classes = input.shape[1]
    check_weight(weight, num_classes)

    if target.shape == input.shape:
        if not target.is_floating_point():
            raise TypeError(
                f"target has the input's shape, so it is read as class probabilities and must be "
                f"floating point, got {target.dtype}"
            )
        if ignore_index >= 0:
            raise ValueError(
                f"ignore_index={ignore_index} is not supported with class-probability targets: "
                f"leave it at -100"
            )
        loss: Tensor = _ProbTargetCrossEntropy.apply(
            input, target, weight, reduction, label_smoothing
        )
    else:
        expected = (input.shape[0], *input.shape[2:])
        ignored = check_class_targets(target, expected, num_classes, ignore_index)
        if weight is not None and weight.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "weight requires grad, but cross-entropy with class-index targets is not "
                "differentiable in its weights (as in PyTorch): pass weight.detach()"
            )
        common = weight is None and ignored is None and label_smoothing == 0
        if common and reduction == "mean" and input.dtype in (torch.float32, torch.float64):
            loss = _MeanCrossEntropy.apply(input, target.long())
        else:
            loss = _ClassIndexCrossEntropy.apply(
                input, target, weight, ignored, reduction, label_smoothing
            )
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


def _add_batch_dim(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(C,) logits -> a batch of one, (1, C); a class index () or probabilities (C,) alike."""
    num_classes = input.shape[0]
    probs = target.shape == (num_classes,) and (num_classes > 1 or target.is_floating_point())
    if target.dim() == 0 or probs:
        target = target.unsqueeze(0)
    return input.unsqueeze(0), target


class CrossEntropyLoss(nn.Module):
    """Module form of `cross_entropy`: a drop-in for torch.nn.CrossEntropyLoss.

    `weight` may be a tensor or a plain list of floats (as Hydra passes it); it is kept as a
    buffer, so it follows `.to(device/dtype)` and is saved in the state_dict.
    """

    weight: Tensor | None

    def __init__(
        self,
        weight: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        check_options(reduction, label_smoothing)
        self.register_buffer("weight", as_weight(weight))
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}"
        )


# --------------------------------------------------------------------------------------------
# The two-step form on probabilities that are already normalised
# --------------------------------------------------------------------------------------------


def cross_entropy_from_probs(probs: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """-log(q[range(m), target]): cross-entropy on probabilities q that are already a softmax.

    The textbook two-step form: pick the probability of the true class in each row, take -log.
    probs is (C,) with a scalar target, or (m, C) with m targets. Rows must be distributions
    (no negatives or nan, summing to 1 within PROB_SUM_TOLERANCE). Use `cross_entropy` on logits
    in training: it is stable where a probability underflows to 0 (then -log gives inf).
    """
    check_options(reduction, 0.0)
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise TypeError(f"probs must be a floating-point tensor, got {describe(probs)}")
    if probs.dim() not in (1, 2):
        raise ValueError(f"probs must have shape (C,) or (m, C), got {tuple(probs.shape)}")
    unbatched = probs.dim() == 1
    q = probs.unsqueeze(0) if unbatched else probs
    t = target.reshape(1) if unbatched and target.dim() == 0 else target
    check_class_targets(t, (q.shape[0],), q.shape[1], ignore_index=None)
    check_distribution(q, "probs" if unbatched else "probs row {row}")

    losses = -q[torch.arange(q.shape[0]), t.long()].log()  # -log q_i[y_i]
    if reduction == "none":
        return losses.squeeze(0) if unbatched else losses
    return losses.sum() if reduction == "sum" else losses.mean()
