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
    SMOKE_RUN,
    TINY_CNN,
    contents,
    continue_command,
    copy_run,
    hparams_sessions,
    run_in_process,
    run_script,
    scalars,
    start_training,
    wait_for_checkpoint,
)

from fmnist import data
from fmnist.report.val_predictions import FILE
from fmnist.run_state import Interrupted, StopSignals
from fmnist.train import check_usable

SMALL = [
    SMOKE,
    TINY_CNN,
    "data.batch_size=32",  # steps of a few milliseconds: many of them, to stop one in the middle
    "trainer.deterministic=true",
    "trainer.checkpoint_every_steps=1",
]
STEPS = 64  # 1024 / 32 = 32 steps per epoch, 2 epochs


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
    wait_for_checkpoint(tmp_path, process, random.randint(2, STEPS // 2))
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
    """The last line names the step and prints the whole command that continues the run, its
    overrides included, ready to paste; pasted, it does."""
    weights = "loss.weight=[1,1,1,1,1,1,2,1,1,1]"  # brackets and commas: quoted for the shell
    process = start(tmp_path, weights)
    wait_for_checkpoint(tmp_path, process, 3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("stopped: SIGINT at step ") and "Traceback" not in stderr
    step = torch.load(only_run(tmp_path) / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert f"at step {step}:" in last_line
    run_dir = only_run(tmp_path).relative_to(tmp_path)
    assert last_line.endswith(f"'{weights}' trainer.resume=auto hydra.run.dir={run_dir}"), last_line
    command = continue_command(stderr)
    assert command[2:] == [*SMALL, weights, "trainer.resume=auto", f"hydra.run.dir={run_dir}"]

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
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


def test_a_refused_resume_leaves_the_run_exactly_as_it_was(
    data_root, trained_run, tmp_path, monkeypatch
):
    """Refused before Hydra writes (another config), or after it has written its config copy
    and log (the data is damaged): the run's directory is as it was, byte for byte."""
    run_dir = copy_run(trained_run, tmp_path / "run", finished=False)
    before = contents(run_dir)
    result = run_in_process(
        "scripts/train.py",
        *SMOKE_RUN,
        "optimizer.lr=0.2",
        "seed=3",
        "trainer.resume=auto",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {run_dir}/checkpoints/last.pt was trained with another config "
        "(optimizer.lr=0.05 there, 0.2 now; seed=0 there, 3 now): resume with the same "
        "overrides, or start a new run\n"
    )
    assert contents(run_dir) == before

    damaged = tmp_path / "damaged"
    data.raw_dir(damaged).mkdir(parents=True)
    for spec in data.ALL_SPECS:
        (data.raw_dir(damaged) / spec.name).symlink_to(data.raw_dir(data_root) / spec.name)
    monkeypatch.setenv("FMNIST_DATA", str(damaged))
    labels = data.raw_dir(damaged) / "t10k-labels-idx1-ubyte"
    labels.unlink()
    labels.write_bytes(b"\x00" * 10008)
    result = run_in_process(
        "scripts/train.py",
        *SMOKE_RUN,
        "trainer.resume=auto",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "t10k-labels-idx1-ubyte" in result.stderr
    assert contents(run_dir) == before


def test_resume_discovery_skips_what_it_cannot_read(trained_run, tmp_path):
    """trainer.resume=auto looks through outputs/runs/: an unreadable checkpoint and one without
    a config are skipped with a note each; finding nothing, it names the closest run and how it
    differs."""
    runs = tmp_path / "outputs" / "runs"
    stopped = copy_run(trained_run, runs / "stopped", finished=False)
    before = contents(stopped)
    (runs / "garbage" / "checkpoints").mkdir(parents=True)
    (runs / "garbage" / "checkpoints" / "last.pt").write_bytes(b"\x80\x02garbage")
    (runs / "foreign" / "checkpoints").mkdir(parents=True)
    torch.save({"format": 1, "model": {}}, runs / "foreign" / "checkpoints" / "last.pt")
    result = run_in_process(
        "scripts/train.py", *SMOKE_RUN, "optimizer.lr=0.2", "trainer.resume=auto", cwd=tmp_path
    )
    assert result.returncode == 2
    *notes, last = result.stderr.strip().splitlines()
    prefix = "note: skipped while looking for a run to resume: outputs/runs/"
    foreign, garbage = sorted(notes)
    assert foreign == (
        f"{prefix}foreign/checkpoints/last.pt has no saved config: it is not a checkpoint of a "
        "training run"
    )
    assert garbage.startswith(f"{prefix}garbage/checkpoints/last.pt ")
    assert last == (
        "error: trainer.resume=auto found nothing to resume: no unfinished run under "
        "outputs/runs with this config that no other process is writing; the closest, "
        "outputs/runs/stopped, differs in optimizer.lr=0.05 there, 0.2 now: resume it with its "
        "overrides (or ckpt_path=...), or start a new run without trainer.resume"
    )
    assert contents(stopped) == before and len(list(runs.rglob("*"))) == len(before) + 7


@pytest.mark.slow
def test_resume_discovery_finds_the_run_past_what_it_cannot_read(trained_run, tmp_path):
    runs = tmp_path / "outputs" / "runs"
    stopped = copy_run(trained_run, runs / "stopped", finished=False)
    os.utime(stopped / "checkpoints" / "last.pt", (1, 1))  # the oldest: found last
    (runs / "garbage" / "checkpoints").mkdir(parents=True)
    (runs / "garbage" / "checkpoints" / "last.pt").write_bytes(b"garbage")
    result = run_in_process("scripts/train.py", *SMOKE_RUN, "trainer.resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("note: skipped while looking for a run to resume: ")
    assert (stopped / "metrics.json").is_file()


@pytest.mark.slow
def test_a_diverged_run_ends_in_one_line_and_a_failure(data_root, tmp_path):
    """Skipping every non-finite step, a run at lr 1e9 gets to its end with a model whose
    losses are NaN: it says so, with the skipped batches, and exits non-zero."""
    result = run_script(
        "scripts/train.py",
        *SMALL,
        "optimizer.lr=1e9",
        "trainer.skip_nonfinite=true",
        "trainer.max_skipped_in_a_row=100",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    metrics = json.loads((only_run(tmp_path) / "metrics.json").read_text())
    skipped = metrics["skipped_steps"]
    assert skipped > 0 and metrics["steps"] + skipped == STEPS
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the run diverged ({skipped} of {STEPS} batches skipped for a non-finite loss; "
        f"val loss nan, test loss nan): its model in {only_run(tmp_path)} is "
        "unusable; start again with a lower optimizer.lr"
    )


def test_skipped_steps_with_a_usable_model_are_noted(tmp_path, caplog):
    metrics = {"steps": 14, "skipped_steps": 2, "val_loss": 0.4, "test_loss": 0.5}
    with caplog.at_level("INFO", logger="fmnist"):
        check_usable(metrics, tmp_path)
    assert caplog.messages == [
        "note: 2 of 16 batches skipped for a non-finite loss; the model's losses are finite"
    ]
    caplog.clear()
    check_usable({**metrics, "skipped_steps": 0}, tmp_path)
    assert caplog.messages == []


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
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals("python scripts/train.py trainer.resume=auto") as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT
        with pytest.raises(Interrupted) as second:
            os.kill(os.getpid(), signal.SIGINT)
    assert second.value.exit_code == 128 + signal.SIGINT
    assert str(second.value).startswith("a second SIGINT: stopped at once, without saving; ")
    assert "trainer.resume=auto" in str(second.value) and "\n" not in str(second.value)
    # the handlers are put back as they were (not always Python's default: a background job
    # starts with SIGINT ignored)
    assert {sig: signal.getsignal(sig) for sig in before} == before


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
