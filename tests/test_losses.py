"""The from-scratch softmax + cross-entropy against the real PyTorch, option by option."""

from __future__ import annotations

import ast
import copy
import inspect
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fmnist import loss_checks, losses
from fmnist.losses import (
    CrossEntropyLoss,
    cross_entropy,
    cross_entropy_from_probs,
    log_softmax,
    softmax,
)

NUM_CLASSES = 5
EXAMPLE_LOGITS = [[-1.0, 0.5, 2.0], [-1.0, 0.5, 3.0]]
EXAMPLE_TARGETS = [1, 2]
COAT_Q = [0.1058, 0.1043, 0.0988, 0.1066, 0.0875, 0.0881, 0.1027, 0.1046, 0.1057, 0.0958]


# --------------------------------------------------------------------------------------------
# The worked examples
# --------------------------------------------------------------------------------------------


def test_worked_example_from_logits():
    x = torch.tensor(EXAMPLE_LOGITS)
    t = torch.tensor(EXAMPLE_TARGETS)
    q = softmax(x, dim=1)
    expected_q = [[0.0391, 0.1753, 0.7856], [0.0166, 0.0746, 0.9088]]
    torch.testing.assert_close(q.double().round(decimals=4), torch.tensor(expected_q).double())

    per_sample = cross_entropy(x, t, reduction="none")
    # 1.741311 and 0.095674: on paper, from q rounded to 4 decimals, -log(0.9088) = 0.0956.
    assert per_sample.tolist() == pytest.approx([1.7413, 0.0956], abs=1e-4)
    paper = cross_entropy_from_probs(q.round(decimals=4), t, reduction="none")
    assert paper.round(decimals=4).tolist() == pytest.approx([1.7413, 0.0956], abs=1e-6)

    mean = cross_entropy(x, t)
    assert round(mean.item(), 4) == 0.9185
    assert mean.item() == pytest.approx(nn.CrossEntropyLoss()(x, t).item(), rel=1e-6)
    assert CrossEntropyLoss()(x, t).item() == mean.item()


def test_worked_example_from_probabilities():
    q = torch.tensor(COAT_Q)
    loss = cross_entropy_from_probs(q, torch.tensor(4))  # class 4 is Coat
    assert round(loss.item(), 4) == 2.4361
    assert loss.item() == pytest.approx(-math.log(0.0875), rel=1e-6)
    batch = cross_entropy_from_probs(q.expand(3, 10), torch.tensor([4, 4, 0]), reduction="none")
    assert batch.tolist() == pytest.approx([2.4361, 2.4361, -math.log(0.1058)], abs=1e-4)


# --------------------------------------------------------------------------------------------
# Parity with torch.nn.functional.cross_entropy: forward values and input gradients
# --------------------------------------------------------------------------------------------


SHAPES = [(NUM_CLASSES,), (4, NUM_CLASSES), (3, NUM_CLASSES, 2, 3)]
REDUCTIONS = ["none", "mean", "sum"]
# "some": a few targets equal the default ignore_index -100; "in-range": ignore_index=1, a class;
# "all": every target ignored (mean is nan in PyTorch).
IGNORE = ["no", "some", "in-range", "all"]
SMOOTHING = [0.0, 0.25, 1.0]


def _make_case(shape, target_kind, ignore, dtype, seed=0):
    """Logits, target and ignore_index for one combination of options."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    if target_kind == "probs":
        p = torch.rand(shape, generator=g, dtype=torch.float64)
        p = p / p.sum(dim=0 if len(shape) == 1 else 1, keepdim=True)
        return x, p.to(dtype), -100
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = torch.randint(0, NUM_CLASSES, target_shape, generator=g)
    ignore_index = 1 if ignore == "in-range" else -100
    if ignore == "some":
        t.view(-1)[::2] = -100
    elif ignore == "in-range" and t.dim() > 0:
        t.view(-1)[0], t.view(-1)[-1] = 1, 0  # one ignored, one not
    elif ignore == "all":
        t.fill_(ignore_index)
    return x, t, ignore_index


def _both(x, t, weight, ignore_index, reduction, smoothing, grad_output=None):
    """Loss and input gradient from ours and from PyTorch, on the same inputs."""
    results = []
    for fn in (cross_entropy, F.cross_entropy):
        xi = x.detach().clone().requires_grad_()
        loss = fn(xi, t, weight=weight, ignore_index=ignore_index, reduction=reduction,
                  label_smoothing=smoothing)  # fmt: skip
        go = torch.ones_like(loss) if grad_output is None else grad_output
        (grad,) = torch.autograd.grad(loss, xi, go)
        results.append((loss.detach(), grad))
    return results


CASES = [
    (shape, reduction, weighted, ignore, smoothing, kind)
    for shape, reduction, weighted, ignore, smoothing, kind in itertools.product(
        SHAPES, REDUCTIONS, [False, True], IGNORE, SMOOTHING, ["index", "probs"]
    )
    if not (kind == "probs" and ignore != "no")  # probability targets have no ignore_index
    if not (len(shape) == 1 and ignore == "some")  # one target: "some" is "all"
]


@pytest.mark.parametrize(("shape", "reduction", "weighted", "ignore", "smoothing", "kind"), CASES)
def test_parity_float64(shape, reduction, weighted, ignore, smoothing, kind):
    x, t, ignore_index = _make_case(shape, kind, ignore, torch.float64)
    weight = torch.linspace(0.2, 2.0, NUM_CLASSES, dtype=torch.float64) if weighted else None
    (ours, ours_grad), (theirs, their_grad) = _both(
        x, t, weight, ignore_index, reduction, smoothing
    )
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-7, atol=1e-12)
    if ignore == "all" and reduction == "mean":
        assert ours.isnan()  # as PyTorch: a mean over no samples


LOW_PRECISION = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=4e-2),
}


@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=str)
@pytest.mark.parametrize(
    ("reduction", "weighted", "ignore", "smoothing", "kind"),
    [
        ("mean", False, "no", 0.0, "index"),  # the training loop's fast path
        ("none", False, "no", 0.0, "index"),
        ("sum", True, "some", 0.1, "index"),
        ("mean", True, "in-range", 0.25, "index"),
        ("mean", False, "no", 0.0, "probs"),
        ("none", True, "no", 0.2, "probs"),
    ],
)
def test_parity_other_dtypes(dtype, reduction, weighted, ignore, smoothing, kind):
    x, t, ignore_index = _make_case((6, NUM_CLASSES, 2), kind, ignore, dtype, seed=1)
    weight = torch.linspace(0.5, 1.5, NUM_CLASSES, dtype=dtype) if weighted else None
    (ours, ours_grad), (theirs, their_grad) = _both(
        x, t, weight, ignore_index, reduction, smoothing
    )
    assert ours.dtype == theirs.dtype == dtype and ours_grad.dtype == dtype
    torch.testing.assert_close(ours, theirs, **LOW_PRECISION[dtype])
    torch.testing.assert_close(ours_grad, their_grad, **LOW_PRECISION[dtype])
    if dtype in (torch.float16, torch.bfloat16):
        # Computed in float32 inside, ours is the exact value correctly rounded to the dtype
        # (within a float32 error): at most half a unit in the last place from exact.
        w64 = None if weight is None else weight.double()
        t64 = t.double() if kind == "probs" else t
        x64 = x.double().requires_grad_()
        exact = F.cross_entropy(x64, t64, weight=w64, ignore_index=ignore_index,
                                reduction=reduction, label_smoothing=smoothing)  # fmt: skip
        (exact_grad,) = torch.autograd.grad(exact, x64, torch.ones_like(exact))
        info = torch.finfo(dtype)
        for value, reference in ((ours, exact), (ours_grad, exact_grad)):
            error = (value.double() - reference).abs()
            assert (error <= 0.51 * info.eps * reference.abs() + info.tiny * info.eps).all()


def test_fast_path_is_taken_and_matches():
    """The common case runs the lean Function; the general one gives the same numbers."""
    x, t, _ = _make_case((8, NUM_CLASSES), "index", "no", torch.float32)
    x.requires_grad_()
    fast = cross_entropy(x, t)
    general = cross_entropy(x, t, label_smoothing=0.0, weight=torch.ones(NUM_CLASSES))
    assert type(fast.grad_fn).__name__ == "_MeanCrossEntropyBackward"
    assert type(general.grad_fn).__name__ == "_ClassIndexCrossEntropyBackward"
    torch.testing.assert_close(fast, general)
    torch.testing.assert_close(torch.autograd.grad(fast, x)[0], torch.autograd.grad(general, x)[0])


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_expanded_and_noncontiguous_grad_output(smoothing):
    x, t, _ = _make_case((4, NUM_CLASSES, 3), "index", "no", torch.float64)
    expanded = torch.tensor(2.0, dtype=torch.float64).expand(4, 3)
    strided = torch.randn(3, 4, dtype=torch.float64).t()  # non-contiguous (4, 3)
    for go in (expanded, strided):
        (_, ours_grad), (_, their_grad) = _both(x, t, None, -100, "none", smoothing, go)
        torch.testing.assert_close(ours_grad, their_grad, rtol=1e-7, atol=1e-12)
    # loss.sum().backward() hands the Function an expanded grad_output too.
    xi = x.clone().requires_grad_()
    cross_entropy(xi, t, reduction="none", label_smoothing=smoothing).sum().backward()
    xt = x.clone().requires_grad_()
    F.cross_entropy(xt, t, reduction="none", label_smoothing=smoothing).sum().backward()
    torch.testing.assert_close(xi.grad, xt.grad, rtol=1e-7, atol=1e-12)


def test_noncontiguous_input_and_repeated_backward():
    base = torch.randn(NUM_CLASSES, 6, dtype=torch.float64)
    x = base.t().requires_grad_()  # (6, C), non-contiguous
    t = torch.randint(0, NUM_CLASSES, (6,))
    loss = cross_entropy(x, t)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)  # saved tensors were not modified by backward
    (theirs,) = torch.autograd.grad(F.cross_entropy(x, t), x)
    torch.testing.assert_close(first, theirs, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(second, first)


def test_probability_target_and_weight_gradients_match_pytorch():
    x, p, _ = _make_case((4, NUM_CLASSES), "probs", "no", torch.float64)
    grads = []
    for fn in (cross_entropy, F.cross_entropy):
        xi, pi = x.clone().requires_grad_(), p.clone().requires_grad_()
        w = torch.linspace(0.5, 2, NUM_CLASSES, dtype=torch.float64).requires_grad_()
        loss = fn(xi, pi, weight=w, label_smoothing=0.1)
        grads.append(torch.autograd.grad(loss, (xi, pi, w)))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-12)


def test_autocast_bfloat16_training_step():
    """As in the training loop: model under bf16 autocast on CPU, loss on logits cast to float32."""
    torch.manual_seed(0)
    model = nn.Linear(12, NUM_CLASSES)
    x, t = torch.randn(16, 12), torch.randint(0, NUM_CLASSES, (16,))
    results = []
    for fn in (cross_entropy, F.cross_entropy):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            assert logits.dtype == torch.bfloat16
            loss32 = fn(logits.float(), t, label_smoothing=0.1)
            loss16 = fn(logits, t)  # bf16 logits straight in: autocast makes it float32
        assert loss32.dtype == loss16.dtype == torch.float32
        assert fn(logits.detach(), t).dtype == torch.bfloat16  # outside autocast: input dtype
        (loss32 + loss16.float()).backward()
        results.append((loss32.detach(), loss16.detach(), model.weight.grad.clone()))
    (a32, a16, a_grad), (b32, b16, b_grad) = results
    torch.testing.assert_close(a32, b32, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a16, b16, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a_grad, b_grad, rtol=2e-2, atol=2e-3)


# --------------------------------------------------------------------------------------------
# gradcheck: the analytic backward against finite differences, float64, every option
# --------------------------------------------------------------------------------------------


GRADCHECK_CASES = [
    (shape, reduction, weighted, ignore, smoothing, kind)
    for shape, reduction, weighted, ignore, smoothing, kind in itertools.product(
        [(NUM_CLASSES,), (3, NUM_CLASSES), (2, NUM_CLASSES, 2)],
        REDUCTIONS,
        [False, True],
        ["no", "some", "in-range"],
        [0.0, 0.3],
        ["index", "probs"],
    )
    if not (kind == "probs" and ignore != "no")
    if not (len(shape) == 1 and ignore != "no")  # all ignored: the mean is nan
]


@pytest.mark.parametrize(
    ("shape", "reduction", "weighted", "ignore", "smoothing", "kind"), GRADCHECK_CASES
)
def test_gradcheck(shape, reduction, weighted, ignore, smoothing, kind):
    x, t, ignore_index = _make_case(shape, kind, ignore, torch.float64, seed=2)
    weight = torch.linspace(0.5, 2.0, NUM_CLASSES, dtype=torch.float64) if weighted else None
    x.requires_grad_()
    inputs = [x]
    if kind == "probs":  # probability targets (and their weights) are differentiable too
        t.requires_grad_()
        inputs.append(t)
        if weighted:
            weight.requires_grad_()
            inputs.append(weight)

    def loss(*args):  # args: the differentiable leading part of (x, t, weight)
        xx, tt, ww = (*args, *(t, weight)[len(args) - 1 :])
        return cross_entropy(xx, tt, weight=ww, ignore_index=ignore_index,
                             reduction=reduction, label_smoothing=smoothing)  # fmt: skip

    assert torch.autograd.gradcheck(loss, tuple(inputs), eps=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Softmax, and stability at large logits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_softmax_and_log_softmax_match_pytorch(dim, dtype):
    x = (torch.randn(4, 6, 3, dtype=torch.float64) * 5).to(dtype)
    tol = {
        torch.float64: dict(rtol=1e-12, atol=1e-12),
        torch.float32: dict(rtol=1e-5, atol=1e-6),
        torch.bfloat16: dict(rtol=1.6e-2, atol=8e-3),  # one bf16 rounding apart
    }[dtype]
    torch.testing.assert_close(softmax(x, dim), torch.softmax(x, dim), **tol)
    torch.testing.assert_close(log_softmax(x, dim), torch.log_softmax(x, dim), **tol)
    assert softmax(x, dim).sum(dim).double().sub(1).abs().max() < 1e-2


def test_softmax_and_log_softmax_gradients():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: softmax(x, 1), (x,))
    assert torch.autograd.gradcheck(lambda x: log_softmax(x, 0), (x,))


def test_large_logits_are_stable_where_naive_softmax_is_nan():
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4 - 2, -1e4]])
    t = torch.tensor([0, 2, 1])
    naive = x.exp() / x.exp().sum(1, keepdim=True)  # exp(1e4) = inf in float32, inf/inf = nan
    assert naive.isnan().any()

    q = softmax(x, dim=1)
    assert q.isfinite().all()
    torch.testing.assert_close(q, torch.softmax(x, 1))
    torch.testing.assert_close(log_softmax(x, 1), torch.log_softmax(x, 1))

    xi = x.clone().requires_grad_()
    for reduction in REDUCTIONS:
        for smoothing in (0.0, 0.1):
            (ours, ours_grad), (theirs, their_grad) = _both(x, t, None, -100, reduction, smoothing)
            assert ours.isfinite().all() and ours_grad.isfinite().all()
            torch.testing.assert_close(ours, theirs)
            torch.testing.assert_close(ours_grad, their_grad)
    assert cross_entropy(xi, t).isfinite()


# --------------------------------------------------------------------------------------------
# Errors: clear one-line messages
# --------------------------------------------------------------------------------------------


X = torch.randn(4, 10)
T = torch.tensor([0, 3, 9, 1])

ERRORS = [
    (
        lambda: cross_entropy(X, torch.tensor([0, 12, 9, 1])),
        ValueError,
        r"^target 12 is out of range: class indices must be in \[0, 9\] \(or ignore_index=-100\)$",
    ),
    (
        lambda: cross_entropy(X, torch.tensor([0, -1, 9, 1])),
        ValueError,
        r"target -1 is out of range",
    ),
    (
        lambda: cross_entropy(X, torch.tensor([0, 10, -100, 1]), ignore_index=-100),
        ValueError,
        r"target 10 is out of range",
    ),
    (
        lambda: cross_entropy(X, T[:3]),
        ValueError,
        r"target has shape \(3,\) but input needs \(4,\)",
    ),
    (
        lambda: cross_entropy(torch.randn(2, 10, 3), torch.zeros(2, 4, dtype=torch.long)),
        ValueError,
        r"target has shape \(2, 4\) but input needs \(2, 3\)",
    ),
    (lambda: cross_entropy(X, T.float()), TypeError, r"class-index targets must be int64"),
    (
        lambda: cross_entropy(X, T.int()),
        TypeError,
        r"must be int64 \(torch.long\), got torch.int32",
    ),
    (
        lambda: cross_entropy(X, torch.zeros(4, 10, dtype=torch.long)),
        TypeError,
        r"read as class probabilities and must be floating point",
    ),
    (lambda: cross_entropy(X.long(), T), TypeError, r"input must be a floating-point tensor"),
    (lambda: cross_entropy(torch.tensor(1.0), T), ValueError, r"input is a scalar"),
    (lambda: cross_entropy(X, [0, 1, 2, 3]), TypeError, r"target must be a tensor, got list"),
    (
        lambda: cross_entropy(X, T, weight=torch.ones(3)),
        ValueError,
        r"^weight has 3 entries but the input has 10 classes: give one weight per class$",
    ),
    (lambda: cross_entropy(X, T, weight=torch.ones(1, 10)), ValueError, r"weight must be 1-D"),
    (
        lambda: cross_entropy(X, T, weight=torch.ones(10, requires_grad=True)),
        ValueError,
        r"weight requires grad.*pass weight.detach\(\)",
    ),
    (
        lambda: cross_entropy(X, T, label_smoothing=-0.1),
        ValueError,
        r"label_smoothing must be in \[0, 1\], got -0.1",
    ),
    (
        lambda: cross_entropy(X, T, label_smoothing=1.5),
        ValueError,
        r"label_smoothing must be in \[0, 1\], got 1.5",
    ),
    (
        lambda: cross_entropy(X, T, reduction="avg"),
        ValueError,
        r"^unknown reduction 'avg': use one of 'none', 'mean', 'sum'$",
    ),
    (
        lambda: cross_entropy(X, X.softmax(1), ignore_index=3),
        ValueError,
        r"ignore_index=3 is not supported with class-probability targets",
    ),
    (lambda: CrossEntropyLoss(reduction="avg"), ValueError, r"unknown reduction 'avg'"),
    (lambda: CrossEntropyLoss(label_smoothing=2), ValueError, r"label_smoothing must be in"),
    (lambda: CrossEntropyLoss(weight=[[1.0, 2.0]]), ValueError, r"weight must be 1-D"),
    (lambda: CrossEntropyLoss(weight=["a", 1]), TypeError, r"weight must be a tensor or a list"),
    (
        lambda: cross_entropy_from_probs(torch.tensor([0.5, 0.6]), torch.tensor(0)),
        ValueError,
        r"^probs sums to 1.1000, not 1: probabilities must sum to 1",
    ),
    (
        lambda: cross_entropy_from_probs(
            torch.tensor([[0.5, 0.5], [0.7, 0.2]]), torch.tensor([0, 1])
        ),
        ValueError,
        r"^probs row 1 sums to 0.9000, not 1",
    ),
    (
        lambda: cross_entropy_from_probs(torch.tensor([-0.5, 1.5]), torch.tensor(0)),
        ValueError,
        r"probs has a negative or nan entry",
    ),
    (
        lambda: cross_entropy_from_probs(torch.tensor([math.nan, 1.0]), torch.tensor(0)),
        ValueError,
        r"probs has a negative or nan entry",
    ),
    (
        lambda: cross_entropy_from_probs(torch.tensor(COAT_Q), torch.tensor(10)),
        ValueError,
        r"target 10 is out of range: class indices must be in \[0, 9\]",
    ),
    (  # -100 is no class: it is refused, not read as class 0 or from the end
        lambda: cross_entropy_from_probs(torch.tensor([0.2, 0.3, 0.5]), torch.tensor(-100)),
        ValueError,
        r"^target -100 is out of range: class indices must be in \[0, 2\]$",
    ),
    (
        lambda: cross_entropy_from_probs(torch.full((2, 200), 0.005), torch.tensor([3, -100])),
        ValueError,
        r"^target -100 is out of range: class indices must be in \[0, 199\]$",
    ),
    (
        lambda: cross_entropy_from_probs(torch.tensor([1, 0]), torch.tensor(0)),
        TypeError,
        r"probs must be a floating-point tensor",
    ),
    (
        lambda: cross_entropy_from_probs(torch.tensor(COAT_Q), torch.tensor(4), reduction="x"),
        ValueError,
        r"unknown reduction 'x'",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_errors_are_clear_and_one_line(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_rounded_probabilities_are_accepted():
    q = torch.tensor(COAT_Q)
    assert abs(q.sum().item() - 1) > 5e-5  # 0.9999: rounding to 4 decimals loses mass
    assert cross_entropy_from_probs(q, torch.tensor(4)).isfinite()


# --------------------------------------------------------------------------------------------
# Only elementary operations: no torch softmax, log_softmax, logsumexp, nll_loss, cross_entropy
# --------------------------------------------------------------------------------------------

FORBIDDEN = {"softmax", "log_softmax", "logsumexp", "nll_loss", "cross_entropy", "special"}


def test_source_calls_no_torch_softmax_or_loss():
    """Our own softmax/cross_entropy are plain names; torch's would be attributes (F.softmax)."""
    for module in (losses, loss_checks):
        tree = ast.parse(inspect.getsource(module))
        attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert not attributes & FORBIDDEN
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom | ast.Import)
            for alias in node.names
        }
        checks = {name for name in dir(loss_checks) if not name.startswith("_")}
        assert imported <= {
            "annotations",
            "Sequence",
            "Any",
            "overload",
            "torch",
            "Tensor",
            "nn",
            *checks,
        }


class _RecordOps(TorchDispatchMode):
    """Records the name of every aten operation run, forward and backward."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._schema.name.split("::")[-1])
        return func(*args, **(kwargs or {}))


def _forbidden_ops(ops):
    return {
        op
        for op in ops
        if any(name in op for name in ("softmax", "logsumexp", "nll_loss", "cross_entropy"))
    }


def test_runtime_runs_no_torch_softmax_or_loss_kernel():
    options = [
        dict(),
        dict(reduction="none", label_smoothing=0.2, weight=torch.rand(NUM_CLASSES) + 0.1),
        dict(reduction="sum", ignore_index=1),
    ]
    for kwargs in options:
        for kind in ("index", "probs"):
            if kind == "probs" and "ignore_index" in kwargs:
                continue
            x, t, _ = _make_case((4, NUM_CLASSES, 2), kind, "no", torch.float32)
            x.requires_grad_()
            with _RecordOps() as recorder:
                loss = cross_entropy(x, t, **kwargs)
                torch.autograd.grad(loss.sum(), x)
                softmax(x.detach(), 1)
                log_softmax(x.detach(), 1)
            assert {"exp2", "exp2_"} & recorder.ops, "the recorder missed the exponentials"
            assert not _forbidden_ops(recorder.ops), _forbidden_ops(recorder.ops)
    # The recorder does see backward ops, and would see PyTorch's kernels if they were used.
    x = torch.randn(4, NUM_CLASSES, requires_grad=True)
    with _RecordOps() as recorder:
        torch.autograd.grad(cross_entropy(x, torch.tensor([0, 1, 2, 3])), x)
    assert "scatter_add_" in recorder.ops
    with _RecordOps() as recorder:
        torch.autograd.grad(F.cross_entropy(x, torch.tensor([0, 1, 2, 3])), x)
    assert _forbidden_ops(recorder.ops)


# --------------------------------------------------------------------------------------------
# The module: weight buffer, Hydra instantiation, a real training step
# --------------------------------------------------------------------------------------------


def test_module_weight_is_a_buffer_that_follows_to_and_state_dict():
    weights = [0.5, 1.0, 1.5, 2.0, 2.5]
    loss = CrossEntropyLoss(weight=weights, label_smoothing=0.1)
    assert isinstance(loss.weight, torch.Tensor) and loss.weight.dtype == torch.float32
    assert "weight" in dict(loss.named_buffers())
    assert loss.weight.tolist() == weights

    loss64 = loss.to(torch.float64)
    assert loss64.weight.dtype == torch.float64
    x, t, _ = _make_case((4, NUM_CLASSES), "index", "no", torch.float64)
    theirs = nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float64), label_smoothing=0.1
    )
    torch.testing.assert_close(loss64(x, t), theirs(x, t), rtol=1e-7, atol=0)

    state = loss.state_dict()
    assert set(state) == set(theirs.state_dict()) == {"weight"}
    fresh = CrossEntropyLoss(weight=torch.ones(NUM_CLASSES, dtype=torch.float64))
    fresh.load_state_dict(state)
    assert fresh.weight.tolist() == weights
    assert CrossEntropyLoss().state_dict() == {}  # like nn.CrossEntropyLoss() without weight
    assert CrossEntropyLoss(weight=torch.tensor([1, 2, 3])).weight.is_floating_point()
    assert "label_smoothing=0.1" in repr(loss)


def test_module_from_hydra_config_with_list_weight():
    cfg = OmegaConf.create(
        {
            "_target_": "fmnist.losses.CrossEntropyLoss",
            "weight": [1.0, 2.0, 1.0, 0.5, 1.0],
            "label_smoothing": 0.1,
            "ignore_index": -100,
        }
    )
    loss = instantiate(cfg)
    assert isinstance(loss, CrossEntropyLoss)
    x, t, _ = _make_case((6, NUM_CLASSES), "index", "some", torch.float32)
    theirs = nn.CrossEntropyLoss(
        weight=torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0]), label_smoothing=0.1
    )
    torch.testing.assert_close(loss(x, t), theirs(x, t), rtol=1e-5, atol=1e-6)
    # A ListConfig given directly works as well.
    direct = CrossEntropyLoss(weight=OmegaConf.create([1.0, 2.0, 1.0, 0.5, 1.0]))
    assert direct.weight.tolist() == [1.0, 2.0, 1.0, 0.5, 1.0]


def _tiny_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )


@pytest.mark.parametrize(
    "options",
    [dict(), dict(label_smoothing=0.1, weight=[1.0, 2.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 3.0])],
    ids=["plain", "smoothing+weight"],
)
def test_training_step_gives_the_same_gradients_as_pytorch(options):
    torch.manual_seed(0)
    ours_model = _tiny_cnn()
    their_model = copy.deepcopy(ours_model)
    images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    weight = options.get("weight")
    ours_loss = CrossEntropyLoss(**options)
    their_options = {**options, "weight": None if weight is None else torch.tensor(weight)}
    their_loss = nn.CrossEntropyLoss(**their_options)

    for model, criterion in ((ours_model, ours_loss), (their_model, their_loss)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        model.grads = grads

    for ours, theirs in zip(ours_model.grads, their_model.grads, strict=True):
        assert ours.abs().sum() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    for ours, theirs in zip(ours_model.parameters(), their_model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
