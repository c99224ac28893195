"""scripts/predict.py end to end: real Fashion-MNIST test images written to disk in disguises and
predicted as well as from the dataset, the printed top 3 and the files, an .onnx export giving
the same answers, a bad file among good ones, and the cross-entropy lesson per picture."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import png_header, run_in_process
from disguises import DISGUISES, write
from PIL import Image

from fmnist import checkpoint, data, engine, predict
from fmnist.errors import UserError
from fmnist.losses import cross_entropy, softmax
from fmnist.prepare import image_of, prepare
from fmnist.script_configs import PredictConfig, PrepareConfig, class_index

PREDICT = "scripts/predict.py"
COUNT = 1000  # test images per disguise: on the first 300 (92.3% right from the dataset, against
# 90.1% on 1000) a gap reads a point or two wider than it is, and two disguises missed the bar there
WITHIN = 0.03  # each disguise's accuracy within 3 points of the same images from the dataset


def as_png(image: Image.Image, path: Path) -> None:
    image.save(path.with_suffix(".png"))


def as_inverted_jpeg(image: Image.Image, path: Path) -> None:
    """Dark on white, 112 x 112, JPEG at quality 90."""
    disguise = DISGUISES["inverted_jpeg"]
    enlarged = disguise.make(np.asarray(image), np.random.default_rng(0))
    enlarged.save(path.with_suffix(".jpg"), quality=disguise.quality)


def predict_with(ckpt: Path, *arguments: str, out: Path):
    result = run_in_process(PREDICT, f"ckpt_path={ckpt}", *arguments, f"hydra.run.dir={out}")
    saved = json.loads((out / "predictions.json").read_text()) if out.exists() else None
    return result, saved


@pytest.mark.slow
def test_disguised_test_images_are_predicted_as_well_as_from_the_dataset(sturdier_run, tmp_path):
    """The first 1000 test images in every disguise of tests/disguises.py (noise, JPEG, uneven
    light, shadow, texture, colour, small, turned, ...), predicted through the script in one
    call, against the same images taken from the dataset."""
    images, labels = data.load_split("test")
    for name in DISGUISES:
        (tmp_path / name).mkdir()
        for i in range(COUNT):
            write(name, images[i].numpy(), i, tmp_path / name)
    folders = ",".join(str(tmp_path / name) for name in DISGUISES)
    result, saved = predict_with(sturdier_run, f"images=[{folders}]", out=tmp_path / "out")
    assert result.returncode == 0, result.stderr

    loaded = checkpoint.load_model(sturdier_run)
    compute = loaded.compute(torch.device("cpu"))
    x = data.normalise(images[:COUNT], loaded.mean, loaded.std).unsqueeze(1)
    with torch.no_grad():
        logits = engine.predict(
            compute.place(loaded.model), x, compute, loaded.setting("trainer.tta", str)
        )
    reference = int((logits.argmax(1) == labels[:COUNT]).sum())  # pictures right, as counts:
    right, flagged = {}, {}  # a gap of exactly 3 points is 30 pictures, not 0.0300000135
    for name in DISGUISES:
        rows = [p for p in saved["predictions"] if Path(p["file"]).parent.name == name]
        assert len(rows) == COUNT
        right[name] = sum(
            p["top"][0]["class"] == labels[int(Path(p["file"]).stem)].item() for p in rows
        )
        flagged[name] = sum(bool(p["doubts"]) for p in rows) / COUNT
    print(f"\n{'disguise':15s} accuracy  vs dataset ({reference / COUNT:.4f})  flagged")
    for name in DISGUISES:
        change = (right[name] - reference) / COUNT
        print(f"{name:15s} {right[name] / COUNT:.4f}   {change:+.4f}  {flagged[name]:.3f}")
    assert reference > 0.8 * COUNT
    for name, count in right.items():
        assert abs(count - reference) <= round(WITHIN * COUNT), (name, count, reference, COUNT)
    old = ("png", "inverted_jpeg", "canvas")
    assert all(
        p["inverted"] == (Path(p["file"]).parent.name != "png")
        for p in saved["predictions"]
        if Path(p["file"]).parent.name in old
    )
    turned = [p for p in saved["predictions"] if Path(p["file"]).parent.name == "turned_10"]
    # Turned back by 5 degrees or more: 902 of the 1000 measured (the first 300: 227 with the box
    # alone, 272 with the mirror axis and the shadow trim before it asked whether a part fades).
    assert sum(abs(p["turned_degrees"]) >= 5 for p in turned) > 0.85 * COUNT

    # Unprepared, the canvas pictures are all one class (the complaint that every photo is a
    # "Bag"), and every one of them is flagged as unlike the training images.
    raw, unprepared = predict_with(
        sturdier_run,
        f"images=[{tmp_path / 'canvas'}]",
        "prepare.invert=false",
        "prepare.crop=false",
        out=tmp_path / "raw",
    )
    assert raw.returncode == 0, raw.stderr
    rows = unprepared["predictions"]
    correct = sum(p["top"][0]["class"] == labels[int(Path(p["file"]).stem)].item() for p in rows)
    classes = {p["top"][0]["name"] for p in rows}
    print(f"unprepared canvas: accuracy {correct / COUNT:.4f}, predicted {classes}")
    assert correct / COUNT < 0.5
    assert all(any("unlike the training images" in d for d in p["doubts"]) for p in rows)


# --------------------------------------------------------------------------------------------
# The report and the files, with the session's smoke run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pictures(data_root, tmp_path_factory) -> Path:
    """Six test images (3 as PNG, 3 as inverted JPEG) and a text file, in one directory."""
    folder = tmp_path_factory.mktemp("pictures")
    images, _ = data.load_split("test")
    for i in range(6):
        (as_png if i % 2 == 0 else as_inverted_jpeg)(image_of(images[i]), folder / f"{i}")
    (folder / "notes.txt").write_text("not a picture\n")
    return folder


@pytest.fixture(scope="module")
def predicted(trained_run, pictures, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "out"
    return (*predict_with(trained_run, f"images=[{pictures}]", out=out), out)


def test_top3_printed_and_saved(trained_run, pictures, predicted):
    result, saved, out = predicted
    assert result.returncode == 0, result.stderr
    files = sorted(pictures.glob("[0-9].*"))
    assert [p["file"] for p in saved["predictions"]] == [str(f) for f in files]
    assert f"Skipped in {pictures}, not pictures by their names: notes.txt" in result.stdout

    loaded = checkpoint.load_model(trained_run)
    compute = loaded.compute(torch.device("cpu"))
    prepared = torch.stack([prepare(Image.open(f), PrepareConfig()).pixels for f in files])
    x = data.normalise(prepared, loaded.mean, loaded.std).unsqueeze(1)
    with torch.no_grad():
        model = compute.place(loaded.model)
        logits = engine.predict(model, x, compute, loaded.setting("trainer.tta", str))
    q = softmax(logits.double(), dim=1)
    lines = result.stdout.splitlines()
    for p, expected in zip(saved["predictions"], q, strict=True):
        assert p["q"] == pytest.approx(expected.tolist(), abs=1e-9)
        top = expected.argsort(descending=True)[:3].tolist()
        assert [t["class"] for t in p["top"]] == top
        assert [t["name"] for t in p["top"]] == [data.CLASSES[c] for c in top]
        (line,) = [line for line in lines if line.startswith(p["file"] + " ")]
        printed = [f"{data.CLASSES[c]} {expected[c].item():.3f}" for c in top]
        assert all(cell in line for cell in printed)
        assert ("! " in line) == bool(p["doubts"])
        if expected.max() < 0.5:
            assert f"unsure: top probability {expected.max().item():.2f} < 0.5" in p["doubts"]
    assert saved["model"]["kind"] == "checkpoint" and saved["model"]["tta"] == "flip"
    assert saved["prepare"] == {"invert": "auto", "crop": True} and saved["failed"] == []
    assert "top probability is under 0.5" in saved["doubt_rule"]

    rows = list(csv.DictReader(io.StringIO((out / "predictions.csv").read_text())))
    assert [row["file"] for row in rows] == [str(f) for f in files]
    for row, p in zip(rows, saved["predictions"], strict=True):
        assert row["class_1"] == p["top"][0]["name"]
        assert float(row["probability_3"]) == pytest.approx(p["top"][2]["probability"], abs=1e-6)
        assert row["doubts"] == "; ".join(p["doubts"])
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_lesson_on_a_picture(trained_run, pictures, tmp_path):
    picture = pictures / "0.png"  # an Ankle boot, said to be a Sneaker
    result, saved = predict_with(
        trained_run, f"images=[{picture}]", "target=sneaker", out=tmp_path / "out"
    )
    assert result.returncode == 0, result.stderr
    (p,) = saved["predictions"]
    lesson = p["lesson"]
    assert lesson["target"] == 7 and lesson["picture"] == str(picture)
    assert lesson["q"] == pytest.approx(p["q"], abs=1e-12)
    logits = torch.tensor([lesson["logits"]])
    assert lesson["loss"]["ours"] == pytest.approx(cross_entropy(logits, torch.tensor([7])).item())
    assert lesson["loss"]["ours"] == pytest.approx(-math.log(p["q"][7]), abs=1e-5)
    assert lesson["loss"]["agree"] is True
    assert f"on {picture}: true class 7 (Sneaker)." in result.stdout
    terms = "+".join(f"{int(c == 7)}*log({round(v, 4):.4f})" for c, v in enumerate(p["q"]))
    assert f"= -({terms}) = " in result.stdout
    assert "They agree: yes" in result.stdout
    top = p["top"][0]
    if top["class"] != 7:
        assert f"The top class is {top['name']} (q = {top['probability']:.4f}), not Sneaker" in (
            result.stdout
        )


@pytest.mark.slow
def test_an_onnx_export_gives_the_same_top3(exported, pictures, predicted, tmp_path):
    _, by_checkpoint, _ = predicted
    result, by_onnx = predict_with(exported["onnx"], f"images=[{pictures}]", out=tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert by_onnx["model"]["kind"] == "onnx" and by_onnx["model"]["tta"] == "flip"
    for ours, theirs in zip(by_checkpoint["predictions"], by_onnx["predictions"], strict=True):
        assert [t["class"] for t in ours["top"]] == [t["class"] for t in theirs["top"]]
        # float32 against the checkpoint's bf16 autocast: close, not equal
        assert theirs["q"] == pytest.approx(ours["q"], abs=0.01)


def test_one_bad_file_among_good_ones(trained_run, pictures, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes((pictures / "0.png").read_bytes()[:60])
    missing = tmp_path / "missing.jpg"
    result, saved = predict_with(
        trained_run,
        f"images=[{pictures / '0.png'},{bad},{pictures / '1.jpg'},{missing}]",
        out=tmp_path / "out",
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        f"error: {missing} does not exist (relative paths start at {Path.cwd()}): check the path"
    )
    assert lines[1].startswith(f"error: {bad} could not be read (") and "copy it again" in lines[1]
    assert lines[2].startswith("error: 2 of the inputs could not be predicted (each named above)")
    assert "Traceback" not in result.stderr
    assert [p["file"] for p in saved["predictions"]] == [
        str(pictures / "0.png"),
        str(pictures / "1.jpg"),
    ]
    assert len(saved["failed"]) == 2 and (tmp_path / "out" / "predictions.csv").exists()


def test_odd_pictures_are_predicted_and_each_flagged_in_one_line(trained_run, pictures, tmp_path):
    """One flat colour, all noise, 3x3 and 4000x20 beside a good picture: each is predicted, each
    odd one carries its reason, and the good one is not held back."""
    rng = np.random.default_rng(0)
    Image.new("RGB", (640, 480), (90, 140, 200)).save(tmp_path / "flat.png")
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(
        tmp_path / "noise.png"
    )
    Image.fromarray(rng.integers(0, 256, (3, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    long = np.full((20, 4000), 240, dtype=np.uint8)
    long[4:16, 500:3500] = 30
    Image.fromarray(long).save(tmp_path / "long.png")
    good = tmp_path / "good.png"
    good.write_bytes((pictures / "0.png").read_bytes())
    result, saved = predict_with(trained_run, f"images=[{tmp_path}]", out=tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    doubts = {Path(p["file"]).name: p["doubts"] for p in saved["predictions"]}
    assert sorted(doubts) == ["flat.png", "good.png", "long.png", "noise.png", "tiny.png"]
    assert "no object found: nothing stands out from the background" in doubts["flat.png"]
    assert any(d.startswith("no object found") for d in doubts["noise.png"])
    assert doubts["tiny.png"] and doubts["long.png"]
    lines = result.stdout.splitlines()
    for name in ("flat.png", "noise.png", "tiny.png", "long.png"):
        (line,) = [line for line in lines if line.startswith(str(tmp_path / name) + " ")]
        assert "! " in line


# --------------------------------------------------------------------------------------------
# Reading pictures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [10_000, 20_000], ids=["over the limit", "over twice the limit"])
def test_decompression_bombs_are_refused(tmp_path, side):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(side, side))  # 100 and 400 megapixels; Pillow's limit is 89
    with pytest.raises(UserError, match="too large to decode safely") as refused:
        predict.read_picture(bomb)
    pixels = f"({side * side:,} pixels; Pillow refuses more than {Image.MAX_IMAGE_PIXELS:,}"
    assert str(bomb) in str(refused.value) and pixels in str(refused.value)


def test_a_phone_sized_jpeg_is_decoded_smaller_and_its_box_given_in_its_own_pixels(tmp_path):
    photo = np.full((3024, 4032, 3), 230, dtype=np.uint8)
    photo[800:2400, 1600:2400] = (40, 40, 60)  # an object 1600 x 800 pixels
    Image.fromarray(photo).save(tmp_path / "phone.jpg", quality=90)
    image = predict.read_picture(tmp_path / "phone.jpg")
    assert image.size == (504, 378) and image.info[predict.SCALE] == 8  # libjpeg's 1/8
    picture = predict.load(tmp_path / "phone.jpg", PredictConfig(ckpt_path="x", images=["x"]))
    box = picture.box()
    assert box is not None
    assert all(abs(a - b) <= 40 for a, b in zip(box, (800, 1600, 2400, 2400), strict=True))
    small = tmp_path / "small.jpg"
    Image.fromarray(photo[:300, :400]).save(small)
    assert predict.read_picture(small).size == (400, 300)  # small enough: decoded in full


def test_a_gif_first_frame_and_a_webp(tmp_path):
    frames = [Image.new("L", (40, 30), value) for value in (0, 255)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert predict.read_picture(tmp_path / "a.gif").convert("L").getpixel((0, 0)) == 0
    Image.new("RGB", (20, 20), (255, 255, 255)).save(tmp_path / "b.webp")
    assert predict.read_picture(tmp_path / "b.webp").size == (20, 20)


def test_a_quoted_target_is_an_index():
    """target='3' arrives as the string "3": it is class 3, not an unknown class name."""
    assert class_index("target", "3") == 3 and class_index("target", " 3") == 3
    with pytest.raises(UserError, match=r"target=10 is invalid: a class is 0\.\.9"):
        class_index("target", "10")


def test_collect(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "photos").mkdir()
    for name in ("b.JPG", "a.png", "c.txt", "d.webp"):
        (tmp_path / "photos" / name).write_bytes(b"")
    files, problems, notes = predict.collect(
        [str(tmp_path / "photos"), str(tmp_path / "empty"), str(tmp_path / "c.txt")]
    )
    assert [f.name for f in files] == ["a.png", "b.JPG", "d.webp"]
    assert notes == [f"Skipped in {tmp_path / 'photos'}, not pictures by their names: c.txt"]
    assert problems[0].startswith(f"{tmp_path / 'empty'} holds no picture files (.png, ")
    assert problems[1].startswith(f"{tmp_path / 'c.txt'} does not exist")
