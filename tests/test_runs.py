"""Runs side by side, resumable sweeps, and durable outputs (fmnist/runs.py, resume.py,
callbacks.py, files.py)."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    SMOKE,
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
from omegaconf import OmegaConf

from fmnist import checkpoint
from fmnist.config import compose_train
from fmnist.errors import UserError
from fmnist.files import write_atomically, write_text_atomically
from fmnist.report.board import TensorBoard
from fmnist.resume import config_differences
from fmnist.run_state import Checkpoints, Progress
from fmnist.runs import claim, forget_all, new_directory, put_back
from fmnist.train import build

QUICK = [SMOKE, "data.subset=256", "trainer.max_epochs=1"]
TINY = [*QUICK, TINY_CNN]


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


@pytest.mark.slow
def test_a_claimed_directory_is_refused_to_other_processes(tmp_path):
    assert claim(tmp_path)
    code = (
        f"from pathlib import Path; from fmnist.runs import claim; print(claim(Path('{tmp_path}')))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.stdout.strip() == "False"
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_a_new_run_in_a_directory_another_process_holds_is_told_to_go_elsewhere(tmp_path):
    """A new run losing its hydra.run.dir to a run of another process (here: this one) is told to
    give another directory, not to wait before "continuing" a run it never started."""
    held = tmp_path / "taken"
    code = f"from pathlib import Path; from fmnist.runs import claim; claim(Path('{held}'))"
    holder = subprocess.Popen([sys.executable, "-c", f"{code}; input()"], stdin=subprocess.PIPE)
    try:
        while not (held / ".lock").is_file() or not (held / ".lock").read_text().strip():
            time.sleep(0.05)
        result = run_in_process("scripts/train.py", f"hydra.run.dir={held}", cwd=tmp_path)
    finally:
        holder.communicate(b"\n")
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {held} is in use by another process (pid {holder.pid}): give another "
        "hydra.run.dir for this new run, or wait for it\n"
    )


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
    TINY_CNN,
    "data.batch_size=32",  # 64 quick steps a job: the signal lands in the middle of one
    "trainer.deterministic=true",
    "trainer.checkpoint_every_steps=1",
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
    first, second = job_dirs(cut)
    command = continue_command(stderr)  # the whole sweep, ready to paste
    assert command[2:] == [
        "-m",
        *SWEEP[1:],
        "trainer.resume=auto",
        f"hydra.sweep.dir={first.parent.relative_to(cut)}",
    ]
    kept = contents(first)
    assert not (second / "metrics.json").exists()

    resumed = subprocess.run(command, cwd=cut, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "finished before this sweep was resumed: kept as it is" in resumed.stdout
    assert f"Resuming {second}/checkpoints/last.pt" in resumed.stdout
    assert [job.name for job in job_dirs(cut)] == [job.name for job in job_dirs(whole)]
    assert contents(first) == kept  # byte for byte: its .hydra/ and its log too
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


@pytest.mark.slow
def test_failed_jobs_are_recorded_and_the_sweep_goes_on(data_root, tmp_path):
    """Six jobs: a config mistake, a divergence and a missing dataset each fail their job in one
    line, recorded in its failed.txt and the summary, while the other jobs run; the sweep then
    exits naming them. Resumed with the overrides in another order, it keeps the finished job,
    retries the others in their own directories (the dataset is there now: those jobs finish)."""
    (tmp_path / "good").symlink_to(data_root)
    sweep = tmp_path / "sweep"
    given = ["-m", *TINY, "data.root=good,later", "optimizer.lr=0.05,1e30,-1"]
    given += ["data.source_dirs=[]", "data.download=false", f"hydra.sweep.dir={sweep}"]
    result = run_in_process("scripts/train.py", *given, cwd=tmp_path)
    assert result.returncode == 2
    names = [
        f"{n}_data.root-{root}_optimizer.lr-{lr}"
        for n, (root, lr) in enumerate(
            (root, lr) for root in ("good", "later") for lr in ("0.05", "1e+30", "-1")
        )
    ]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == names
    jobs = [sweep / name for name in names]
    config_error = "optimizer.lr=-1.0 is invalid: must be > 0 and finite"
    diverged = "the loss is nan at step "
    no_data = f"Fashion-MNIST is not in {tmp_path / 'later'} and no source directory has it"
    expected = {1: diverged, 2: config_error, 3: no_data, 4: no_data, 5: config_error}
    for number, reason in expected.items():
        assert (jobs[number] / "failed.txt").read_text().startswith(reason), number
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines  # one line each
    assert len(lines) == 6 and lines[-1].startswith("error: 5 of 6 jobs failed: job 1 (")
    assert f"job 2 (data.root=good optimizer.lr=-1) failed: {config_error}; job 3 (" in lines[-1]
    assert lines[-1].endswith(  # what works for each: a resume keeps the sweep's values
        "; job 1 (data.root=good optimizer.lr=1e+30), job 2 (data.root=good optimizer.lr=-1), "
        "job 5 (data.root=later optimizer.lr=-1) failed on their own settings, which a resume "
        "keeps: start a new sweep (-m) with other values for them; for job 3, job 4, fix the "
        "cause and rerun with trainer.resume=auto to retry only the failed and unfinished jobs"
    )
    summary = (sweep / "summary.md").read_text()
    assert "1 of 6 jobs finished, 5 failed." in summary
    assert f"| 2 | `data.root=good optimizer.lr=-1` | failed: {config_error} |" in summary
    assert not (jobs[0] / "failed.txt").exists() and (jobs[0] / "metrics.json").is_file()
    kept = contents(jobs[0])

    (tmp_path / "later").symlink_to(data_root)
    shuffled = [given[0], *reversed(given[1:]), "trainer.resume=auto"]
    again = run_in_process("scripts/train.py", *shuffled, cwd=tmp_path)
    assert again.returncode == 2
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == names  # the same jobs
    assert contents(jobs[0]) == kept
    assert "4 of 6 jobs failed: job 1 " in again.stderr and "job 3 " not in again.stderr, (
        again.stderr
    )
    assert again.stderr.strip().endswith(
        "failed on their own settings, which a resume keeps: "
        "start a new sweep (-m) with other values for them"
    )
    # ... and that new sweep, with the failing values changed, runs
    fixed = ["-m", *TINY, "data.root=good", "optimizer.lr=0.05,0.02", f"hydra.sweep.dir={sweep}_2"]
    assert run_in_process("scripts/train.py", *fixed, cwd=tmp_path).returncode == 0
    assert not (jobs[3] / "failed.txt").exists() and (jobs[3] / "metrics.json").is_file()
    assert (
        "| 3 | `data.root=later optimizer.lr=0.05` | finished |"
        in (sweep / "summary.md").read_text()
    )
    for number in (1, 2, 4, 5):
        assert (jobs[number] / "failed.txt").is_file(), number


# --------------------------------------------------------------------------------------------
# Nothing lost: a failed command, a directory that holds a run, a directory that cannot be written
# --------------------------------------------------------------------------------------------


def test_a_failed_command_leaves_a_users_directory_as_it_was(tmp_path):
    """`hydra.run.dir=` a directory of the user's: a command that fails there removes what it
    created and puts back what it rewrote (its .hydra/ config copy, its log), nothing else."""
    mine = tmp_path / "mylogs"
    (mine / "old.log").mkdir(parents=True)  # a folder whose name ends in .log, as a log's
    (mine / "old.log" / "notes.txt").write_text("kept\n")
    (mine / "server.log").write_text("precious\n")
    (mine / ".hydra").mkdir()
    (mine / ".hydra" / "config.yaml").write_text("ckpt_path: an earlier one\n")
    (mine / "evaluate.log").write_text("an earlier evaluation\n")
    before = contents(mine)
    result = run_in_process(
        "scripts/evaluate.py", "ckpt_path=nowhere.pt", f"hydra.run.dir={mine}", cwd=tmp_path
    )
    assert result.returncode == 2 and "no checkpoint at nowhere.pt" in result.stderr
    assert contents(mine) == before

    result = run_in_process(
        "scripts/evaluate.py", "ckpt_path=nowhere.pt", "hydra.run.dir=new/deeper/out", cwd=tmp_path
    )
    assert result.returncode == 2 and not (tmp_path / "new").exists()  # all it made, removed


def test_a_failed_commands_new_directory_goes_with_the_parents_it_made(tmp_path):
    forget_all()
    first = new_directory(tmp_path / "outputs" / "runs" / "2026-01-01_00-00-00")
    second = new_directory(tmp_path / "outputs" / "runs" / "2026-01-01_00-00-00")
    (second / ".hydra").mkdir()
    (second / "train.log").write_text("started\n")
    put_back(second)  # another command's directory beside it: the parents stay
    assert not second.exists() and first.is_dir()
    put_back(first)
    assert list(tmp_path.iterdir()) == []


def test_a_new_run_never_replaces_a_run(trained_run, tmp_path):
    """A new run given the directory of a finished or an unfinished run, or a resume given a
    finished one, is refused in one line, and the run stays as it was."""
    finished = copy_run(trained_run, tmp_path / "finished")
    unfinished = copy_run(trained_run, tmp_path / "unfinished", finished=False)
    cases = [
        (finished, [], "holds a finished run (metrics.json exists): give another hydra.run.dir"),
        (finished, ["trainer.resume=auto"], "has finished (metrics.json exists): nothing to"),
        (unfinished, [], "holds an unfinished run: continue it with trainer.resume=auto (same"),
    ]
    for run_dir, extra, message in cases:
        before = contents(run_dir)
        result = run_in_process(
            "scripts/train.py", SMOKE, *extra, f"hydra.run.dir={run_dir}", cwd=tmp_path
        )
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {run_dir} {message}"), result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert contents(run_dir) == before


@pytest.fixture
def read_only(tmp_path):
    """A read-only tmpfs (root only), holding an empty folder."""
    mount = tmp_path / "read-only"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    (mount / "folder").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("where", ["folder", "folder/new"])
def test_a_read_only_output_directory_is_one_line(read_only, tmp_path, where):
    target = read_only / where
    for script, *given in (("scripts/train.py",), ("scripts/evaluate.py", "ckpt_path=any.pt")):
        result = run_in_process(script, *given, f"hydra.run.dir={target}")
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"error: cannot create or write the output directory {target} (Read-only file "
            "system): give one you can write, hydra.run.dir=DIR\n"
        )
    assert sorted(p.name for p in read_only.rglob("*")) == ["folder"]


@pytest.mark.skipif(os.geteuid() == 0, reason="as root, chmod does not stop writes")
def test_a_directory_without_write_permission_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_in_process("scripts/evaluate.py", "ckpt_path=any.pt", f"hydra.run.dir={locked}")
    assert result.returncode == 2
    assert result.stderr == (
        f"error: cannot create or write the output directory {locked} (Permission denied): "
        "give one you can write, hydra.run.dir=DIR\n"
    )


# --------------------------------------------------------------------------------------------
# What a resume compares
# --------------------------------------------------------------------------------------------


def test_a_resume_may_change_what_does_not_change_the_result():
    saved = OmegaConf.to_container(compose_train([SMOKE]), resolve=True)
    shown = compose_train(
        [SMOKE, "trainer.progress=true", "data.num_workers=0", "trainer.checkpoint_every_steps=7"]
    )
    assert config_differences(saved, OmegaConf.to_container(shown, resolve=True)) == []
    # With data.loader=torch, the workers' seeds shape the augmented images: it differs then.
    torch_loader = OmegaConf.to_container(compose_train([SMOKE, "data.loader=torch"]))
    with_workers = compose_train([SMOKE, "data.loader=torch", "data.num_workers=0"])
    assert config_differences(torch_loader, OmegaConf.to_container(with_workers)) == [
        "data.num_workers=2 there, 0 now"
    ]


def test_a_refused_resume_names_every_setting_that_differs():
    saved = OmegaConf.to_container(compose_train([SMOKE]), resolve=True)
    other = compose_train([SMOKE, "model=linear", "optimizer.lr=0.2", "seed=3"])
    assert config_differences(saved, OmegaConf.to_container(other, resolve=True)) == [
        "model=small_cnn there, linear now",
        "optimizer.lr=0.05 there, 0.2 now",
        "seed=0 there, 3 now",
    ]


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


def test_tensorboard_on_a_full_disk_is_one_line_and_never_hides_the_runs_own_error(
    tmp_path, monkeypatch
):
    def full() -> None:  # what SummaryWriter.close raises when its thread found the disk full
        raise OSError(errno.ENOSPC, "No space left on device")

    board = TensorBoard(tmp_path / "run")
    closed = board.writer.close
    monkeypatch.setattr(board.writer, "close", full)
    with pytest.raises(UserError) as failed:
        board.close()
    assert str(failed.value) == (
        f"cannot write TensorBoard events in {tmp_path / 'run'} (No space left on device): "
        "the disk is full: free some space"
    )
    closed()
    # A run that already stopped (its checkpoint did not fit) reports that, not the events file.
    with pytest.raises(UserError, match=r"^the run's own$"), TensorBoard(tmp_path / "b") as again:
        closed = again.writer.close
        monkeypatch.setattr(again.writer, "close", full)
        raise UserError("the run's own")
    closed()


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


def test_a_sweep_given_as_a_checkpoint_lists_its_jobs(tmp_path):
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    for job in ("0_seed-0", "1_seed-1"):
        (tmp_path / job / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError) as caught:
        checkpoint.resolve(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path} is a sweep, not a run: give one of its jobs, ckpt_path={tmp_path}/<job> "
        "(its jobs: 0_seed-0, 1_seed-1)"
    )
