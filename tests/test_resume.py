"""Fault tolerance: exact resume after SIGKILL, a clean stop on SIGINT, the NaN guard."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    SMOKE,
    hparams_sessions,
    run_script,
    scalars,
    start_training,
    wait_for_checkpoint,
)

from fmnist.report.val_predictions import FILE
from fmnist.run_state import Interrupted, StopSignals

SMALL = [SMOKE, "trainer.deterministic=true", "trainer.checkpoint_every_steps=1"]
STEPS = 16  # 1024 / 128 = 8 steps per epoch, 2 epochs


def start(cwd: Path, *overrides: str) -> subprocess.Popen:
    return start_training(cwd, *SMALL, *overrides)


def only_run(root: Path) -> Path:
    (run_dir,) = root.glob("outputs/runs/*")
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_script("scripts/train.py", *SMALL, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return only_run(cwd)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    process = start(tmp_path)
    wait_for_checkpoint(tmp_path, process, random.randint(2, STEPS - 4))
    process.kill()
    process.wait()
    run_dir = only_run(tmp_path)
    assert not (run_dir / "metrics.json").exists()

    resumed = run_script("scripts/train.py", *SMALL, "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert only_run(tmp_path) == run_dir  # same directory, no new one

    expected = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=True)
    actual = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    assert (
        json.loads((run_dir / "metrics.json").read_text())["test_acc"]
        == json.loads((uninterrupted / "metrics.json").read_text())["test_acc"]
    )
    # One TensorBoard series: every step exactly once, with the uninterrupted run's values.
    assert scalars(run_dir) == scalars(uninterrupted)
    (session,) = hparams_sessions(run_dir)  # one HPARAMS row per run, not one per resume
    assert all(scalars(run_dir, tag) for tag in session["metrics"])
    assert [step for step, _ in scalars(run_dir)] == list(range(1, STEPS + 1))
    # The fixed validation images' predictions: epoch 0 from the killed process, the rest as the
    # uninterrupted run wrote them.
    assert (run_dir / FILE).read_text() == (uninterrupted / FILE).read_text()


@pytest.mark.slow
def test_sigint_saves_and_says_how_to_resume(data_root, tmp_path):
    process = start(tmp_path)
    wait_for_checkpoint(tmp_path, process, 3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("stopped: SIGINT at step ")
    assert "trainer.resume=auto" in last_line and "Traceback" not in stderr
    step = torch.load(only_run(tmp_path) / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert f"at step {step}:" in last_line

    resumed = run_script("scripts/train.py", *SMALL, "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [s for s, _ in scalars(only_run(tmp_path))] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_resume_with_another_config_is_refused(uninterrupted, tmp_path):
    process = start(tmp_path)
    wait_for_checkpoint(tmp_path, process, 2)
    process.kill()
    process.wait()
    checkpoint = only_run(tmp_path) / "checkpoints" / "last.pt"
    result = run_script(
        "scripts/train.py", *SMALL, "optimizer.lr=0.2", f"ckpt_path={checkpoint}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "was trained with another config (optimizer.lr=0.05 there, 0.2 now)" in result.stderr
    auto = run_script(
        "scripts/train.py", *SMALL, "optimizer.lr=0.2", "trainer.resume=auto", cwd=tmp_path
    )
    assert auto.returncode == 2 and "nothing to resume" in auto.stderr
    assert len(list(tmp_path.glob("outputs/runs/*"))) == 1


@pytest.mark.slow
def test_nothing_to_resume_leaves_no_directory(data_root, tmp_path):
    result = run_script("scripts/train.py", *SMALL, "trainer.resume=auto", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: trainer.resume=auto found nothing to resume")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_the_kept_checkpoint(data_root, tmp_path):
    result = run_script("scripts/train.py", *SMALL, "optimizer.lr=1e30", cwd=tmp_path)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: the loss is nan at step ")
    assert "trainer.skip_nonfinite=true" in message and "last good checkpoint: " in message
    assert "Traceback" not in result.stderr
    assert not (only_run(tmp_path) / "metrics.json").exists()


@pytest.mark.slow
def test_skip_nonfinite_gives_up_on_a_diverged_run_in_one_line(data_root, tmp_path):
    """lr=1e30 makes every step non-finite: skipping cannot help, so the run stops after
    trainer.max_skipped_in_a_row of them, saying so (tests/test_engine.py: a usable model when
    only some steps are skipped)."""
    result = run_script(
        "scripts/train.py",
        *SMALL,
        "optimizer.lr=1e30",
        "trainer.skip_nonfinite=true",
        "trainer.max_skipped_in_a_row=3",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert "the 4th non-finite loss in a row (trainer.max_skipped_in_a_row=3)" in message
    assert "last good checkpoint: " in message and "Traceback" not in result.stderr
    assert not (only_run(tmp_path) / "metrics.json").exists()


def test_a_second_signal_stops_at_once_in_one_line():
    """The first SIGINT asks for a stop after the step; a second one stops right away."""
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT
        with pytest.raises(Interrupted) as second:
            os.kill(os.getpid(), signal.SIGINT)
    assert second.value.exit_code == 128 + signal.SIGINT
    assert str(second.value).startswith("a second SIGINT: stopped at once, without saving; ")
    assert "trainer.resume=auto" in str(second.value) and "\n" not in str(second.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


@pytest.mark.slow
def test_unwritable_checkpoint_directory_is_one_clear_line(data_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the directory should be")
    result = run_script("scripts/train.py", *SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot write checkpoint {run_dir}")
    )
    assert "Traceback" not in result.stderr
    assert os.listdir(run_dir).count("metrics.json") == 0
