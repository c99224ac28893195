"""torchrun with two CPU processes (gloo): one run directory, and the single-process losses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SMOKE, scalars

from fmnist import checkpoint

pytestmark = pytest.mark.slow

# A model without batch statistics and no augmentation: the two ranks together see exactly
# the single-process global batches, so the losses must agree to float rounding.
SAME_MATH = [
    SMOKE,
    "model=linear",
    "data.crop_padding=0",
    "data.flip=false",
    "trainer.precision=32",
]


def torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, str(ROOT / "scripts" / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def losses(run_dir) -> list[float]:
    return [value for _, value in scalars(run_dir)]


@pytest.fixture(scope="module")
def two_process_run(data_root, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    result = torchrun(*SAME_MATH, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs  # both ranks agreed on one directory
    assert not (cwd / "outputs" / "multirun").exists()
    return runs[0]


def test_one_run_directory_one_events_file(two_process_run):
    assert len(list(two_process_run.glob("events.out.tfevents.*"))) == 1
    assert len(losses(two_process_run)) == 16
    assert (two_process_run / "metrics.json").is_file()


def test_checkpoint_loads_in_a_single_process(two_process_run):
    best = checkpoint.load(two_process_run)
    model = checkpoint.build_model(best)  # saved from the unwrapped model: no "module." prefix
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert best["metrics"]["test_acc"] > 0.5


def test_checkpoint_evaluates_with_the_recorded_accuracy(two_process_run, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "evaluate.py"),
            f"ckpt_path={two_process_run}",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    recorded = checkpoint.load(two_process_run)["metrics"]["test_acc"]
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == recorded


def test_losses_match_a_single_process_run(two_process_run, tmp_path):
    single = tmp_path / "single"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *SAME_MATH, f"hydra.run.dir={single}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(
        torch.tensor(losses(two_process_run)), torch.tensor(losses(single)), rtol=1e-5, atol=1e-6
    )


def test_a_batch_that_does_not_split_is_one_clear_error(data_root, tmp_path):
    result = torchrun(*SAME_MATH, "data.batch_size=127", cwd=tmp_path)
    assert result.returncode != 0
    assert (
        "error: data.batch_size=127 does not split over 2 processes: use a multiple of 2"
        in result.stderr
    )


def test_sync_batchnorm_on_cpu_says_it_needs_gpus(data_root, tmp_path):
    result = torchrun(*SAME_MATH, "model=small_cnn", "trainer.sync_batchnorm=true", cwd=tmp_path)
    assert result.returncode != 0
    assert "error: trainer.sync_batchnorm=true needs CUDA GPUs" in result.stderr
    assert not (tmp_path / "outputs" / "runs").exists() or not any(
        (tmp_path / "outputs" / "runs").iterdir()
    )
