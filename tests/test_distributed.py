"""torchrun with two CPU processes (gloo): one run directory; the single-process losses, an uneven
last batch included; BatchNorm and dropout; two nodes; a restart after a killed worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SMOKE, scalars, wait_for_checkpoint

from fmnist import checkpoint

pytestmark = pytest.mark.slow

# A model without batch statistics and no augmentation: the two ranks together see exactly
# the single-process global batches, so the losses must agree to float rounding. 1025 images:
# each epoch ends with a batch of 1, so rank 1's share of it is empty.
UNEVEN = "data.subset=1025"
SAME_MATH = [
    SMOKE,
    UNEVEN,
    "model=linear",
    "data.crop_padding=0",
    "data.flip=false",
    "trainer.precision=32",
]
STEPS = 18  # 9 batches per epoch, the last of one image
# The default CNN (BatchNorm, dropout), deterministic, a checkpoint at every step.
CNN = [SMOKE, UNEVEN, "trainer.deterministic=true", "trainer.checkpoint_every_steps=1"]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TRAIN = str(ROOT / "scripts" / "train.py")


def torchrun(*args: str, cwd, options=("--standalone", "--nproc_per_node=2")):
    return subprocess.run(
        [*TORCHRUN, *options, TRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def only_run(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs" / "runs").iterdir()
    return run_dir


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def evaluated_accuracy(run_dir: Path, out: Path) -> float:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "evaluate.py"),
            f"ckpt_path={run_dir}",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads((out / "eval.json").read_text())["accuracy"]


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
    assert len(losses(two_process_run)) == STEPS
    assert (two_process_run / "metrics.json").is_file()


def test_checkpoint_loads_in_a_single_process(two_process_run):
    best = checkpoint.load(two_process_run)
    model = checkpoint.build_model(best)  # saved from the unwrapped model: no "module." prefix
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert best["metrics"]["test_acc"] > 0.5


def test_checkpoint_evaluates_with_the_recorded_accuracy(two_process_run, tmp_path):
    recorded = checkpoint.load(two_process_run)["metrics"]["test_acc"]
    assert evaluated_accuracy(two_process_run, tmp_path / "eval") == recorded


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


@pytest.fixture(scope="module")
def cnn_run(data_root, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("cnn")
    result = torchrun(*CNN, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nan" not in result.stderr.lower()  # an empty share is no divergence
    return only_run(cwd)


def test_batchnorm_dropout_and_an_empty_share_train_and_evaluate_in_one_process(cnn_run, tmp_path):
    best = checkpoint.load(cnn_run)
    assert best["metrics"]["steps"] == STEPS and best["metrics"]["test_acc"] > 0.3
    assert evaluated_accuracy(cnn_run, tmp_path / "eval") == best["metrics"]["test_acc"]
    rank0, rank1 = best["rng"]  # each rank its own dropout stream, saved for resuming
    assert not torch.equal(rank0["torch"], rank1["torch"])


def test_the_same_command_gives_the_same_weights(cnn_run, tmp_path):
    assert torchrun(*CNN, cwd=tmp_path).returncode == 0
    again = weights(only_run(tmp_path))
    assert all(torch.equal(again[name], tensor) for name, tensor in weights(cnn_run).items())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_make_one_run(data_root, tmp_path):
    """Two torchrun agents, one process each, meeting through c10d rendezvous on 127.0.0.1."""
    endpoint = f"--rdzv-endpoint=127.0.0.1:{free_port()}"
    agents = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node-rank={node}",
                "--rdzv-backend=c10d",
                endpoint,
                "--rdzv-id=fmnist-test",
                TRAIN,
                *SAME_MATH,
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    for agent in agents:
        _, stderr = agent.communicate(timeout=300)
        assert agent.returncode == 0, stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert len(losses(run_dir)) == STEPS and (run_dir / "metrics.json").is_file()


def test_a_killed_worker_is_restarted_and_resumes_to_the_same_weights(cnn_run, tmp_path):
    """--max-restarts=1: kill rank 0 mid-run; torchrun restarts the group, which continues
    from the last checkpoint and ends where the uninterrupted run did, bit for bit."""
    agent = subprocess.Popen(
        [
            *TORCHRUN,
            "--standalone",
            "--nproc_per_node=2",
            "--max-restarts=1",
            TRAIN,
            *CNN,
            "trainer.resume=auto",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = wait_for_checkpoint(tmp_path, agent, step=5)
    rank0 = int((last.parent.parent / ".lock").read_text())
    os.kill(rank0, signal.SIGKILL)
    _, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr[-3000:]
    run_dir = only_run(tmp_path)
    assert "Resuming" in (run_dir / "train.log").read_text()
    restarted = weights(run_dir)
    assert all(torch.equal(restarted[name], tensor) for name, tensor in weights(cnn_run).items())
