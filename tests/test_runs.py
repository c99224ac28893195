"""Runs side by side, resumable sweeps, and durable outputs (fmnist/runs.py, fmnist/files.py)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    SMOKE,
    hparams_sessions,
    run_in_process,
    run_script,
    scalars,
    start_training,
    wait_for_checkpoint,
)
from omegaconf import OmegaConf

from fmnist import checkpoint
from fmnist.benchmark import compose_train
from fmnist.errors import UserError
from fmnist.files import write_atomically, write_text_atomically
from fmnist.run_state import Checkpoints, Progress
from fmnist.runs import claim, new_directory
from fmnist.train import build

QUICK = [SMOKE, "data.subset=256", "trainer.max_epochs=1"]
TINY = [*QUICK, "model.widths=[8,16]", "trainer.tta=none"]  # 4k parameters: seconds of start-up


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------------
# Directories of their own
# --------------------------------------------------------------------------------------------


def test_new_directories_are_never_shared(tmp_path):
    first = new_directory(tmp_path / "runs" / "2026-01-01_00-00-00")
    second = new_directory(tmp_path / "runs" / "2026-01-01_00-00-00")
    third = new_directory(tmp_path / "runs" / "2026-01-01_00-00-00")
    assert [p.name for p in (first, second, third)] == [
        "2026-01-01_00-00-00",
        "2026-01-01_00-00-00_2",
        "2026-01-01_00-00-00_3",
    ]
    assert all(p.is_dir() for p in (first, second, third))


def test_a_claimed_directory_is_refused_to_other_processes(tmp_path):
    assert claim(tmp_path)
    code = (
        f"from pathlib import Path; from fmnist.runs import claim; print(claim(Path('{tmp_path}')))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.stdout.strip() == "False"
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_runs_started_together_keep_their_own_results(data_root, tmp_path):
    """Three runs and two sweeps started at the same moment: each its own directory, events,
    log, checkpoints and metrics."""
    runs = [start_training(tmp_path, *TINY, f"seed={seed}") for seed in (1, 2, 3)]
    sweeps = [
        start_training(tmp_path, "-m", *TINY, f"seed={seed}", "loss=scratch,torch")
        for seed in (4, 5)
    ]
    for process in runs + sweeps:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    run_dirs = sorted((tmp_path / "outputs" / "runs").iterdir())
    sweep_dirs = sorted((tmp_path / "outputs" / "multirun").iterdir())
    assert len(run_dirs) == 3 and len(sweep_dirs) == 2
    jobs = [job for sweep in sweep_dirs for job in sorted(sweep.iterdir()) if job.is_dir()]
    assert len(jobs) == 4
    seeds = []
    for run_dir in run_dirs + jobs:
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1, run_dir
        log = (run_dir / "train.log").read_text()
        assert log.count("run saved in") == 1 and f"run saved in {run_dir}" in log
        best = checkpoint.load(run_dir)
        assert best["metrics"] == json.loads((run_dir / "metrics.json").read_text())
        seeds.append(best["config"]["seed"])
    assert sorted(seeds) == [1, 2, 3, 4, 4, 5, 5]


# --------------------------------------------------------------------------------------------
# Resumable sweeps
# --------------------------------------------------------------------------------------------

SWEEP = [
    "-m",
    SMOKE,
    "trainer.deterministic=true",
    "trainer.checkpoint_every_steps=1",
    "trainer.tta=none",  # half the test pass: nothing here looks at accuracy
    "seed=0,1,2",
]


def job_dirs(root: Path) -> list[Path]:
    (sweep,) = (root / "outputs" / "multirun").iterdir()
    return sorted(job for job in sweep.iterdir() if job.is_dir())


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_to_the_uninterrupted_weights(data_root, tmp_path):
    """SIGTERM while the second of three jobs trains; the resumed sweep keeps the first job as
    it was, continues the second from its last.pt and runs the third, in the same directories,
    ending with the weights of a sweep never interrupted (bit for bit)."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    assert run_script("scripts/train.py", *SWEEP, cwd=whole).returncode == 0

    process = start_training(cut, *SWEEP)
    wait_for_checkpoint(cut, process, pattern="outputs/multirun/*/1_*")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "-m <the same sweep> trainer.resume=auto" in stderr.strip().splitlines()[-1]
    first, second = job_dirs(cut)
    kept = (first / "metrics.json").stat().st_mtime_ns
    assert not (second / "metrics.json").exists()

    resumed = run_script("scripts/train.py", *SWEEP, "trainer.resume=auto", cwd=cut)
    assert resumed.returncode == 0, resumed.stderr
    assert "finished before this sweep was resumed: kept as it is" in resumed.stdout
    assert f"Resuming {second}/checkpoints/last.pt" in resumed.stdout
    assert [job.name for job in job_dirs(cut)] == [job.name for job in job_dirs(whole)]
    assert (first / "metrics.json").stat().st_mtime_ns == kept
    for job in job_dirs(cut):  # one HPARAMS row per job, its metrics logged
        (session,) = hparams_sessions(job)
        assert all(scalars(job, tag) for tag in session["metrics"]), job
    assert "| 2 | `seed=2` | finished |" in (job_dirs(cut)[0].parent / "summary.md").read_text()
    for resumed_job, whole_job in zip(job_dirs(cut), job_dirs(whole), strict=True):
        expected = checkpoint.load(whole_job / "checkpoints" / "last.pt")["model"]
        actual = checkpoint.load(resumed_job / "checkpoints" / "last.pt")["model"]
        assert all(torch.equal(actual[name], tensor) for name, tensor in expected.items())

    again = run_script("scripts/train.py", *SWEEP, "trainer.resume=auto", cwd=cut)
    assert again.returncode == 2
    assert again.stderr.startswith("error: trainer.resume=auto found no unfinished sweep under")


# --------------------------------------------------------------------------------------------
# Durable, readable outputs
# --------------------------------------------------------------------------------------------


def test_files_get_the_umask_permissions_and_are_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    previous = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "a.json", "{}\n")
        os.umask(0o077)
        write_text_atomically(tmp_path / "b.json", "{}\n")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "a.json") == 0o644 and mode(tmp_path / "b.json") == 0o600
    assert len(synced) == 4  # each file, then its directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temporaries


def test_a_failing_writer_keeps_its_own_error_and_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old\n")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("a bug, not a full disk")

    with pytest.raises(RuntimeError, match="a bug, not a full disk"):
        write_atomically(path, broken, "metrics")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only): a checkpoint of the default CNN (2.3 MB) does not fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_naming_it_and_keeps_the_previous_file(small_disk):
    path = small_disk / "best.pt"
    checkpoint.save(path, model={"w": torch.zeros(10)})
    with pytest.raises(UserError) as full:
        checkpoint.save(path, model={"w": torch.zeros(1_000_000)})
    message = str(full.value)
    assert message.startswith(f"cannot write checkpoint {path} (No space left on device)")
    assert "the disk is full: free some space" in message and "\n" not in message
    assert checkpoint.load(path)["model"]["w"].shape == (10,)  # the previous one, intact
    assert [p.name for p in small_disk.iterdir()] == ["best.pt"]


@pytest.mark.slow
def test_training_onto_a_full_disk_stops_in_one_line(data_root, small_disk):
    result = run_script("scripts/train.py", *QUICK, f"hydra.run.dir={small_disk / 'run'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write checkpoint {small_disk / 'run'}/checkpoints/")
    assert "(No space left on device): the disk is full: free some space" in last


def test_a_runs_outputs_are_readable_by_others(trained_run):
    umask = os.umask(0)
    os.umask(umask)
    for path in (
        trained_run / "metrics.json",
        trained_run / "checkpoints" / "best.pt",
        trained_run / "checkpoints" / "last.pt",
    ):
        assert mode(path) == 0o666 & ~umask, path


def test_best_is_saved_before_last(data_root, tmp_path, monkeypatch):
    """At an epoch's end best.pt comes first: a kill between the two saves never leaves a
    resumed run testing a best.pt older than its last.pt."""
    cfg = compose_train([SMOKE])
    training = build(cfg)
    saved = []
    monkeypatch.setattr(checkpoint, "save", lambda path, **contents: saved.append(path.name))
    checkpoints = Checkpoints(tmp_path, training, OmegaConf.to_container(cfg, resolve=True))
    checkpoints.save_epoch(Progress(), val=None)
    assert saved == ["best.pt", "last.pt"]


def test_evaluations_started_together_get_their_own_directories(trained_run, tmp_path):
    """Two evaluations a moment apart (of the validation split: 512 images) get a directory
    each, also when Hydra names both after the same second."""
    evaluation = ("scripts/evaluate.py", f"ckpt_path={trained_run}", "split=val")
    first = run_in_process(*evaluation, cwd=tmp_path)
    second = run_in_process(*evaluation, cwd=tmp_path)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    outputs = sorted((tmp_path / "outputs" / "eval").iterdir())
    assert len(outputs) == 2 and all((out / "eval.json").is_file() for out in outputs)
