"""Whole training runs of presets (`scripts/benchmark.py presets=[fast,default]`): each a real
`scripts/train.py` process, timed from start to finish, seeds 0, 1, ...; their median times and
mean ± standard deviation of test accuracy, and for each target accuracy the quickest preset
that reaches it (the time-to-accuracy table).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException

from fmnist.config import compose_train
from fmnist.data import PROJECT_ROOT
from fmnist.errors import UserError

SCRIPTS = PROJECT_ROOT / "scripts"


def preset_overrides(preset: str, seed: int) -> list[str]:
    """`scripts/train.py`'s overrides for a preset: an experiment (`fast`), `default`, or any
    overrides (`a=1 b=2`); `seed=<seed>` unless the preset names its own seed."""
    if preset == "default":
        overrides = []
    elif "=" not in preset:
        overrides = [f"experiment={preset}"]
    else:
        overrides = preset.split()
    if not any(override.startswith("seed=") for override in overrides):
        overrides.append(f"seed={seed}")
    return overrides


def check_presets(presets: Iterable[str]) -> None:
    """Compose and validate every preset before anything is timed: a typo is one line at once,
    not a traceback after minutes of measurements."""
    for preset in presets:
        try:
            compose_train(preset_overrides(preset, 0))
        except HydraException as e:
            first_line = str(e).strip().splitlines()[0]
            raise UserError(f"presets: {preset!r} is not a training config: {first_line}") from None


def preset_run(preset: str, seed: int, timeout: float) -> dict[str, Any]:
    """Wall time of a whole `scripts/train.py` process (start to finish), its training time and
    test accuracy, with `preset_overrides(preset, seed)`; `seed` in the result is the one the
    run used (the preset's own, where it names one: then every repeat is the same run)."""
    overrides = preset_overrides(preset, seed)
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable,
            str(SCRIPTS / "train.py"),
            "trainer.progress=false",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"preset {preset!r} ran past preset_timeout={timeout:g} s: raise preset_timeout"
            ) from None
        wall = time.perf_counter() - start
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"preset {preset!r} failed (exit {done.returncode}): {last}")
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    used_seed = [o.removeprefix("seed=") for o in overrides if o.startswith("seed=")][-1]
    return {"preset": preset, "seed": int(used_seed), "wall_seconds": round(wall, 1), **metrics}


def preset_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One preset's runs (seeds 0, 1, ...): each run's figures, the median times and the mean
    and standard deviation of the test accuracy, which the time-to-accuracy table uses."""
    accuracies = [run["test_acc"] for run in runs]
    return {
        "preset": runs[0]["preset"],
        "runs": len(runs),
        "wall_seconds": statistics.median(run["wall_seconds"] for run in runs),
        "train_seconds": statistics.median(run["train_seconds"] for run in runs),
        "test_acc": statistics.mean(accuracies),
        "test_acc_std": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
        "each": [
            {key: run[key] for key in ("seed", "wall_seconds", "train_seconds", "test_acc")}
            for run in runs
        ],
    }


TARGETS = (0.91, 0.92, 0.93, 0.94, 0.95)


def time_to_accuracy(
    presets: list[dict[str, Any]], targets: Sequence[float] = TARGETS
) -> list[dict[str, Any]]:
    """For each target test accuracy, the quickest preset (median whole-process time) whose
    mean test accuracy reaches it; None where none does."""
    rows = []
    for target in targets:
        reaching = [p for p in presets if p["test_acc"] >= target]
        best = min(reaching, key=lambda p: p["wall_seconds"]) if reaching else None
        rows.append({"target": target, **({} if best is None else best)})
    return rows
