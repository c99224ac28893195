"""What every script does with its command line before its work (fmnist/cli.py, configs/*.yaml):
its own `--help`, and Hydra's errors as one line (the cases: tests/test_bad_input.py)."""

from __future__ import annotations

import os

import pytest
from conftest import ROOT, run_in_process

from fmnist.config import OPTIONS

SCRIPTS = {  # a script: how its --help starts, and settings of its own it must list
    "evaluate": ("Evaluate", "ckpt_path: ???", "split: test", "tensorboard: false"),
    "export": ("Export", "ckpt_path: ???", "format: onnx"),
    "predict": ("Predict", "images: ???", "prepare:", "invert: auto"),
    "snapshot": (
        "One image",
        "target_class: null",
        "probs: null",
        f"model: {', '.join(OPTIONS['model'])}",
    ),
    "explain": ("Explain", "logits: null", "probs: null", "Give EITHER logits with targets"),
    "app": ("Serve the lesson", "ckpt_path: null", "port: 7860"),
    "benchmark": ("Measure fmnist", "steps: 40", "presets: []"),
    "benchmark_app": ("The page's API under load", "calls: 200", "clients: 8"),
}
ALL_SCRIPTS = sorted(path.stem for path in (ROOT / "scripts").glob("*.py"))


def test_every_script_is_checked_here():
    """A new script in scripts/ cannot be left out: its --help is checked here, and its
    mistakes in tests/test_bad_input.py (`test_every_script_refuses_an_unknown_setting`)."""
    assert sorted([*SCRIPTS, "train", "tune"]) == ALL_SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_only_the_scripts_own_settings(script, tmp_path):
    """Not the training groups (data, loss, optimizer, ...) that Hydra's help lists for every
    command, because fmnist.config registers them in Hydra's ConfigStore."""
    result = run_in_process(f"scripts/{script}.py", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    start, *settings = SCRIPTS[script]
    assert result.stdout.startswith(start)
    for setting in settings:
        assert setting in result.stdout, setting
    for group in ("optimizer", "scheduler", "loss:", "experiment", "trainer", "Hydra"):
        assert group not in result.stdout.replace("Hydra's own options", ""), group
    assert list(tmp_path.iterdir()) == []  # a help writes nothing


def test_trainings_help_lists_its_groups(tmp_path):
    result = run_in_process("scripts/train.py", "--help", cwd=tmp_path)
    assert result.stdout.startswith("Train a model on Fashion-MNIST:")
    assert "optimizer: sgd, adamw" in result.stdout
    assert "experiment: best, fast, gpu, photos, smoke" in result.stdout
    assert "hparams_search" not in result.stdout  # the search's, not training's


def test_the_searchs_help_lists_its_spaces_and_settings(tmp_path):
    """A search takes every training setting too: they apply to every trial."""
    result = run_in_process("scripts/tune.py", "--help", cwd=tmp_path)
    assert result.stdout.startswith("Search training settings with Optuna")
    assert "== Search spaces (hparams_search=NAME) ==\nfast, fast_pareto, smoke" in result.stdout
    assert "n_trials: 20" in result.stdout and "optimizer:" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_hydras_full_errors_are_left_as_they_were(tmp_path):
    """fmnist.cli asks Hydra to raise its errors while a script runs, and only then."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    result = run_in_process("scripts/train.py", "optimizer.lrr=0.1", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: optimizer.lrr ")
    assert os.environ.get("HYDRA_FULL_ERROR") == before
