"""scripts/benchmark.py in its quick mode: it runs end to end and reports every figure."""

from __future__ import annotations

import json

import pytest
from conftest import run_script

from fmnist.benchmark import table
from fmnist.presets import TARGETS, preset_summary, time_to_accuracy

# Every figure, each from as little work as measures it at all.
QUICK = [
    "steps=2",
    "repeats=1",
    "data_subset=1024",
    "loss_calls=3",
    "loss_shapes=[[64,10]]",
    "agreement_steps=3",
    'presets=[smoke,"experiment=smoke seed=3 model.widths=[8,16] data.subset=256"]',
    "preset_repeats=1",
    "photos=2",
]


@pytest.mark.slow
def test_quick_benchmark_writes_every_figure(data_root, tmp_path):
    result = run_script("scripts/benchmark.py", *QUICK, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "benchmark.json").read_text())
    train = results["training_images_per_second"]
    assert train["standard_pipeline"] > 0 and train["fmnist"] > 0
    assert train["speedup"] == round(train["fmnist"] / train["standard_pipeline"], 2)
    assert results["data_path_seconds_per_epoch"]["samples"] == 1024
    assert [row["shape"] for row in results["loss_forward_backward_us"]] == [[64, 10]]
    assert results["loss_agreement"]["steps"] == 3
    assert results["loss_agreement"]["max_abs_difference"] < 1e-4
    assert "training images/s" in result.stdout and "loss fwd+bwd" in result.stdout
    smoke, seed_3 = results["presets"]
    assert smoke["preset"] == "smoke" and smoke["runs"] == 1 and 0.3 < smoke["test_acc"] < 0.9
    assert smoke["each"][0]["seed"] == 0 and smoke["test_acc_std"] == 0.0
    assert seed_3["each"][0]["seed"] == 3  # the preset's own seed, not the repeat's
    assert "preset smoke (1 run)" in result.stdout
    assert [row["target"] for row in results["time_to_accuracy"]] == list(TARGETS)
    assert "time to 91% test accuracy" in result.stdout and "not reached" in result.stdout
    photos = results["phone_photos"]
    assert photos["photos"] == 2 and photos["size"] == "4032x3024" and photos["seconds"] > 0
    assert "read+prepare+predict 2 JPEGs 4032x3024" in result.stdout


def test_time_to_accuracy_takes_the_quickest_preset_reaching_each_target():
    presets = [
        {"preset": "fast", "wall_seconds": 20, "train_seconds": 15, "test_acc": 0.922},
        {"preset": "default", "wall_seconds": 300, "train_seconds": 290, "test_acc": 0.941},
        {"preset": "slow", "wall_seconds": 400, "train_seconds": 390, "test_acc": 0.935},
    ]
    rows = time_to_accuracy(presets, (0.92, 0.93, 0.94, 0.95))
    assert [row.get("preset") for row in rows] == ["fast", "default", "default", None]


def test_a_presets_summary_is_median_times_and_mean_accuracy_over_its_seeds():
    runs = [
        {
            "preset": "best",
            "seed": seed,
            "wall_seconds": wall,
            "train_seconds": wall - 5,
            "test_acc": acc,
        }
        for seed, wall, acc in ((0, 700, 0.95), (1, 760, 0.94), (2, 710, 0.96))
    ]
    summary = preset_summary(runs)
    assert (summary["wall_seconds"], summary["train_seconds"]) == (710, 705)
    assert summary["test_acc"] == pytest.approx(0.95, abs=1e-12)
    assert summary["test_acc_std"] == pytest.approx(0.01, abs=1e-12)
    assert [run["seed"] for run in summary["each"]] == [0, 1, 2]


def test_the_table_gives_every_time_to_a_tenth_of_a_second():
    """metrics.json keeps a run's training time to 0.01 s, the wall time has 0.1 s: the table
    shows both alike."""
    preset = {"preset": "fast", "runs": 3, "wall_seconds": 126.7, "train_seconds": 119.41}
    results = {
        "training_images_per_second": {
            "standard_pipeline": 684,
            "fmnist": 1933,
            "speedup": 2.83,
            "fmnist_with_torch_loss": 1937,
            "scratch_vs_torch_loss": 0.998,
        },
        "data_path_seconds_per_epoch": {
            "samples": 55000,
            "standard_pipeline": 4.87,
            "fmnist": 0.145,
            "speedup": 34,
        },
        "loss_forward_backward_us": [],
        "presets": [{**preset, "test_acc": 0.9318, "test_acc_std": 0.0021}],
        "time_to_accuracy": [{"target": 0.93, **preset, "test_acc": 0.9318}],
    }
    *_, preset_line, target_line = (" ".join(line.split()) for line in table(results).splitlines())
    assert preset_line == "preset fast (3 runs) 126.7 s 93.18% ± 0.21% training 119.4 s"
    assert target_line == "time to 93% test accuracy 126.7 s fast training 119.4 s"
