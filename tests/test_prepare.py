"""fmnist.prepare: each step on synthetic pictures whose right answer is known, a dataset image
through the whole preparation, and the rule that flags doubtful predictions."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor

from fmnist import data
from fmnist import prepare as P
from fmnist.errors import UserError
from fmnist.script_configs import PredictConfig, PrepareConfig, class_index


def picture(height: int, width: int, background: int, box=None, value: int = 0) -> Tensor:
    """uint8 (height, width) of `background`, with the rectangle `box` (top, left, bottom,
    right) set to `value`."""
    pixels = torch.full((height, width), background, dtype=torch.uint8)
    if box:
        top, left, bottom, right = box
        pixels[top:bottom, left:right] = value
    return pixels


def test_grayscale_is_luminance_and_shows_transparency_on_white():
    rgb = Image.new("RGB", (3, 2), (255, 0, 0))
    rgb.putpixel((1, 0), (0, 255, 0))
    gray = P.grayscale(rgb)
    assert gray.shape == (2, 3) and gray.dtype == torch.uint8
    assert gray[0, 0].item() == 76 and gray[0, 1].item() == 150  # 0.299 * 255, 0.587 * 255
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((2, 2), (0, 0, 0, 255))  # one opaque black pixel
    gray = P.grayscale(rgba)
    assert gray[2, 2].item() == 0 and (gray.sum() == 255 * 15)


def test_a_16_bit_picture_is_scaled_to_8_bits(tmp_path):
    eight = torch.arange(256, dtype=torch.int32).view(16, 16)
    sixteen = Image.new("I;16", (16, 16))
    sixteen.putdata((eight * 257).flatten().tolist())  # 0..65535: what 8 bits * 257 gives
    sixteen.putpixel((0, 0), 128)  # 128 / 257 = 0.498: rounds to 0
    sixteen.putpixel((1, 0), 129 + 257)  # 1.502: rounds to 2
    expected = eight.to(torch.uint8)
    expected[0, 1] = 2
    sixteen.save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as png:  # a real 16-bit PNG, as Pillow opens it
        for image in (png, png.convert("I")):  # "I": as older Pillows open it
            assert image.mode in P.SIXTEEN_BIT_MODES
            assert torch.equal(P.grayscale(image), expected)


def test_inversion_is_decided_by_the_border():
    dark_on_light = picture(40, 30, 240, (5, 5, 35, 25), 20)
    assert P.light_background(dark_on_light)
    assert not P.light_background(P.invert(dark_on_light))
    # A large light object whose border is mostly black is not inverted, whatever its area.
    big_light_object = picture(40, 30, 0, (1, 1, 39, 29), 255)
    assert big_light_object.float().mean() > 200 and not P.light_background(big_light_object)
    assert torch.equal(P.invert(P.invert(dark_on_light)), dark_on_light)
    assert P.background_level(picture(10, 10, 0, (0, 0, 10, 4), 200)) == 0  # 12 of 36: median 0


def test_black_background():
    grey = picture(20, 20, 60, (5, 5, 15, 15), 255)
    black = P.black_background(grey)
    assert black[0, 0].item() == 0 and black[10, 10].item() == 255
    middle = picture(20, 20, 60, (5, 5, 15, 15), 160)
    assert P.black_background(middle)[10, 10].item() == round(100 * 255 / 195)
    on_black = picture(20, 20, 0, (5, 5, 15, 15), 100)
    assert torch.equal(P.black_background(on_black), on_black)
    light = picture(20, 20, 200, (5, 5, 15, 15), 30)  # invert=false on a light picture
    assert torch.equal(P.black_background(light), light)


def test_object_box_with_margin():
    pixels = picture(300, 200, 0, (50, 40, 250, 120), 200)  # 200 x 80: margin int(0.02 * 200)
    assert P.object_box(pixels) == (46, 36, 254, 124)
    assert torch.equal(P.crop(pixels, (46, 36, 254, 124)), pixels[46:254, 36:124])
    assert P.object_box(picture(300, 200, 0, (0, 0, 250, 200), 200)) == (0, 0, 255, 200)  # inside
    assert P.object_box(picture(28, 28, 0, (3, 5, 20, 9), 200)) == (3, 5, 20, 9)  # 0 margin at 28
    faint = picture(30, 30, 0, (10, 10, 20, 20), P.OBJECT_LEVEL)  # not clearly brighter
    assert P.object_box(faint) == (0, 0, 30, 30)  # nothing found: the whole picture


def test_fit_then_pad_to_a_centred_square():
    tall = P.fit(picture(200, 100, 255))
    assert tall.shape == (28, 14)
    wide = P.fit(picture(30, 90, 255))
    assert wide.shape == (9, 28)
    kept = picture(28, 11, 0, (3, 3, 9, 9), 77)
    assert torch.equal(P.fit(kept), kept)  # already 28 long: not resampled
    square = P.pad_to_square(tall)
    assert square.shape == (28, 28)
    assert (
        square[:, 7:21].eq(255).all() and square[:, :7].eq(0).all() and square[:, 21:].eq(0).all()
    )
    odd = P.pad_to_square(picture(28, 13, 255))  # 15 columns to add: 8 before, 7 after
    assert odd[:, 8:21].eq(255).all() and odd[:, :8].eq(0).all() and odd[:, 21:].eq(0).all()


def test_prepare_a_dark_object_off_centre_on_white():
    # A dark 120 x 60 rectangle near the corner of a 400 x 300 white picture.
    pixels = picture(400, 300, 255, (20, 200, 140, 260), 0)
    image = P.image_of(pixels)
    prepared = P.prepare(image, PrepareConfig())
    margin = int(P.MARGIN * 120)
    assert prepared.inverted and prepared.box == (
        20 - margin,
        200 - margin,
        140 + margin,
        260 + margin,
    )
    out = prepared.pixels
    assert out.shape == (28, 28) and out.dtype == torch.uint8
    columns = out.float().mean(0)
    assert columns[:7].max() == 0 and columns[21:].max() == 0  # black padding either side
    assert out[1:27, 8:20].float().mean() > 250  # the object, white, fills the height
    whole = P.prepare(image, PrepareConfig(crop=False)).pixels  # 400 x 300 fitted: 28 x 21
    assert whole[:, :4].max() == 0 and whole[:, 25:].max() == 0 and whole[20, 10] == 0
    assert whole[2:9, 19:21].float().mean() > 250  # the object: rows 1.4..9.8, columns 18..22
    kept = P.prepare(image, PrepareConfig(invert="false"))
    assert not kept.inverted and kept.box == (0, 0, 400, 300)  # all of it brighter than black
    assert kept.pixels[20, 10] == 255 and kept.pixels[5, 20] < 10  # still dark on light


@pytest.fixture(scope="module")
def test_images(data_root) -> tuple[Tensor, Tensor]:
    return data.load_split("test")


def test_a_dataset_image_comes_out_nearly_unchanged(test_images):
    images, _ = test_images
    images = images[:1000]
    prepared = torch.stack([P.prepare(P.image_of(x), PrepareConfig()).pixels for x in images])
    difference = (prepared.int() - images.int()).abs()
    identical = difference.flatten(1).amax(1).eq(0).float().mean().item()
    # Most are untouched; the others had an object a pixel short of the frame and are fitted
    # to it again (measured: 87.8% identical, mean |difference| 2.0 of 255).
    assert identical >= 0.85
    assert difference.float().mean().item() < 2.5
    assert not any(P.light_background(x) for x in images)  # none inverted


def test_doubts(test_images):
    images, _ = test_images
    assert P.doubts(images[0], 0.9) == []
    assert P.doubts(images[0], 0.42) == ["unsure: top probability 0.42 < 0.5"]
    white = torch.full((28, 28), 255, dtype=torch.uint8)
    assert P.doubts(white, 0.99) == [
        "unlike the training images: pixel mean 1.000 outside 0.0567..0.6033",
        "unlike the training images: pixel std 0.000 outside 0.1222..0.4497",
    ]
    # The typical ranges hold 99% of the training images, as their comment says.
    train, _ = data.load_split("train")
    scaled = train.float() / 255
    means, stds = scaled.mean((1, 2)), scaled.std((1, 2), unbiased=False)
    for values, (low, high) in ((means, P.TYPICAL_MEAN), (stds, P.TYPICAL_STD)):
        inside = ((values >= low) & (values <= high)).float().mean().item()
        assert inside == pytest.approx(0.99, abs=0.0005)


@pytest.mark.parametrize(
    ("given", "index"),
    [(4, 4), ("coat", 4), ("Ankle boot", 9), ("ankle_boot", 9), ("T-shirt", 0), ("top", 0)],
)
def test_target_by_index_or_name(given, index):
    assert class_index("target", given) == index


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"target": "robe"}, "target=robe is invalid: give a class index or name (0 T-shirt/top"),
        ({"target": 10}, "target=10 is invalid: a class is 0..9"),
        ({"prepare": {"invert": "maybe"}}, "prepare.invert=maybe is invalid: choose one of auto"),
        ({"device": "tpu"}, "device=tpu is invalid"),
        ({"images": [["a.png"]]}, "images=[['a.png']] is invalid: give image files"),
    ],
)
def test_predict_config_rules(settings, message):
    cfg = OmegaConf.merge(
        OmegaConf.structured(PredictConfig), {"ckpt_path": "x.pt", "images": ["a.png"]}, settings
    )
    with pytest.raises(UserError, match=re.escape(message)):
        OmegaConf.to_object(cfg)


def test_prepare_invert_true_arrives_as_a_bool():
    cfg = OmegaConf.merge(OmegaConf.structured(PrepareConfig), {"invert": True})
    assert OmegaConf.to_object(cfg).invert == "true"
