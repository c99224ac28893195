"""Sweep summaries: one row per job, groups over seeds, missing jobs listed (fmnist/sweeps.py)."""

from __future__ import annotations

import json
import shlex
import statistics
from pathlib import Path

import pytest
from conftest import contents, run_script
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fmnist import sweeps
from fmnist.errors import UserError

OVERRIDES = ["experiment=smoke", "loss=scratch,torch", "seed=0,1,2"]


def fake_sweep(root: Path, results: dict[int, float | None], val: bool = True) -> Path:
    """A sweep directory as Hydra and fmnist leave it: multirun.yaml, and for each job number in
    `results` a job directory, finished (test accuracy given) or not (None); `val=False`: runs
    without a validation split (data.val_size=0), whose metrics have no val_* keys."""
    sweep = root / "2026-01-01_00-00-00"
    sweep.mkdir(parents=True)
    OmegaConf.save({"hydra": {"overrides": {"task": OVERRIDES}}}, sweep / "multirun.yaml")
    for number, test_acc in results.items():
        job = sweep / f"{number}_job"
        (job / ".hydra").mkdir(parents=True)
        if test_acc is not None:
            metrics = {
                "val_acc": test_acc + 0.01,
                "val_loss": 0.3,
                "test_acc": test_acc,
                "test_loss": 0.3,
                "epochs": 2,
                "train_seconds": 10.0 + number,
                "train_images_per_second": 1000.0,
            }
            if not val:
                metrics = {k: v for k, v in metrics.items() if not k.startswith("val_")}
            (job / "metrics.json").write_text(json.dumps(metrics))
    return sweep


def test_jobs_are_hydras_in_order():
    assert sweeps.jobs_of([*OVERRIDES, "trainer.resume=auto"]) == [
        ["experiment=smoke", f"loss={loss}", f"seed={seed}"]
        for loss in ("scratch", "torch")
        for seed in (0, 1, 2)
    ]


def test_summary_rows_groups_and_missing_jobs(tmp_path):
    accuracies = {0: 0.90, 1: 0.91, 2: 0.93, 3: 0.92, 4: None}  # job 5 never started
    sweep = fake_sweep(tmp_path, accuracies)
    sweeps.write_summary(sweep)
    summary = (sweep / "summary.md").read_text()
    assert "Every job: `experiment=smoke`. 4 of 6 jobs finished." in summary
    assert "| 0 | `loss=scratch seed=0` | finished | 0.9100 | 0.3000 | 0.9000 |" in summary
    assert "| 4 | `loss=torch seed=1` | unfinished |" in summary
    assert "| 5 | `loss=torch seed=2` | missing |" in summary
    assert "Not finished: job 4 (unfinished), job 5 (missing)." in summary
    scratch = [0.90, 0.91, 0.93]
    expected = f"{statistics.mean(scratch):.4f} ± {statistics.stdev(scratch):.4f}"
    assert f"| `loss=scratch` | 3 | {0.01 + statistics.mean(scratch):.4f} ±" in summary
    assert f"| 0.3000 ± 0.0000 | {expected} |" in summary
    assert "| `loss=torch` |" not in summary  # one finished seed: nothing to average
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert rows[0] == (
        "job,overrides,status,val_acc,val_loss,test_acc,test_loss,epochs,train_seconds,"
        "train_images_per_second"
    )
    assert rows[1].startswith("0,loss=scratch seed=0,finished,0.91,") and len(rows) == 7
    assert rows[6] == "5,loss=torch seed=2,missing,,,,,,,"


def test_seeds_without_a_validation_split(tmp_path):
    """A seed sweep with data.val_size=0 (experiment=fast): the over-seeds table leaves the
    validation columns blank (it raised KeyError)."""
    sweep = fake_sweep(tmp_path, {0: 0.90, 1: 0.92}, val=False)
    sweeps.write_summary(sweep)
    summary = (sweep / "summary.md").read_text()
    test_acc = f"{statistics.mean([0.90, 0.92]):.4f} ± {statistics.stdev([0.90, 0.92]):.4f}"
    assert f"| `loss=scratch` | 2 |  |  | {test_acc} |" in summary


def test_a_failed_job_in_the_summary(tmp_path):
    sweep = fake_sweep(tmp_path, {0: 0.90, 1: None, 2: 0.93})
    (sweep / "1_job" / "failed.txt").write_text("optimizer.lr=-1.0 is invalid: a | b\n")
    sweeps.write_summary(sweep)
    summary = (sweep / "summary.md").read_text()
    assert "2 of 6 jobs finished, 1 failed." in summary
    assert (
        "| 1 | `loss=scratch seed=1` | failed: optimizer.lr=-1.0 is invalid: a \\| b |" in summary
    )
    assert "Not finished: job 3 (missing), job 4 (missing), job 5 (missing)." in summary
    assert "| `loss=scratch` | 2 |" in summary  # the finished seeds only
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert rows[2] == "1,loss=scratch seed=1,failed: optimizer.lr=-1.0 is invalid: a | b,,,,,,,"


def test_what_varies_names_the_jobs():
    assert sweeps.varied([*OVERRIDES, "trainer.resume=auto"]) == ["loss", "seed"]
    assert sweeps.varied(["seed=0", "loss=scratch,torch", "+model.dropout=0.1"]) == ["loss"]
    assert sweeps.varied(["data.subset=256,512", "trainer.progress=false"]) == ["data.subset"]


@pytest.mark.parametrize(
    ("dirname", "name"),
    [
        ("loss-scratch", "3_loss-scratch"),
        ("loss-scratch_seed-0", "3_loss-scratch_seed-0"),
        ("model.widths-[8,16]", "3_model.widths-8+16"),
        ("data.root-/my data/x_optimizer.lr-1e+30", "3_data.root-+my+data+x_optimizer.lr-1e+30"),
        ("loss.weight-'[1, 2]'", "3_loss.weight-1+2"),
        ("", "3"),
    ],
)
def test_job_directory_names_need_no_quotes(tmp_path, dirname, name):
    """What Hydra's override_dirname gives (`-` between a key and its value, `_` between
    settings) made safe: the job's path reads as it is in an override, and in a shell."""
    assert sweeps.job_dir_name(str(tmp_path), 3, dirname) == name
    parsed = OverridesParser.create().parse_overrides([f"ckpt_path={tmp_path}/{name}"])
    assert parsed[0].value() == f"{tmp_path}/{name}"
    assert shlex.quote(name) == name


def test_a_resumed_sweep_keeps_its_jobs_directories(tmp_path):
    """Whatever they were named by (an older fmnist, other overrides): found by number."""
    sweep = fake_sweep(tmp_path, {0: 0.9})
    assert sweeps.job_dir_name(str(sweep), 0, "loss-scratch_seed-0") == "0_job"
    (sweep / "12" / ".hydra").mkdir(parents=True)
    assert sweeps.job_dir(sweep, 12) == sweep / "12" and sweeps.job_dir(sweep, 1) is None


def test_the_command_rerenders_a_summary(tmp_path, capsys):
    sweep = fake_sweep(tmp_path, {0: 0.9})
    sweeps.main([str(sweep)])
    assert "1 of 6 jobs finished" in capsys.readouterr().out
    assert (sweep / "summary.csv").is_file()
    with pytest.raises(UserError, match="is not a sweep directory"):
        sweeps.write_summary(tmp_path)


def test_the_command_refuses_a_missing_directory_in_one_line(tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exit:
        sweeps.main([str(nowhere)])
    assert exit.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {nowhere} is not a directory: give outputs/multirun/<time>\n"
    )


@pytest.mark.slow
def test_a_sweep_through_submitits_launcher_keeps_names_summary_and_resume(data_root, tmp_path):
    """hydra/launcher=submitit_local (the Slurm launcher's local twin: each job a process of its
    own, as on a cluster): the jobs keep their names, the summary is written, a job that failed
    for want of its data is retried by the resume once the data is there, and the finished job
    is kept byte for byte."""
    (tmp_path / "good").symlink_to(data_root)
    sweep = tmp_path / "sweep"
    given = [
        "-m",
        "experiment=smoke",
        "model.widths=[8,16]",
        "data.subset=256",
        "trainer.max_epochs=1",
        "data.root=good,later",
        "data.source_dirs=[]",
        "data.download=false",
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={sweep}",
    ]
    first = run_script("scripts/train.py", *given, cwd=tmp_path, timeout=600)
    assert first.returncode == 2, first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 jobs failed: job 1 (")
    jobs = [sweep / "0_data.root-good", sweep / "1_data.root-later"]
    assert all(job.is_dir() for job in jobs) and (sweep / "summary.md").is_file()
    kept = contents(jobs[0])
    (tmp_path / "later").symlink_to(data_root)
    again = run_script("scripts/train.py", *given, "trainer.resume=auto", cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr
    assert contents(jobs[0]) == kept
    assert (jobs[1] / "metrics.json").is_file() and not (jobs[1] / "failed.txt").exists()
    assert "2 of 2 jobs finished." in (sweep / "summary.md").read_text()
