"""Speed and accuracy measurements, side by side on one machine (`scripts/benchmark.py`).

Every figure is a median of several repeats after a warm-up: these machines are noisy, and a
ratio of two figures taken in the same run means more than either figure alone.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fmnist.config import validate
from fmnist.engine import Position, train_epoch
from fmnist.errors import reports_user_errors
from fmnist.losses import cross_entropy
from fmnist.train import bf16_is_fast, build

PROJECT = Path(__file__).resolve().parent.parent
CONFIGS, SCRIPTS = PROJECT / "configs", PROJECT / "scripts"
# The textbook pipeline: torchvision dataset + ToTensor/Normalize + DataLoader, float32, NCHW.
STANDARD = (
    "data.loader=torch",
    "trainer.precision=32",
    "trainer.channels_last=false",
    "loss=torch",
)

DEFAULT_LOSS_SHAPES = ((256, 10), (4096, 10), (1024, 1000))


def _time_per_call_us(fn: Callable[[], object], repeats: int, number: int) -> float:
    """Median over `repeats` runs of the mean time of `number` calls, in microseconds."""
    for _ in range(max(1, number // 4)):  # warm up: allocator, caches, lazy initialisation
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(runs)


def loss_timings(
    shapes: Sequence[tuple[int, int]] = DEFAULT_LOSS_SHAPES,
    repeats: int = 7,
    number: int = 200,
    seed: int = 0,
) -> list[dict]:
    """Forward + backward time of our `cross_entropy` vs `F.cross_entropy` on (N, C) logits.

    Both run the training-loop case (class-index targets, mean reduction) and compute the
    gradient with respect to the logits. The two are interleaved run by run, so drifts in
    machine load hit both alike. Returns one row per shape: shape, ours_us, torch_us, ratio
    (ours / torch; below 1 means ours is faster).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n, c in shapes:
        logits = torch.randn(n, c, generator=generator).requires_grad_()
        target = torch.randint(0, c, (n,), generator=generator)

        def ours(logits=logits, target=target):
            return torch.autograd.grad(cross_entropy(logits, target), logits)

        def theirs(logits=logits, target=target):
            return torch.autograd.grad(F.cross_entropy(logits, target), logits)

        ours_runs, torch_runs = [], []
        for _ in range(repeats):
            ours_runs.append(_time_per_call_us(ours, 1, number))
            torch_runs.append(_time_per_call_us(theirs, 1, number))
        ours_us, torch_us = statistics.median(ours_runs), statistics.median(torch_runs)
        rows.append(
            {
                "shape": (n, c),
                "ours_us": round(ours_us, 2),
                "torch_us": round(torch_us, 2),
                "ratio": round(ours_us / torch_us, 3),
            }
        )
    return rows


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """The training config, as `scripts/train.py` would compose it with these overrides."""
    if GlobalHydra.instance().is_initialized():  # inside scripts/benchmark.py: same configs/
        cfg = compose("train", overrides=list(overrides))
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
            cfg = compose("train", overrides=list(overrides))
    validate(cfg)
    return cfg


class _NoEvents:
    """Stands in for TensorBoard where only the loop's speed or losses matter."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def scalars(self, step: int, **values: float) -> None:
        self.losses.append(values["train_loss"])


def training_throughput(overrides: Sequence[str], steps: int, repeats: int) -> float:
    """Median training images/s of the real loop (`engine.train_epoch`) over `steps` batches."""
    batch_size = compose_train(overrides).data.batch_size
    cfg = compose_train(
        [
            *overrides,
            f"data.subset={steps * batch_size}",
            "data.val_size=0",
            "trainer.progress=false",
        ]
    )
    t = build(cfg)
    seconds = []
    for epoch in range(repeats + 1):  # the first epoch warms up (allocator, oneDNN kernels)
        start = time.perf_counter()
        for _ in train_epoch(t, Position(epoch=epoch), _NoEvents(), False, False):
            pass
        seconds.append(time.perf_counter() - start)
    return steps * batch_size / statistics.median(seconds[1:])


def data_path_seconds(overrides: Sequence[str], repeats: int, subset: int | None = None) -> float:
    """Median seconds to produce one training epoch's batches, with no model at all."""
    extra = [f"data.subset={subset}"] if subset else []
    t = build(compose_train([*overrides, *extra, "trainer.progress=false"]))
    seconds = []
    for epoch in range(repeats + 1):
        start = time.perf_counter()
        for _ in t.data.train.epoch(epoch):
            pass
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def loss_agreement(steps: int, overrides: Sequence[str] = ()) -> dict:
    """Per-step training losses with loss=scratch and loss=torch (fp32, deterministic CPU)."""
    curves = {}
    for loss in ("scratch", "torch"):
        cfg = compose_train(
            [
                *overrides,
                f"loss={loss}",
                "trainer.precision=32",
                "trainer.deterministic=true",
                "trainer.device=cpu",
                "trainer.progress=false",
            ]
        )
        t, events = build(cfg), _NoEvents()
        for position in train_epoch(t, Position(), events, False, False):
            if position.step == steps:
                break
        curves[loss] = torch.tensor(events.losses)
    difference = (curves["scratch"] - curves["torch"]).abs()
    first_over = (difference > 1e-5).nonzero()
    return {
        "steps": len(difference),
        "max_abs_difference": difference.max().item(),
        "steps_within_1e-5": first_over[0].item() if len(first_over) else len(difference),
    }


def preset_run(preset: str | None, timeout: float) -> dict:
    """Wall time of a whole `scripts/train.py` process (start to finish) and its test accuracy."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable,
            str(SCRIPTS / "train.py"),
            "trainer.progress=false",
            f"hydra.run.dir={run_dir}",
        ]
        command += [f"experiment={preset}"] if preset else []
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)
        wall = time.perf_counter() - start
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"preset": preset or "default", "wall_seconds": round(wall, 1), **metrics}


def machine() -> dict:
    """What the figures were measured on."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "bf16_fast": bf16_is_fast(torch.device("cpu")),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def table(results: dict) -> str:
    """The figures as a plain-text table."""
    train, data = results["training_images_per_second"], results["data_path_seconds_per_epoch"]
    rows = [
        ("", "standard", "fmnist", "ratio"),
        ("training images/s", train["standard_pipeline"], train["fmnist"], f"x{train['speedup']}"),
        (
            "  same, fmnist with loss=torch",
            "",
            train["fmnist_with_torch_loss"],
            f"scratch/torch {train['scratch_vs_torch_loss']}",
        ),
        (
            f"data path s/epoch ({data['samples']} images)",
            data["standard_pipeline"],
            data["fmnist"],
            f"x{data['speedup']}",
        ),
    ]
    rows += [
        (f"loss fwd+bwd us {tuple(row['shape'])}", row["torch_us"], row["ours_us"], row["ratio"])
        for row in results["loss_forward_backward_us"]
    ]
    if "loss_agreement" in results:
        agreement = results["loss_agreement"]
        rows.append(
            (
                f"scratch vs torch, {agreement['steps']} steps",
                "max |diff|",
                f"{agreement['max_abs_difference']:.2e}",
                f"{agreement['steps_within_1e-5']} within 1e-5",
            )
        )
    rows += [
        (
            f"preset {row['preset']}",
            f"{row['wall_seconds']} s",
            f"test acc {row['test_acc']:.4f}",
            "",
        )
        for row in results["presets"]
    ]
    return "\n".join(f"{a:42s} {b!s:>12s} {c!s:>14s}   {d}" for a, b, c, d in rows)


@reports_user_errors
def main(cfg: DictConfig) -> dict:
    """`scripts/benchmark.py`: measure, print a table, write benchmark.json to the run dir."""
    # Rounded as reported, so the ratios are those of the figures printed beside them.
    standard = round(training_throughput(STANDARD, cfg.steps, cfg.repeats))
    ours = round(training_throughput((), cfg.steps, cfg.repeats))
    ours_torch_loss = round(training_throughput(("loss=torch",), cfg.steps, cfg.repeats))
    standard_s = data_path_seconds(STANDARD, cfg.repeats, cfg.data_subset)
    ours_s = data_path_seconds((), cfg.repeats, cfg.data_subset)
    results: dict = {
        "machine": machine(),
        "training_images_per_second": {
            "standard_pipeline": standard,
            "fmnist": ours,
            "speedup": round(ours / standard, 2),
            "fmnist_with_torch_loss": ours_torch_loss,
            "scratch_vs_torch_loss": round(ours / ours_torch_loss, 3),
        },
        "data_path_seconds_per_epoch": {
            "samples": cfg.data_subset or 55000,
            "standard_pipeline": round(standard_s, 3),
            "fmnist": round(ours_s, 4),
            "speedup": round(standard_s / ours_s, 1),
        },
        "loss_forward_backward_us": loss_timings(
            [tuple(shape) for shape in cfg.loss_shapes], cfg.repeats, cfg.loss_calls
        ),
        "presets": [
            preset_run(None if preset == "default" else preset, cfg.preset_timeout)
            for preset in cfg.presets
        ],
    }
    if cfg.agreement_steps:
        results["loss_agreement"] = loss_agreement(cfg.agreement_steps, cfg.agreement_overrides)

    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"machine: {results['machine']}")
    print(table(results))
    print(f"wrote {out / 'benchmark.json'}")
    return results
