"""Speed measurements, side by side on one machine (`scripts/benchmark.py`): fmnist's training
against the standard PyTorch pipeline, the data path, our loss against PyTorch's; with
`presets`, whole training runs and the time-to-accuracy table (fmnist.presets); with `photos`,
phone photos read, prepared and predicted (fmnist.photo_speed).

Every figure is a median of several repeats after a warm-up, and the things compared take turns
repeat by repeat: these machines are noisy, and a ratio of two figures taken side by side means
more than either figure alone.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from fmnist import runs
from fmnist.config import compose_train
from fmnist.engine import Position, Training, bf16_is_fast, train_epoch
from fmnist.errors import reports_user_errors
from fmnist.files import write_text_atomically
from fmnist.loaders import Loader
from fmnist.losses import cross_entropy
from fmnist.photo_speed import photo_seconds
from fmnist.presets import check_presets, preset_run, preset_summary, time_to_accuracy
from fmnist.script_configs import validate_benchmark
from fmnist.train import build

# The textbook pipeline: torchvision dataset + ToTensor/Normalize + DataLoader, float32, NCHW.
STANDARD = (
    "data.loader=torch",
    "trainer.precision=32",
    "trainer.channels_last=false",
    "loss=torch",
)


DEFAULT_LOSS_SHAPES = ((256, 10), (4096, 10), (1024, 1000))


def _interleaved_median_seconds(
    runs: dict[str, Callable[[int], object]], repeats: int
) -> dict[str, float]:
    """Median seconds of each run's call `run(round)` over `repeats` rounds after a warm-up round.

    The runs take turns round by round, so a drift in machine load (these machines share their
    cores) hits every run alike instead of whichever happened to be measured last.
    """
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):  # round 0 warms up: allocator, oneDNN kernels, workers
        for name, run in runs.items():
            start = time.perf_counter()
            run(round_)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(times[1:]) for name, times in seconds.items()}


def _consume(iterator: Iterable[object]) -> None:
    """Run an iterator to its end, keeping nothing (the itertools "consume" recipe)."""
    deque(iterator, maxlen=0)


def loss_timings(
    shapes: Sequence[tuple[int, int]] = DEFAULT_LOSS_SHAPES,
    repeats: int = 7,
    number: int = 200,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Forward + backward time of our `cross_entropy` vs `F.cross_entropy` on (N, C) logits.

    Both run the training-loop case (class-index targets, mean reduction) and compute the
    gradient with respect to the logits, `number` calls per timed run. Returns one row per
    shape: shape, ours_us, torch_us, ratio (ours / torch; below 1 means ours is faster).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n, c in shapes:
        logits = torch.randn(n, c, generator=generator).requires_grad_()
        target = torch.randint(0, c, (n,), generator=generator)

        def calls(
            loss_fn: Callable[[Tensor, Tensor], Tensor],
            logits: Tensor = logits,
            target: Tensor = target,
        ) -> Callable[[int], None]:
            return lambda _: _consume(
                torch.autograd.grad(loss_fn(logits, target), logits) for _ in range(number)
            )

        seconds = _interleaved_median_seconds(
            {"ours": calls(cross_entropy), "torch": calls(F.cross_entropy)}, repeats
        )
        ours_us, torch_us = (seconds[name] / number * 1e6 for name in ("ours", "torch"))
        rows.append(
            {
                "shape": (n, c),
                "ours_us": round(ours_us, 2),
                "torch_us": round(torch_us, 2),
                "ratio": round(ours_us / torch_us, 3),
            }
        )
    return rows


def training_throughputs(
    variants: Mapping[str, Sequence[str]], steps: int, repeats: int
) -> dict[str, float]:
    """Median training images/s of the real loop (`engine.train_epoch`) for each set of overrides.

    Each repeat is one epoch of `steps` batches; the variants' epochs are interleaved.
    """
    images: dict[str, int] = {}
    runs: dict[str, Callable[[int], object]] = {}
    for name, overrides in variants.items():
        batch_size = compose_train(overrides).data.batch_size
        images[name] = steps * batch_size
        training = build(
            compose_train(
                [
                    *overrides,
                    f"data.subset={images[name]}",
                    "data.val_size=0",
                    "trainer.progress=false",
                ]
            )
        )

        def run(epoch: int, training: Training = training) -> None:
            _consume(train_epoch(training, Position(epoch=epoch)))

        runs[name] = run
    seconds = _interleaved_median_seconds(runs, repeats)
    return {name: images[name] / seconds[name] for name in variants}


def data_path_seconds(
    variants: Mapping[str, Sequence[str]], repeats: int, subset: int | None = None
) -> dict[str, float]:
    """Median seconds to produce one training epoch's batches, with no model at all."""
    extra = [f"data.subset={subset}"] if subset else []
    runs: dict[str, Callable[[int], object]] = {}
    for name, overrides in variants.items():
        train = build(compose_train([*overrides, *extra, "trainer.progress=false"])).data.train

        def run(epoch: int, train: Loader = train) -> None:
            _consume(train.epoch(epoch))

        runs[name] = run
    return _interleaved_median_seconds(runs, repeats)


def loss_agreement(steps: int, overrides: Sequence[str] = ()) -> dict[str, Any]:
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
        losses = []
        for step in train_epoch(build(cfg), Position()):
            losses.append(step.loss)
            if step.number == steps:
                break
        curves[loss] = torch.tensor(losses)
    difference = (curves["scratch"] - curves["torch"]).abs()
    first_over = (difference > 1e-5).nonzero()
    return {
        "steps": len(difference),
        "max_abs_difference": difference.max().item(),
        "steps_within_1e-5": first_over[0].item() if len(first_over) else len(difference),
    }


def machine() -> dict[str, Any]:
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


def table(results: dict[str, Any]) -> str:
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
            f"preset {row['preset']} ({row['runs']} run{'s' * (row['runs'] > 1)})",
            f"{row['wall_seconds']:.1f} s",
            f"{row['test_acc']:.2%} ± {row['test_acc_std']:.2%}",
            f"training {row['train_seconds']:.1f} s",
        )
        for row in results["presets"]
    ]
    rows += [
        (
            f"time to {row['target']:.0%} test accuracy",
            f"{row['wall_seconds']:.1f} s" if "preset" in row else "",
            row.get("preset", "not reached"),
            f"training {row['train_seconds']:.1f} s" if "preset" in row else "",
        )
        for row in results.get("time_to_accuracy", [])
    ]
    if "phone_photos" in results:
        photos = results["phone_photos"]
        rows.append(
            (
                f"read+prepare+predict {photos['photos']} JPEGs {photos['size']}",
                f"{photos['seconds']:.1f} s",
                f"{photos['ms_per_photo']:.0f} ms each",
                "start-up excluded",
            )
        )
    return "\n".join(f"{a:42s} {b!s:>12s} {c!s:>14s}   {d}" for a, b, c, d in rows)


@reports_user_errors
def main(cfg: DictConfig) -> dict[str, Any]:
    """`scripts/benchmark.py`: measure, print a table, write benchmark.json to the run dir."""
    with runs.removed_if_unused(runs.output_dir()) as out:
        validate_benchmark(cfg)
        check_presets(cfg.presets)
        results = measure(cfg)
        write_text_atomically(out / "benchmark.json", json.dumps(results, indent=2) + "\n")
    print(f"machine: {results['machine']}")
    print(table(results))
    print(f"wrote {out / 'benchmark.json'}")
    return results


def measure(cfg: DictConfig) -> dict[str, Any]:
    """Every figure `cfg` asks for, as benchmark.json holds them."""
    pipelines = {"standard": STANDARD, "fmnist": (), "torch_loss": ("loss=torch",)}
    speeds = training_throughputs(pipelines, cfg.steps, cfg.repeats)
    # Rounded as reported, so the ratios are those of the figures printed beside them.
    standard, ours, ours_torch_loss = (round(speeds[name]) for name in pipelines)
    data_s = data_path_seconds({"standard": STANDARD, "fmnist": ()}, cfg.repeats, cfg.data_subset)
    standard_s, ours_s = data_s["standard"], data_s["fmnist"]
    results: dict[str, Any] = {
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
            preset_summary(
                [
                    preset_run(str(preset), seed, cfg.preset_timeout)
                    for seed in range(cfg.preset_repeats)
                ]
            )
            for preset in cfg.presets
        ],
    }
    if cfg.agreement_steps:
        results["loss_agreement"] = loss_agreement(cfg.agreement_steps, cfg.agreement_overrides)
    if results["presets"]:
        results["time_to_accuracy"] = time_to_accuracy(results["presets"])
    if cfg.photos:
        results["phone_photos"] = photo_seconds(cfg.photos)
    return results
