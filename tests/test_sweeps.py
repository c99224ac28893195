"""Sweep summaries: one row per job, groups over seeds, missing jobs listed (fmnist/sweeps.py)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fmnist import sweeps
from fmnist.errors import UserError

OVERRIDES = ["experiment=smoke", "loss=scratch,torch", "seed=0,1,2"]


def fake_sweep(root: Path, results: dict[int, float | None]) -> Path:
    """A sweep directory as Hydra and fmnist leave it: multirun.yaml, and for each job number in
    `results` a job directory, finished (test accuracy given) or not (None)."""
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
