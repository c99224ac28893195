"""fmnist.ood: the energy is -logsumexp and its threshold a quantile, a finished run stores it,
the flag separates test images from pictures that are not clothing, and a checkpoint from before
it still predicts, saying the flag is unavailable."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_in_process
from PIL import Image

from fmnist import checkpoint, data, engine, ood
from fmnist.engine import Compute
from fmnist.prepare import image_of


def test_the_energy_is_minus_logsumexp_and_the_threshold_a_quantile():
    logits = torch.tensor([[0.0, 0.0], [10.0, -5.0], [-3.0, -3.0]])
    expected = [-math.log(2), -math.log(math.exp(10) + math.exp(-5)), 3 - math.log(2)]
    assert ood.energy(logits).tolist() == pytest.approx(expected)

    class Scaled(torch.nn.Module):  # logits: the mean pixel times (1, 0): energy ~ -mean
        def forward(self, x):
            mean = x.flatten(1).mean(1, keepdim=True)
            return torch.cat([mean * 50, torch.full_like(mean, -50.0)], 1)

    images = torch.arange(1000).remainder(256).to(torch.uint8).view(-1, 1, 1).expand(-1, 28, 28)
    compute = Compute(torch.device("cpu"), False, False)
    found = ood.fit(Scaled(), images, 0.0, 1.0, compute, "none")
    energies = -torch.logsumexp(
        torch.stack([images[:, 0, 0] / 255 * 50, torch.full((1000,), -50.0)], 1).double(), 1
    )
    assert found.images == 1000
    assert found.value == pytest.approx(torch.quantile(energies, ood.QUANTILE).item(), abs=1e-4)
    assert ood.doubt(found.value, found.value) is None
    assert ood.doubt(found.value + 1, found.value).startswith("unlike the training images")


def flagged_shares(run) -> dict[str, float]:
    """The share of the first 1000 test images and of 200 pictures of uniform noise whose energy
    under `run`'s model is above its stored threshold."""
    threshold = ood.from_checkpoint(checkpoint.load(run))
    assert threshold is not None
    loaded = checkpoint.load_model(run)
    compute = loaded.compute(torch.device("cpu"))
    images, _ = data.load_split("test")
    noise = torch.randint(0, 256, (200, 28, 28), generator=torch.Generator().manual_seed(0))
    shares = {}
    for name, pixels in (("test", images[:1000]), ("noise", noise.to(torch.uint8))):
        x = data.normalise(pixels, loaded.mean, loaded.std).unsqueeze(1)
        with torch.no_grad():
            logits = engine.predict(loaded.model, x, compute, "flip")
        shares[name] = (ood.energy(logits) > threshold.value).float().mean().item()
    print(f"\nflagged: {shares}")
    return shares


def test_a_finished_run_stores_its_threshold(trained_run):
    best = checkpoint.load(trained_run)
    threshold = ood.from_checkpoint(best)
    assert threshold is not None and best["ood"]["score"] == "energy"
    assert threshold.images == 1024  # the smoke run's training images, all of them
    assert flagged_shares(trained_run)["test"] < 0.1


@pytest.mark.slow
def test_a_trained_models_flag_marks_noise_and_few_test_images(sturdier_run):
    """On a model trained for real (the smoke run's 16 steps leave its energies too close
    together: noise falls inside the test images' range)."""
    shares = flagged_shares(sturdier_run)
    assert shares["test"] < 0.05 and shares["noise"] > 0.9


def test_a_checkpoint_without_a_threshold_still_predicts(trained_run, tmp_path):
    old = checkpoint.load(trained_run)
    del old["ood"]
    checkpoint.save(tmp_path / "old.pt", **old)
    images, _ = data.load_split("test")
    image_of(images[0]).save(tmp_path / "coat.png")
    out = tmp_path / "out"
    result = run_in_process(
        "scripts/predict.py",
        f"ckpt_path={tmp_path / 'old.pt'}",
        f"images=[{tmp_path / 'coat.png'}]",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr
    assert ood.UNAVAILABLE in result.stdout.replace("\n  ", " ")
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["ood"]["available"] is False and saved["predictions"][0]["energy"] < 0
    assert not any("to the model" in d for d in saved["predictions"][0]["doubts"])


def test_a_runs_last_pt_points_to_its_best_pt_for_the_flag(trained_run):
    """The threshold is fitted for best.pt's weights alone: evaluating last.pt says where the
    flag is, not "retrain it"."""
    last = trained_run / "checkpoints" / "last.pt"
    assert ood.rule(None, str(last)) == (
        f"{ood.UNAVAILABLE} (a run fits it for its best.pt, the weights it tested, not for "
        f"last.pt): give ckpt_path={trained_run} to use best.pt with its flag."
    )
    assert ood.rule(None, "elsewhere/checkpoints/last.pt").endswith(
        "when it finishes (trainer.resume=auto)."
    )
    assert ood.rule(None, "old.pt").endswith("retrain it to get one.")


@pytest.mark.slow
def test_pictures_that_are_not_clothing_are_flagged(sturdier_run, tmp_path):
    """Through the script: a photograph shipped with scikit-image and noise are flagged by the
    model's own score, a test image is not."""
    from skimage import data as samples

    Image.fromarray(samples.camera()).save(tmp_path / "camera.png")
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    images, _ = data.load_split("test")
    image_of(images[1]).save(tmp_path / "pullover.png")
    out = tmp_path / "out"
    result = run_in_process(
        "scripts/predict.py",
        f"ckpt_path={sturdier_run}",
        f"images=[{tmp_path}]",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "predictions.json").read_text())
    flagged = {
        p["file"].rsplit("/", 1)[1]: any("to the model" in d for d in p["doubts"])
        for p in saved["predictions"]
    }
    energies = {p["file"].rsplit("/", 1)[1]: p["energy"] for p in saved["predictions"]}
    print(f"\n{energies} (threshold {saved['ood']['threshold']})")
    assert flagged == {"camera.png": True, "noise.png": True, "pullover.png": False}
