"""scripts/snapshot.py: the seed's 2.4361, and a model's printed q and loss against a computation
by hand from the same model."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_in_process, run_script
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fmnist import checkpoint, data, snapshot
from fmnist.engine import Compute, predict
from fmnist.errors import UserError
from fmnist.losses import cross_entropy, softmax
from fmnist.script_configs import SnapshotConfig, validate_snapshot

SNAPSHOT = "scripts/snapshot.py"
SEED_PROBS = [0.1058, 0.1043, 0.0988, 0.1066, 0.0875, 0.0881, 0.1027, 0.1046, 0.1057, 0.0958]
SEED_EXPANSION = (
    "-(0*log(0.1058)+0*log(0.1043)+0*log(0.0988)+0*log(0.1066)+1*log(0.0875)"
    "+0*log(0.0881)+0*log(0.1027)+0*log(0.1046)+0*log(0.1057)+0*log(0.0958)) = 2.4361"
)


def probs_argument(probs: list[float]) -> str:
    return "probs=[" + ",".join(map(str, probs)) + "]"


@pytest.mark.slow
def test_the_seed_probabilities_give_2_4361(tmp_path):
    out = tmp_path / "out"
    result = run_script(SNAPSHOT, probs_argument(SEED_PROBS), "target=4", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    assert SEED_EXPANSION in result.stdout
    assert "-log(q[4]) = -log(0.0875)" in result.stdout
    assert "cross_entropy_from_probs(q, target): 2.436116" in result.stdout
    assert "NLLLoss()(log(q), target): 2.436116" in result.stdout
    assert "ln 10 = 2.3026" in result.stdout and "They agree: yes" in result.stdout
    assert "4 Coat         0.0875  1   <- true class" in result.stdout
    saved = json.loads((out / "snapshot.json").read_text())
    assert saved["q"] == SEED_PROBS and saved["p"] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert saved["target"] == 4 and saved["index"] is None
    for value in (saved["loss"]["ours"], saved["loss"]["torch"]):
        assert value == pytest.approx(-math.log(0.0875), abs=1e-12)
    assert round(saved["loss"]["by_hand"], 4) == 2.4361
    assert not (out / "snapshot.png").exists()  # no image was involved


def manual(model: torch.nn.Module, index: int, split: str, compute: Compute, norm=None):
    """q and the loss of `model` on image `index`, computed here without fmnist.snapshot."""
    images, labels = data.load_split(split)
    mean, std = norm or (data.MEAN, data.STD)
    x = images[index : index + 1].float().div(255).sub(mean).div(std).unsqueeze(1)
    model.eval()
    with torch.no_grad():
        logits = predict(model, x, compute)
    target = labels[index : index + 1]
    q = softmax(logits.double(), dim=1)[0].tolist()
    return q, cross_entropy(logits, target).item(), int(target)


def check_printed(stdout: str, saved: dict, q: list[float], loss: float, target: int) -> None:
    """The printed and saved numbers are those of the manual computation."""
    assert saved["q"] == pytest.approx(q, abs=1e-7)
    assert saved["loss"]["ours"] == pytest.approx(loss, abs=1e-6)
    assert saved["loss"]["torch"] == pytest.approx(loss, abs=1e-6)
    for c, name in enumerate(data.CLASSES):
        mark = "   <- true class" if c == target else ""
        assert f"{c} {name:<13}{q[c]:.4f}  {int(c == target)}{mark}\n" in stdout
    terms = "+".join(f"{int(c == target)}*log({round(v, 4):.4f})" for c, v in enumerate(q))
    by_hand = -math.log(round(q[target], 4))
    assert f"= -({terms}) = {by_hand:.4f}\n" in stdout
    assert f"(logits, target): {loss:.6f}" in stdout
    assert "They agree: yes" in stdout and "ln 10 = 2.3026" in stdout


@pytest.mark.parametrize(
    ("arguments", "split", "target"),
    [([], "test", 4), (["model=linear", "seed=3", "target_class=7", "split=train"], "train", 7)],
    ids=["default", "linear"],
)
def test_untrained_model_snapshot_equals_a_manual_computation(
    data_root, tmp_path, arguments, split, target
):
    out = tmp_path / "out"
    result = run_in_process(SNAPSHOT, *arguments, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "snapshot.json").read_text())
    _, labels = data.load_split(split)
    index = int((labels == target).nonzero()[0, 0])  # the split's first image of the class
    assert (saved["index"], saved["target"], saved["split"]) == (index, target, split)
    name = "small_cnn" if not arguments else "linear"
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        model_cfg = compose("snapshot", overrides=[f"model={name}"]).model
    torch.manual_seed(0 if not arguments else 3)
    model = instantiate(model_cfg)
    q, loss, label = manual(model, index, split, Compute(torch.device("cpu"), False, False))
    assert label == target
    check_printed(result.stdout, saved, q, loss, target)
    assert f"on {split} image #{index}: true class {target}" in result.stdout
    assert (out / "snapshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def partly_trained(data_root, tmp_path_factory) -> Path:
    """A checkpoint of a small CNN stopped after three SGD steps, bf16 autocast, channels-last."""
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train", overrides=["model.widths=[8,16]", "model.convs_per_block=1", "seed=5"]
        )
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model).to(memory_format=torch.channels_last)
    compute = Compute(torch.device("cpu"), bf16=True, channels_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    images, labels = data.load_split("train")
    x = images[:128].float().div(255).sub(data.MEAN).div(data.STD).unsqueeze(1)
    for _ in range(3):
        with compute.autocast():
            logits = model(compute.images(x))
        loss = cross_entropy(logits.float(), labels[:128])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    checkpoint.save(
        path,
        model=model.state_dict(),
        config=OmegaConf.to_container(cfg, resolve=True),
        precision="bf16",
        epoch=0,
        step=3,
        metrics={},
    )
    return path


def test_checkpoint_snapshot_equals_a_manual_computation(partly_trained, tmp_path):
    out = tmp_path / "out"
    arguments = [f"ckpt_path={partly_trained}", "index=17", f"hydra.run.dir={out}"]
    result = run_in_process(SNAPSHOT, *arguments)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "snapshot.json").read_text())
    state = checkpoint.load(partly_trained)
    model = checkpoint.build_model(state).to(memory_format=torch.channels_last)
    compute = Compute(torch.device("cpu"), bf16=True, channels_last=True)
    q, loss, target = manual(model, 17, "test", compute)
    assert (saved["index"], saved["target"], saved["step"]) == (17, target, 3)
    assert saved["precision"] == "bf16"
    check_printed(result.stdout, saved, q, loss, target)
    assert str(partly_trained) in result.stdout


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

BAD = [
    (["index=10000"], "index=10000 is out of range: the test split has 10000 images (0..9999)"),
    (["target_class=10"], "target_class=10 is invalid: a class is 0..9"),
    ([probs_argument([0.5, 0.6] + [0] * 8), "target=0"], "probs sums to 1.1000, not 1"),
    ([probs_argument([-0.1, 1.1] + [0] * 8), "target=0"], "negative"),
]


@pytest.fixture(scope="module")
def refusals(data_root, tmp_path_factory) -> list[tuple[subprocess.CompletedProcess, Path]]:
    """Every BAD case through the script's entry point, each in a fresh working directory."""

    def attempt(arguments: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
        cwd = tmp_path_factory.mktemp("cwd")
        return run_in_process(SNAPSHOT, *arguments, cwd=cwd), cwd

    return [attempt(arguments) for arguments, _ in BAD]


@pytest.mark.parametrize("case", range(len(BAD)), ids=[str(a)[:40] for a, _ in BAD])
def test_bad_input_is_one_line(refusals, case):
    result, cwd = refusals[case]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert BAD[case][1] in lines[0]
    assert [p for p in cwd.rglob("*") if p.is_file()] == []  # no snapshot.json, no run dir


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"target": -1}, "target=-1 is invalid"),
        ({"index": -3}, "index=-3 is invalid"),
        ({"split": "val"}, "split=val is invalid: choose one of train, test"),
        ({"probs": [0.5, 0.5]}, "give 10 probabilities"),
        ({"probs": [0.1] * 10, "index": 3}, "leave out index"),
        ({"target": 3, "target_class": 4}, "disagree"),
    ],
)
def test_config_ranges(settings, message):
    cfg = OmegaConf.merge(OmegaConf.structured(SnapshotConfig), settings)
    with pytest.raises(UserError, match=re.escape(message)):
        validate_snapshot(cfg)


def test_probs_without_target_and_an_image_of_another_class():
    with pytest.raises(UserError, match="probs given without target"):
        snapshot.take(SnapshotConfig(probs=SEED_PROBS), None)
    labels = torch.tensor([4, 7, 4])
    assert snapshot.pick_image(labels, "test", None, None) == 0
    assert snapshot.pick_image(labels, "test", None, 7) == 1
    with pytest.raises(UserError, match=re.escape("index=1 is a Sneaker (class 7), not class 4")):
        snapshot.pick_image(labels, "test", 1, 4)


def test_the_seed_in_process():
    s = snapshot.from_probs(SEED_PROBS, 4)
    assert f"     = {SEED_EXPANSION}\n" in snapshot.report(s)
    assert s.loss_ours == s.loss_torch == pytest.approx(2.436116, abs=1e-6)
