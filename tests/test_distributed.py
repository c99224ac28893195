"""torchrun with two CPU processes (gloo): one run directory; the single-process losses, an uneven
last batch included; BatchNorm and dropout; two nodes; restarts after killed workers; leaving
the group cleanly. Every torchrun keeps each rank's output: a failure prints it
(`conftest.Torchrun.report`)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    SMOKE,
    TINY_CNN,
    TRAIN,
    free_port,
    scalars,
    start_torchrun,
    torchrun,
    wait_for_checkpoint,
)

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
# The CNN (BatchNorm, dropout; 4k parameters), deterministic, a checkpoint at every step.
CNN = [SMOKE, TINY_CNN, UNEVEN, "trainer.deterministic=true", "trainer.checkpoint_every_steps=1"]


def only_run(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs" / "runs").iterdir()
    return run_dir


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


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
    result = torchrun(cwd, *SAME_MATH)
    assert result.returncode == 0, result.report()
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
        [sys.executable, TRAIN, *SAME_MATH, f"hydra.run.dir={single}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(
        torch.tensor(losses(two_process_run)), torch.tensor(losses(single)), rtol=1e-5, atol=1e-6
    )


def test_a_batch_that_does_not_split_is_one_clear_error(data_root, tmp_path):
    result = torchrun(tmp_path, *SAME_MATH, "data.batch_size=127")
    assert result.returncode != 0
    message = "error: data.batch_size=127 does not split over 2 processes: use a multiple of 2"
    assert message in result.stderr, result.report()


def test_sync_batchnorm_on_cpu_says_it_needs_gpus(data_root, tmp_path):
    result = torchrun(tmp_path, *SAME_MATH, "model=small_cnn", "trainer.sync_batchnorm=true")
    assert result.returncode != 0
    assert "error: trainer.sync_batchnorm=true needs CUDA GPUs" in result.stderr, result.report()
    assert not (tmp_path / "outputs" / "runs").exists() or not any(
        (tmp_path / "outputs" / "runs").iterdir()
    )


@pytest.fixture(scope="module")
def cnn_run(data_root, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("cnn")
    result = torchrun(cwd, *CNN)
    assert result.returncode == 0, result.report()
    assert "nan" not in result.stderr.lower()  # an empty share is no divergence
    return only_run(cwd)


def test_batchnorm_dropout_and_an_empty_share_train_and_evaluate_in_one_process(cnn_run, tmp_path):
    best = checkpoint.load(cnn_run)
    # 18 steps of 4k parameters: 22.6% in one process, against 10% for chance
    assert best["metrics"]["steps"] == STEPS and best["metrics"]["test_acc"] > 0.15
    assert evaluated_accuracy(cnn_run, tmp_path / "eval") == best["metrics"]["test_acc"]
    rank0, rank1 = best["rng"]  # each rank its own dropout stream, saved for resuming
    assert not torch.equal(rank0["torch"], rank1["torch"])


def test_the_same_command_gives_the_same_weights(cnn_run, tmp_path):
    result = torchrun(tmp_path, *CNN)
    assert result.returncode == 0, result.report()
    assert same_weights(weights(only_run(tmp_path)), weights(cnn_run))


def test_two_nodes_on_one_machine_make_one_run(data_root, tmp_path):
    """Two torchrun agents, one process each, meeting through c10d rendezvous on 127.0.0.1."""
    endpoint = f"--rdzv-endpoint=127.0.0.1:{free_port()}"
    agents = [
        start_torchrun(
            tmp_path,
            *SAME_MATH,
            options=(
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node-rank={node}",
                "--rdzv-backend=c10d",
                endpoint,
                "--rdzv-id=fmnist-test",
            ),
        )
        for node in (0, 1)
    ]
    for agent in agents:
        assert agent.wait().returncode == 0, agent.report()
    run_dir = only_run(tmp_path)
    assert len(losses(run_dir)) == STEPS and (run_dir / "metrics.json").is_file()


def test_a_killed_worker_is_restarted_and_resumes_to_the_same_weights(cnn_run, tmp_path):
    """--max-restarts=1: kill rank 0 mid-run; torchrun restarts the group, which continues
    from the last checkpoint and ends where the uninterrupted run did, bit for bit."""
    agent = start_torchrun(
        tmp_path,
        *CNN,
        "trainer.resume=auto",
        options=("--standalone", "--nproc_per_node=2", "--max-restarts=1"),
    )
    last = wait_for_checkpoint(tmp_path, agent.process, step=5)
    rank0 = int((last.parent.parent / ".lock").read_text())
    os.kill(rank0, signal.SIGKILL)
    assert agent.wait().returncode == 0, agent.report()
    run_dir = only_run(tmp_path)
    assert "Resuming" in (run_dir / "train.log").read_text()
    assert same_weights(weights(run_dir), weights(cnn_run))


# --------------------------------------------------------------------------------------------
# Repeated kills under elastic torchrun
# --------------------------------------------------------------------------------------------

# 256 steps of a 4k-parameter CNN (2 epochs of 128 batches of 32), a checkpoint every 4 steps.
EVERY = 4
MANY_STEPS = [
    SMOKE,
    "data.subset=4096",
    "data.batch_size=32",
    TINY_CNN,
    "trainer.deterministic=true",
    f"trainer.checkpoint_every_steps={EVERY}",
]
KILLS = 3


def workers(agent: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the worker processes a torchrun agent is running now."""
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    found = {}
    for pid in map(int, children):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        ranks = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0])] = pid
    return found


def restarted(agent: subprocess.Popen, killed: dict[int, int], plan: str) -> dict[int, int]:
    """{rank: pid} of both workers of a group that has none of the `killed` group's processes:
    the group torchrun started after the last kill (at once, before any kill)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and agent.poll() is None:
        pids = workers(agent)
        if len(pids) == 2 and not set(pids.values()) & set(killed.values()):
            return pids
        time.sleep(0.05)
    raise AssertionError(f"{plan}: no restarted group of 2 workers ({agent.poll()=})")


@pytest.fixture(scope="module")
def many_steps_run(data_root, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("many_steps")
    result = torchrun(cwd, *MANY_STEPS)
    assert result.returncode == 0, result.report()
    return only_run(cwd)


def test_repeated_worker_kills_end_with_the_uninterrupted_weights(many_steps_run, tmp_path):
    """--max-restarts=3: a worker SIGKILLed at three random moments (the seed is printed; set
    FMNIST_KILL_SEED to replay it); each time torchrun restarts the group, which resumes from
    the last checkpoint, and the run ends with the uninterrupted run's weights, bit for bit."""
    seed = int(os.environ.get("FMNIST_KILL_SEED") or random.randrange(2**31))
    draw = random.Random(seed)
    # Checkpoint steps (every 4th) at least 3 checkpoints apart: a kill is seen at the checkpoint
    # it follows, and the next must be one that only the restarted group can write.
    steps = sorted(EVERY * (2 + 3 * k) for k in draw.sample(range(20), KILLS))
    ranks = [draw.randrange(2) for _ in steps]
    plan = f"FMNIST_KILL_SEED={seed}: kill rank {ranks} after steps {steps}"
    print(plan)
    agent = start_torchrun(
        tmp_path,
        *MANY_STEPS,
        "trainer.resume=auto",
        options=("--standalone", "--nproc_per_node=2", f"--max-restarts={KILLS}"),
    )
    pids: dict[int, int] = {}
    for step, rank in zip(steps, ranks, strict=True):
        wait_for_checkpoint(tmp_path, agent.process, step=step)
        pids = restarted(agent.process, pids, plan)
        os.kill(pids[rank], signal.SIGKILL)
    assert agent.wait().returncode == 0, f"{plan}\n{agent.report()}"
    run_dir = only_run(tmp_path)
    log = (run_dir / "train.log").read_text()
    assert log.count("Resuming") == KILLS, f"{plan}\n{log}"
    assert same_weights(weights(run_dir), weights(many_steps_run)), plan


# --------------------------------------------------------------------------------------------
# Leaving the group
# --------------------------------------------------------------------------------------------

LEAVES = """
import os, torch
from fmnist import distributed

def gloo_threads():
    names = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
    return sum("gloo" in name for name in names)

distributed.init()
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
model(torch.ones(4, 3)).sum().backward()
del model
print(f"rank {distributed.rank()}: {gloo_threads()} gloo threads before leaving")
distributed.leave()
print(f"rank {distributed.rank()}: {gloo_threads()} gloo threads after leaving")
"""


def test_leaving_the_group_stops_gloo_threads_after_ddp(tmp_path):
    """After `distributed.leave`, no gloo thread runs on: none can touch Python while the
    interpreter exits (the cause of an abort at exit, 'terminate called without an active
    exception'). DDP's first use imports a module that would otherwise keep the group alive."""
    script = tmp_path / "leaves.py"
    script.write_text(LEAVES)
    result = torchrun(tmp_path, str(script))
    assert result.returncode == 0, result.report()
    for rank in (0, 1):
        assert f"rank {rank}: 3 gloo threads before leaving" in result.stdout, result.report()
        assert f"rank {rank}: 0 gloo threads after leaving" in result.stdout, result.report()
