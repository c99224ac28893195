"""scripts/evaluate.py end to end: a tiny trained run evaluated through the real script, and every
kind of bad checkpoint refused in one line without running anything."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import RunsCode, run_in_process
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist import checkpoint, data, evaluate
from fmnist.engine import evaluate as engine_evaluate
from fmnist.errors import UserError
from fmnist.loaders import DeviceLoader
from fmnist.script_configs import EvaluateConfig, validate_evaluate

EVALUATE = "scripts/evaluate.py"


@pytest.fixture
def run(trained_run) -> Path:
    """The session's `experiment=smoke` run (its best.pt is what it tested)."""
    return trained_run


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """The run directory evaluated on the test split, with TensorBoard events."""
    out = tmp_path_factory.mktemp("eval") / "out"
    result = run_in_process(
        EVALUATE, f"ckpt_path={trained_run}", "tensorboard=true", f"hydra.run.dir={out}"
    )
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_eval_json_reproduces_the_training_metrics(run, evaluated):
    out, _ = evaluated
    results = json.loads((out / "eval.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert results["ckpt_path"] == str(run / "checkpoints" / "best.pt")
    assert results["training_metrics"] == metrics
    assert results["split"] == "test" and results["num_samples"] == 10000
    assert results["accuracy"] == metrics["test_acc"]  # exactly
    assert results["tta"] == results["run_tta"] == "flip"
    assert results["reproduces_recorded_accuracy"] is True
    assert results["loss"] == pytest.approx(metrics["test_loss"], rel=1e-9, abs=0)
    assert results["losses_agree"] and results["loss_torch"] == pytest.approx(results["loss"])
    confusion = torch.tensor(results["confusion"])
    assert confusion.sum() == 10000 and confusion.trace() == results["correct"]
    assert [row["support"] for row in results["per_class"]] == [1000] * 10
    assert [row["name"] for row in results["per_class"]] == list(data.CLASSES)
    for row in results["per_class"]:
        k = row["class"]
        assert row["recall"] == pytest.approx(confusion[k, k].item() / 1000)
    top = results["most_confused"][0]
    off = confusion.clone().fill_diagonal_(0)
    assert top["count"] == off.max().item()
    wrong = results["confidently_wrong"]
    assert 0 < len(wrong) <= 16 and all(w["true"] != w["predicted"] for w in wrong)
    confidences = [w["confidence"] for w in wrong]
    assert confidences == sorted(confidences, reverse=True)
    _, labels = data.load_split("test")
    assert all(labels[w["index"]].item() == w["true"] for w in wrong)
    for name in ("confusion.png", "wrong.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (events,) = out.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
    assert accumulator.Scalars("test/acc")[0].value == pytest.approx(results["accuracy"])
    assert accumulator.Tags()["images"] == ["test/confusion", "test/wrong"]


def test_report_prints_everything(run, evaluated):
    out, stdout = evaluated
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"Accuracy: {metrics['test_acc']:.4f}" in stdout
    assert "fmnist.losses.cross_entropy" in stdout and "nn.CrossEntropyLoss" in stdout
    assert "They agree: yes" in stdout
    assert f"Training recorded test_acc {metrics['test_acc']:.4f}: reproduced exactly" in stdout
    assert "precision  recall      F1  support" in stdout
    assert "Confusion matrix" in stdout and "Most confused (true -> predicted):" in stdout
    assert all(name in stdout for name in data.CLASSES)
    flag = json.loads((out / "eval.json").read_text())["ood"]
    assert flag["threshold"] == checkpoint.load(run)["ood"]["threshold"]
    assert 0 <= flag["flagged"] < 0.1  # the test split: near the 2.5% of training images
    assert f"The model's own flag (energy above {flag['threshold']:.2f}) marks " in stdout


def test_val_split_reproduces_the_recorded_val_accuracy(run, tmp_path):
    out = tmp_path / "out"
    best = run / "checkpoints" / "best.pt"
    result = run_in_process(EVALUATE, f"ckpt_path={best}", "split=val", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "eval.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert results["num_samples"] == 512
    assert results["accuracy"] == metrics["val_acc"]
    assert results["loss"] == pytest.approx(metrics["val_loss"], rel=1e-9, abs=0)


def test_another_tta_is_not_compared_with_the_recorded_accuracy(run, tmp_path):
    """The smoke run evaluated with flip TTA; `tta=flip_shift` averages 18 views instead, so its
    accuracy is reported as not comparable with the recorded one (not as DIFFERS)."""
    out = tmp_path / "out"
    best = run / "checkpoints" / "best.pt"
    result = run_in_process(
        EVALUATE, f"ckpt_path={best}", "split=val", "tta=flip_shift", f"hydra.run.dir={out}"
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "eval.json").read_text())
    val_acc = json.loads((run / "metrics.json").read_text())["val_acc"]
    assert (results["tta"], results["run_tta"]) == ("flip_shift", "flip")
    assert results["recorded_accuracy"] == val_acc
    assert results["reproduces_recorded_accuracy"] is None
    assert "TTA flip_shift (its run used TTA flip)" in result.stdout
    assert "as its run did" not in result.stdout and "DIFFERS" not in result.stdout
    assert (
        f"Training recorded val_acc {val_acc:.4f} with TTA flip: not comparable with TTA "
        "flip_shift." in result.stdout
    )


def test_evaluation_equals_the_training_loops_test_pass(run):
    """evaluate_checkpoint's numbers are engine.evaluate's on the training run's own test loader
    (normalised with the dataset's statistics rather than the checkpoint's), bit for bit."""
    loaded = checkpoint.load_model(run)
    compute = loaded.compute(torch.device("cpu"))
    images, labels = data.load_split("test")
    reference = engine_evaluate(
        compute.place(loaded.model),
        DeviceLoader(images, labels, loaded.setting("data.eval_batch_size", int), compute.device),
        compute,
        tta=loaded.setting("trainer.tta", str),
    )
    cfg = OmegaConf.merge(OmegaConf.structured(EvaluateConfig), {"ckpt_path": str(run)})
    ours, _ = evaluate.evaluate_checkpoint(validate_evaluate(cfg))
    assert ours["loss"] == reference.loss
    assert ours["accuracy"] == reference.accuracy
    assert torch.equal(torch.tensor(ours["confusion"]), reference.confusion)


def test_per_class_and_most_confused():
    confusion = torch.tensor([[5, 1, 0], [3, 2, 0], [0, 0, 0]])
    rows = evaluate.per_class(confusion, ["a", "b", "c"])
    assert rows[0]["precision"] == 5 / 8 and rows[0]["recall"] == 5 / 6
    assert rows[1]["f1"] == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert rows[2] == {
        "class": 2,
        "name": "c",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }
    pairs = evaluate.most_confused(confusion, ["a", "b", "c"], top=5)
    assert [(p["true_name"], p["predicted_name"], p["count"]) for p in pairs] == [
        ("b", "a", 3),
        ("a", "b", 1),
    ]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad(trained_run, tmp_path_factory) -> dict[str, str]:
    """Bad checkpoints, made once for the module; `marker` must never come to exist."""
    base = tmp_path_factory.mktemp("bad")
    marker = base / "MARKER"
    best = trained_run / "checkpoints" / "best.pt"
    good = checkpoint.load(best)
    made = {"tmp": str(base), "marker": str(marker)}

    def save(name: str, obj) -> None:
        torch.save(obj, base / name)
        made[name.removesuffix(".pt")] = str(base / name)

    (base / "text.pt").write_text("hello world\n")  # the unpickler raises a KeyError
    made["text"] = str(base / "text.pt")
    (base / "truncated.pt").write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    made["truncated"] = str(base / "truncated.pt")
    save("foreign.pt", {"weights": torch.zeros(3)})
    import torchvision

    save("torchvision.pt", torchvision.models.squeezenet1_1(num_classes=10).state_dict())
    other = {**good, "config": {**good["config"], "model": {**good["config"]["model"]}}}
    other["config"]["model"]["widths"] = [8, 16]
    save("other_model.pt", other)
    save("future.pt", {**good, "format": 99, "version": "9.0.0"})
    no_val = {**good, "config": {**good["config"], "data": {**good["config"]["data"]}}}
    no_val["config"]["data"]["val_size"] = 0
    save("no_val.pt", no_val)
    runs_target = {"_target_": "os.system", "command": f"touch {marker}"}
    save("code_target.pt", {**good, "config": {**good["config"], "model": runs_target}})
    save("torch_pickle.pt", {"format": 1, "model": RunsCode(marker)})
    with open(base / "pickle.pt", "wb") as f:
        pickle.dump({"format": 1, "model": RunsCode(marker)}, f)
    made["pickle"] = str(base / "pickle.pt")
    return made


BAD = [
    # (arguments, what the one error line must say)
    ([], "ckpt_path is required"),
    (["ckpt_path={tmp}/nowhere.pt"], "no checkpoint at {tmp}/nowhere.pt"),
    (["ckpt_path={tmp}"], "no checkpoint at {tmp}/checkpoints/best.pt"),
    (["ckpt_path={text}"], "{text} is not a readable checkpoint"),
    (["ckpt_path={truncated}"], "{truncated} is not a readable checkpoint"),
    (["ckpt_path={foreign}"], "{foreign} is a PyTorch file but not an fmnist checkpoint"),
    (["ckpt_path={torchvision}"], "{torchvision} is a PyTorch file but not an fmnist checkpoint"),
    (["ckpt_path={other_model}"], "holds the weights of another model than its config's"),
    (["ckpt_path={future}"], "{future} has checkpoint format 99"),
    (["ckpt_path={no_val}", "split=val"], "had data.val_size=0, so it has no validation images"),
    (["ckpt_path={code_target}"], "names the model 'os.system', which is not an fmnist model"),
    (["ckpt_path={torch_pickle}"], "{torch_pickle} was refused"),
    (["ckpt_path={pickle}"], "{pickle} was refused"),
]
# Through the script's own entry point too: exit code 2, one line, no files.
THROUGH_THE_SCRIPT = [0, 3, 7, 9, 10, 11, 12]


@pytest.mark.parametrize("case", range(len(BAD)), ids=[str(a)[:40] for a, _ in BAD])
def test_bad_checkpoints_are_refused(bad, case):
    arguments, message = BAD[case]
    cfg = OmegaConf.merge(
        OmegaConf.structured(EvaluateConfig),
        OmegaConf.from_dotlist([a.format(**bad) for a in arguments]),
    )
    with pytest.raises(UserError) as refused:
        evaluate.evaluate_checkpoint(validate_evaluate(cfg))
    assert message.format(**bad) in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not Path(bad["marker"]).exists()  # nothing in any file ever ran


@pytest.fixture(scope="module")
def refusals(bad, tmp_path_factory) -> dict[int, tuple[subprocess.CompletedProcess, Path]]:
    """The THROUGH_THE_SCRIPT cases, each in a fresh working directory."""

    def attempt(case: int) -> tuple[subprocess.CompletedProcess, Path]:
        cwd = tmp_path_factory.mktemp("cwd")
        arguments = [a.format(**bad) for a in BAD[case][0]]
        return run_in_process(EVALUATE, *arguments, cwd=cwd), cwd

    return {case: attempt(case) for case in THROUGH_THE_SCRIPT}


@pytest.mark.parametrize(
    "case", THROUGH_THE_SCRIPT, ids=[str(BAD[i][0])[:40] for i in THROUGH_THE_SCRIPT]
)
def test_the_script_refuses_in_one_line(bad, refusals, case):
    result, cwd = refusals[case]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert BAD[case][1].format(**bad) in lines[0]
    assert [p for p in cwd.rglob("*") if p.is_file()] == []  # no eval.json, no half-made run
    assert not Path(bad["marker"]).exists()  # nothing in any file ever ran


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"split": "all"}, "split=all is invalid: choose one of test, val, train"),
        ({"device": "tpu"}, "device=tpu is invalid"),
        ({"wrong_images": 0}, "wrong_images=0 is invalid"),
        ({"top_confused": 0}, "top_confused=0 is invalid"),
        ({"data": {"batch_size": 0}}, "data.batch_size=0 is invalid"),
    ],
)
def test_config_ranges(settings, message):
    cfg = OmegaConf.merge(OmegaConf.structured(EvaluateConfig), settings)
    cfg.ckpt_path = "x.pt"
    with pytest.raises(UserError, match=re.escape(message)):
        validate_evaluate(cfg)
