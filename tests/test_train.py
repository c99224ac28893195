"""scripts/train.py end to end, as a real subprocess, and the pieces of its loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    SMOKE,
    TINY_CNN,
    events,
    hparams_experiment,
    hparams_sessions,
    run_in_process,
    run_script,
    scalars,
)
from omegaconf import OmegaConf

from fmnist import checkpoint, data
from fmnist.config import compose_train
from fmnist.engine import Position, train_epoch
from fmnist.predict import from_checkpoint
from fmnist.report import val_predictions
from fmnist.report.training import SHOWN_PREDICTIONS, TrainingReport
from fmnist.schedules import OneCycle
from fmnist.train import build, build_loss

WEIGHTS = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0]  # Shirt, the hardest class, twice


@pytest.fixture
def run(trained_run) -> Path:
    """The session's `experiment=smoke` run: 2 epochs of 8 steps."""
    return trained_run


def test_run_directory_layout(run):
    for name in (
        ".hydra/config.yaml",
        "train.log",
        "metrics.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "val_predictions.json",
    ):
        assert (run / name).is_file(), name
    log = (run / "train.log").read_text()
    assert "epoch 2/2" in log and "test loss" in log


def test_one_train_loss_point_per_optimizer_step(run):
    accumulator = events(run)
    steps = [event.step for event in accumulator.Scalars("train/loss")]
    assert steps == list(range(1, 17))  # 1024 / 128 = 8 steps per epoch, 2 epochs
    for tag in ("train/acc", "train/lr"):
        assert [event.step for event in accumulator.Scalars(tag)] == steps
    assert [event.step for event in accumulator.Scalars("val/acc")] == [8, 16]
    assert [event.step for event in accumulator.Scalars("test/acc")] == [16]
    assert accumulator.Tags()["images"] == [
        "train/batch",
        "val/confusion",
        "val/predictions",
        "test/confusion",
    ]
    # The schedule: warm-up to optimizer.lr (0.05) then down towards 0.
    lrs = [event.value for event in accumulator.Scalars("train/lr")]
    assert max(lrs) == pytest.approx(0.05) and lrs[-1] < lrs[len(lrs) // 2]


def test_hparams_are_in_the_same_events_file(run):
    plugins = events(run).PluginTagToContent("hparams")
    assert set(plugins) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    assert b"optimizer.lr" in plugins["_hparams_/session_start_info"]


def scalars_by_tag(run_dir: Path) -> dict[str, list]:
    accumulator = events(run_dir)
    return {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}


def check_hparams(run_dir: Path) -> dict:
    """One HPARAMS session; its metrics are logged scalar tags with values; its settings are
    those that describe a run, not paths, `_target_` strings or display switches."""
    (session,) = hparams_sessions(run_dir)
    logged = scalars_by_tag(run_dir)
    assert set(session["metrics"]) >= {"test/acc", "test/loss", "train/seconds"}
    for tag in session["metrics"]:
        assert logged.get(tag), f"{tag} is an hparams metric but was never logged"
    for key in ("seed", "loss", "model", "optimizer", "optimizer.lr", "scheduler"):
        assert key in session, key
    for key in ("data.batch_size", "data.val_size", "trainer.max_epochs", "trainer.tta"):
        assert key in session, key
    for word in (
        "_target_",
        "_partial_",
        "root",
        "source_dirs",
        "progress",
        "ckpt_path",
        "download",
        "num_workers",
        "resume",
        "deterministic",
        "checkpoint_every",
    ):
        assert not any(word in key for key in session), word
    return session


def test_hparams_metrics_are_the_logged_scalars(run):
    session = check_hparams(run)
    assert session["metrics"] == [
        "val/acc",
        "val/loss",
        "test/acc",
        "test/loss",
        "train/seconds",
        "train/images_per_second",
    ]
    assert session["loss"] == "scratch" and session["model"] == "small_cnn"
    assert session["data.subset"] == 1024 and session["optimizer.lr"] == pytest.approx(0.05)


def test_what_the_tensorboard_tutorial_shows(run):
    accumulator = events(run)
    tags = accumulator.Tags()
    assert tags["graph"]  # the model's graph
    assert len(accumulator.Images("train/batch")) == 1  # a training batch, once
    assert [image.step for image in accumulator.Images("val/predictions")] == [8, 16]
    pr = sorted(tag for tag in tags["tensors"] if tag.startswith("test/pr/"))
    assert len(pr) == 10 and "test/pr/T-shirt-top" in pr and "test/pr/Ankle boot" in pr
    assert "config/text_summary" in tags["tensors"] and tags["histograms"] == []
    projector = (run / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "test_features:00016"' in projector
    (folder,) = [p for p in run.iterdir() if p.is_dir() and p.name == "00016"]
    features = (folder / "test_features" / "tensors.tsv").read_text().splitlines()
    metadata = (folder / "test_features" / "metadata.tsv").read_text().splitlines()
    assert len(features) == len(metadata) == 2000 and len(features[0].split("\t")) == 128
    assert set(metadata) == set(data.CLASSES)
    assert (folder / "test_features" / "sprite.png").read_bytes()[:4] == b"\x89PNG"


def test_no_extra_run_folders(run):
    folders = sorted(p.name for p in run.iterdir() if p.is_dir())
    assert folders == [".hydra", "00016", "checkpoints"]  # 00016: the projector's, at step 16


def test_metrics_and_checkpoints_agree(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 16 and metrics["epochs"] == 2
    assert 0.5 < metrics["test_acc"] <= 1 and metrics["test_loss"] > 0
    assert metrics["train_images_per_second"] > 0
    best = checkpoint.load(run)
    assert best["metrics"] == metrics
    assert best["classes"][4] == "Coat" and best["config"]["data"]["subset"] == 1024
    model = checkpoint.build_model(best)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    last = checkpoint.load(run / "checkpoints" / "last.pt")
    assert last["step"] == 16 and last["epoch"] == 2 and "state" in last["optimizer"]


def test_val_predictions_follow_the_fixed_images_from_the_untrained_model(run):
    """val_predictions.json: q and loss of the 16 images drawn in val/predictions, at epoch 0
    (untrained: about ln 10) and after each epoch, the last as the final weights predict them."""
    record = val_predictions.load(run)
    assert record is not None and record.classes == list(data.CLASSES)
    assert record.pixels.shape == (SHOWN_PREDICTIONS, 28, 28) and len(record.labels) == 16
    assert [(e.epoch, e.step) for e in record.epochs] == [(0, 0), (1, 8), (2, 16)]
    untrained, *_, last = record.epochs
    assert abs(untrained.mean_loss - math.log(10)) < 0.2
    assert all(max(q) < 0.2 for q in untrained.q)  # close to 1/10 everywhere
    # The last epoch's numbers are what the run's last weights give these very pixels.
    final = from_checkpoint(str(run / "checkpoints" / "last.pt"), "cpu")
    q = torch.softmax(final.logits(record.pixels).double(), dim=1)
    torch.testing.assert_close(torch.tensor(last.q, dtype=torch.float64), q, rtol=0, atol=1e-5)
    picked = q[torch.arange(16), torch.tensor(record.labels)]
    torch.testing.assert_close(
        torch.tensor(last.loss, dtype=torch.float64), -picked.log(), rtol=0, atol=1e-5
    )
    assert last.mean_loss < untrained.mean_loss


def test_epoch_0s_forward_pass_draws_no_random_numbers(data_root, tmp_path):
    """The untrained model's predictions are one forward pass in eval mode: the RNG state, the
    weights and the BatchNorm statistics stay as they were, so training's results do too."""
    cfg = compose_train([SMOKE, "trainer.device=cpu"])
    training = build(cfg)
    state = {k: v.clone() for k, v in training.model.state_dict().items()}
    rng = torch.get_rng_state()
    with TrainingReport(tmp_path, cfg.trainer, enabled=True) as report:
        images, labels = next(training.data.val.epoch())
        report.follow(training, images[:16], labels[:16].cpu(), Position())
    assert torch.equal(torch.get_rng_state(), rng)
    assert training.model.training  # back in training mode
    for key, value in training.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    (epoch_0,) = val_predictions.load(tmp_path).epochs
    assert epoch_0.epoch == 0 and len(epoch_0.q) == 16


@pytest.mark.slow
def test_sweep_runs_one_job_per_loss(data_root, tmp_path):
    result = run_script(
        "scripts/train.py",
        "-m",
        "loss=scratch,torch",
        SMOKE,
        TINY_CNN,
        "data.subset=256",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [run.name for run in runs] == ["0_loss-scratch", "1_loss-torch"]  # what varies
    for run, loss in zip(runs, ("scratch", "torch"), strict=True):
        assert OmegaConf.load(run / ".hydra" / "overrides.yaml") == [  # the full overrides
            f"loss={loss}",
            SMOKE,
            TINY_CNN,
            "data.subset=256",
            "trainer.max_epochs=1",
        ]
        settings = hparams_experiment(run)  # what the sweep varies: HPARAMS' first column
        assert settings[0] == ("loss", True) and sum(differs for _, differs in settings) == 1
        assert (run / "metrics.json").is_file()
        assert checkpoint.load(run)["config"]["loss"]["_target_"].endswith("CrossEntropyLoss")
        assert check_hparams(run)["loss"] == loss
    summary = (tmp_path / "summary.md").read_text()
    assert (
        "| 0 | `loss=scratch` | finished |" in summary
        and "| 1 | `loss=torch` | finished |" in summary
    )
    assert (tmp_path / "summary.csv").read_text().splitlines()[0].startswith("job,overrides,status")
    evaluated = run_in_process(  # a job's path, as it is, in an override
        "scripts/evaluate.py", f"ckpt_path={runs[1]}", "split=val", f"hydra.run.dir={tmp_path}/e"
    )
    assert evaluated.returncode == 0, evaluated.stderr


@pytest.mark.parametrize("loss", ["scratch", "torch"])
def test_class_weights_give_pytorchs_weighted_loss(loss):
    """loss.weight=[...] builds the loss with those class weights (it crashed in Hydra)."""
    cfg = compose_train([f"loss={loss}", f"loss.weight={WEIGHTS}"])
    loss_fn = build_loss(cfg.loss, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=generator)
    targets = torch.randint(0, 10, (64,), generator=generator)
    expected = torch.nn.CrossEntropyLoss(weight=torch.tensor(WEIGHTS))(logits, targets)
    torch.testing.assert_close(loss_fn(logits, targets), expected)


@pytest.mark.slow
def test_weighted_training_through_the_script(data_root, tmp_path):
    """A few steps with class weights, for each loss: the same weighted loss at the first step."""
    result = run_in_process(
        "scripts/train.py",
        "-m",
        "loss=scratch,torch",
        f"loss.weight={WEIGHTS}".replace(" ", ""),
        SMOKE,
        TINY_CNN,
        "data.subset=512",
        "trainer.max_epochs=1",
        "trainer.precision=32",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    first = []
    for job in sorted(p for p in tmp_path.iterdir() if p.is_dir()):
        assert checkpoint.load(job)["config"]["loss"]["weight"] == WEIGHTS
        curve = scalars(job)
        assert [step for step, _ in curve] == [1, 2, 3, 4]
        first.append(curve[0][1])
    assert first[0] == pytest.approx(first[1], rel=1e-5)


def train_losses(tmp_path: Path, *overrides: str) -> dict[str, torch.Tensor]:
    """Per-step training losses of the same fp32 deterministic run with each loss."""
    curves = {}
    for loss in ("scratch", "torch"):
        run_dir = tmp_path / loss
        result = run_script(
            "scripts/train.py",
            *overrides,
            "trainer.progress=false",
            "data.val_size=0",
            "trainer.max_epochs=1",
            "trainer.precision=32",
            "trainer.deterministic=true",
            "trainer.progress=false",
            f"loss={loss}",
            f"hydra.run.dir={run_dir}",
        )
        assert result.returncode == 0, result.stderr
        assert not (run_dir / val_predictions.FILE).exists()  # no validation images to follow
        curves[loss] = torch.tensor([value for _, value in scalars(run_dir)])
    return curves


@pytest.mark.slow
def test_scratch_and_torch_train_softmax_regression_identically(data_root, tmp_path):
    """A convex model: 50 steps with our loss and with PyTorch's stay within float rounding."""
    curves = train_losses(tmp_path, "model=linear", "data.subset=12800")
    assert len(curves["scratch"]) == 50
    torch.testing.assert_close(curves["scratch"], curves["torch"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-1", "optimizer.lr=-1.0 is invalid: must be > 0"),
        ("data.batch_size=0", "data.batch_size=0 is invalid: must be at least 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is invalid"),
        ("trainer.precision=16", "choose one of auto, 32, bf16"),
        ("data.loader=fast", "choose one of device, torch"),
        ("loss.label_smoothing=1.5", "loss.label_smoothing=1.5 is invalid"),
        ("model.dropout=1", "model.dropout=1.0 is invalid"),
        ("data.val_size=60000", "leaves no training data"),
        ("data.subset=59000", "more than the 55000 training samples"),
        ("model.foo=1", "model.foo is not a setting of model=small_cnn: its settings are widths"),
        ("+model.foo=1", "model.foo is not a setting of model=small_cnn: its settings are widths"),
        ("loss=foo", "loss=foo is not an option of loss: choose one of scratch, torch"),
        ("data.batch_size=abc", "data.batch_size=abc is invalid: Value 'abc' of type 'str' could"),
    ],
)
def test_config_errors_are_one_clear_line(data_root, tmp_path, override, message):
    """Ours and those Hydra finds while composing (fmnist.cli): one line each."""
    result = run_in_process("scripts/train.py", override, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "checkpoints").exists()


def test_one_cycle_schedule():
    schedule = OneCycle(total_steps=10, warmup=0.2)
    assert [schedule(step) for step in range(10)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    )


@pytest.mark.slow
def test_histograms_are_there_when_asked_for(data_root, tmp_path):
    result = run_in_process(
        "scripts/train.py",
        SMOKE,
        TINY_CNN,
        "trainer.histograms_every=1",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    histograms = events(tmp_path).Tags()["histograms"]
    assert "weights/features.0.0.weight" in histograms
    assert "gradients/features.0.0.weight" in histograms and "weights/head.3.bias" in histograms


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
)
def test_every_preset_composes_and_trains(data_root, preset):
    """On the CPU, on a few images: every preset builds and takes its first steps."""
    cfg = compose_train([f"experiment={preset}", "trainer.device=cpu", "data.subset=2048"])
    training = build(cfg)
    steps = [step for _, step in zip(range(2), train_epoch(training, Position()), strict=False)]
    assert [step.number for step in steps] == [1, 2]
    assert all(math.isfinite(step.loss) for step in steps)
