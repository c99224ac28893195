"""fmnist.prepare: each step on synthetic pictures whose right answer is known, a dataset image
through the whole preparation, and the rule that flags doubtful predictions."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from scipy import ndimage
from torch import Tensor

from fmnist import data
from fmnist import prepare as P
from fmnist.errors import UserError
from fmnist.prepare import background, distance, flags, frame, mask, pixels, turn
from fmnist.script_configs import PredictConfig, PrepareConfig, class_index


def picture(height: int, width: int, background: int, box=None, value: int = 0) -> Tensor:
    """uint8 (height, width) of `background`, with the rectangle `box` (top, left, bottom,
    right) set to `value`."""
    canvas = torch.full((height, width), background, dtype=torch.uint8)
    if box:
        top, left, bottom, right = box
        canvas[top:bottom, left:right] = value
    return canvas


def test_grayscale_is_luminance_and_shows_transparency_on_white():
    rgb = Image.new("RGB", (3, 2), (255, 0, 0))
    rgb.putpixel((1, 0), (0, 255, 0))
    gray = pixels.grayscale(rgb)
    assert gray.shape == (2, 3) and gray.dtype == torch.uint8
    assert gray[0, 0].item() == 76 and gray[0, 1].item() == 150  # 0.299 * 255, 0.587 * 255
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((2, 2), (0, 0, 0, 255))  # one opaque black pixel
    gray = pixels.grayscale(rgba)
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
            assert image.mode in pixels.SIXTEEN_BIT_MODES
            assert torch.equal(pixels.grayscale(image), expected)


def test_the_background_is_measured_on_the_border_robustly():
    dark_on_light = picture(40, 30, 240, (5, 5, 35, 25), 20)
    found, light = background.find_background(pixels.planes(pixels.image_of(dark_on_light))[0])
    assert found.colour == [240.0] and found.level == 240 and found.noise == 0 and light is None
    assert found.threshold == background.OBJECT_LEVEL  # a flat border: the dataset's closeness
    # An object covering a third of the border moves neither the level nor the noise.
    reaching = picture(30, 30, 0, (0, 0, 30, 10), 200)
    found, _ = background.find_background(pixels.planes(pixels.image_of(reaching))[0])
    assert found.colour == [0.0] and found.noise == 0
    # Noise of standard deviation 12, measured after the smoothing the threshold is applied to.
    rng = np.random.default_rng(0)
    noisy = (200 + rng.normal(0, 12, (300, 400, 1))).astype(np.float32)
    found, _ = background.find_background(noisy)
    smoothed = background.smooth(noisy)[..., 0].std()
    assert found.noise == pytest.approx(smoothed, rel=0.1) and 2 < found.noise < 6
    assert found.threshold == pytest.approx(background.NOISE_K * found.noise, abs=0.01)


def test_contrast_makes_the_object_light_on_black():
    white = background.Background([240.0], 240.0, 0.0, 13.0, False)
    dark_on_light = np.array([[[240.0], [20.0]]], dtype=np.float32)
    assert distance.contrast(dark_on_light, white, "auto").tolist() == [[0.0, 220.0]]
    # "true": 255 - 20, its level 15 made black; "false": as is
    inverted = distance.contrast(dark_on_light, white, "true")
    assert inverted.tolist() == [[0.0, pytest.approx((235 - 15) * 255 / 240)]]
    assert distance.contrast(dark_on_light, white, "false").tolist() == [[240.0, 20.0]]
    grey = background.Background([60.0], 60.0, 0.0, 13.0, False)  # a dark grey becomes black
    stretched = distance.contrast(np.array([[[60.0], [160.0]]], dtype=np.float32), grey, "false")
    assert stretched.tolist() == [[0.0, pytest.approx(100 * 255 / 195)]]
    # A blue pixel on a grey of the same luminance: no difference in grey levels, a clear one in
    # colour (the distance of a grey pixel is its difference in grey levels).
    blue, table = np.array([40.0, 80.0, 200.0]), np.full(3, 0.299 * 40 + 0.587 * 80 + 0.114 * 200)
    colours = np.array([[table, blue]], dtype=np.float32)
    on_table = background.Background(table.tolist(), float(table[0]), 0.0, 13.0, False)
    assert distance.contrast(colours, on_table, "auto")[0, 1] > 60
    assert background.luminance(blue) == pytest.approx(background.luminance(table))


def test_the_mask_keeps_the_object_and_what_lies_near_it():
    values = np.zeros((200, 200), dtype=np.float32)
    values[40:160, 50:80] = 200  # a trouser's two legs, 12 pixels apart
    values[40:160, 92:122] = 200
    values[10:12, 190:192] = 200  # a speck far away: dropped (and opened away)
    values[100:110, 60:70] = 0  # a hole: filled
    found = mask.object_mask(values, 13)
    assert pixels.mask_box(found) == (40, 50, 160, 122)
    assert found[105, 65] and not found[100, 86] and not found[11, 191]
    assert not mask.object_mask(np.zeros((50, 50), dtype=np.float32), 13).any()
    assert frame.with_margin((50, 40, 250, 120), (300, 200)) == (46, 36, 254, 124)  # 2% of 200
    assert frame.with_margin((0, 0, 250, 200), (300, 200)) == (0, 0, 255, 200)  # inside
    assert frame.with_margin((3, 5, 20, 9), (28, 28)) == (3, 5, 20, 9)  # 0 margin at 28


def shapes(*boxes: tuple[int, int, int, int]) -> Tensor:
    """A 300x300 mask picture (255 on 0) made of the rectangles `boxes`."""
    canvas = picture(300, 300, 0)
    for top, left, bottom, right in boxes:
        canvas[top:bottom, left:right] = 255
    return canvas


def tilted(canvas: Tensor, degrees: float) -> np.ndarray:
    return np.asarray(pixels.image_of(canvas).rotate(degrees, Image.Resampling.BILINEAR)) > 127


def test_a_clear_turn_is_found_and_a_square_box_is_not_turned():
    upright = picture(300, 300, 0, (60, 110, 240, 190), 255)
    for degrees in (5.0, -8.0, 12.0):
        assert turn.turn_of(tilted(upright, degrees)) == pytest.approx(-degrees, abs=0.75)
    assert turn.turn_of(upright.numpy() > 127) == 0.0
    assert turn.turn_of(tilted(upright, 1.0)) == 0.0  # under TURN_MIN: left alone


def test_a_mirror_image_garment_is_turned_by_its_axis_and_a_shoe_by_its_box():
    shirt = shapes((70, 50, 120, 250), (70, 105, 250, 195))  # sleeves spread, the body below
    assert turn.mirror_turn(shirt.numpy() > 127) == 0.0
    for degrees in (3.0, -5.0, 12.0):
        assert turn.turn_of(tilted(shirt, degrees)) == pytest.approx(-degrees, abs=0.75)
    assert turn.box_turn(tilted(shirt, 3.0)) == 0.0  # its box barely shrinks: the axis finds it
    boot = shapes((40, 60, 200, 130), (150, 60, 220, 250))  # a shaft and a foot: no mirror axis
    assert turn.mirror_turn(tilted(boot, 10.0)) is None
    assert turn.turn_of(tilted(boot, 10.0)) == pytest.approx(-10.0, abs=0.75)  # by its box
    assert turn.turn_of(boot.numpy() > 127) == 0.0
    assert turn.turn_of(np.zeros((30, 30), dtype=bool)) == 0.0


def test_fit_then_pad_to_a_centred_square():
    tall = frame.fit(picture(200, 100, 255))
    assert tall.shape == (28, 14)
    wide = frame.fit(picture(30, 90, 255))
    assert wide.shape == (9, 28)
    kept = picture(28, 11, 0, (3, 3, 9, 9), 77)
    assert torch.equal(frame.fit(kept), kept)  # already 28 long: not resampled
    square = frame.pad_to_square(tall)
    assert square.shape == (28, 28)
    assert (
        square[:, 7:21].eq(255).all() and square[:, :7].eq(0).all() and square[:, 21:].eq(0).all()
    )
    odd = frame.pad_to_square(picture(28, 13, 255))  # 15 columns to add: 8 before, 7 after
    assert odd[:, 8:21].eq(255).all() and odd[:, :8].eq(0).all() and odd[:, 21:].eq(0).all()


def test_prepare_a_dark_object_off_centre_on_white():
    # A dark 120 x 60 rectangle near the corner of a 400 x 300 white picture.
    image = pixels.image_of(picture(400, 300, 255, (20, 200, 140, 260), 0))
    prepared = P.prepare(image, PrepareConfig())
    margin = int(frame.MARGIN * 120)
    assert prepared.inverted and prepared.box == (
        20 - margin,
        200 - margin,
        140 + margin,
        260 + margin,
    )
    assert prepared.failed is None and prepared.turned == 0
    assert [name for name, _ in prepared.steps] == ["inverted", "mask", "crop", "input"]
    out = prepared.pixels
    assert torch.equal(torch.from_numpy(prepared.steps[-1][1]), out)
    assert out.shape == (28, 28) and out.dtype == torch.uint8
    columns = out.float().mean(0)
    assert columns[:7].max() == 0 and columns[21:].max() == 0  # black padding either side
    assert out[1:27, 8:20].float().mean() > 250  # the object, white, fills the height
    whole = P.prepare(image, PrepareConfig(crop=False)).pixels  # 400 x 300 fitted: 28 x 21
    assert whole[:, :4].max() == 0 and whole[:, 25:].max() == 0 and whole[20, 10] == 0
    assert whole[2:9, 19:21].float().mean() > 250  # the object: rows 1.4..9.8, columns 18..22
    kept = P.prepare(image, PrepareConfig(invert="false"))
    assert not kept.inverted and kept.box == (0, 0, 400, 300)  # all of it "object": failed
    assert kept.failed is not None and kept.failed.startswith("no object found: the object's box")
    assert kept.pixels[20, 10] == 255 and kept.pixels[5, 20] < 10  # still dark on light


def photo(rng: np.random.Generator, background, noise: float = 0.0, size=(300, 400)):
    """A 120 x 60 garment-like rectangle (dark, its middle lighter) at rows 90..210, columns
    250..310 of a `size` picture whose background is `background` (a number, an (H, W) array or
    an RGB triple), with Gaussian noise."""
    height, width = size
    base = np.broadcast_to(np.asarray(background, dtype=np.float64), (height, width, 3)).copy()
    base[90:210, 250:310] = 30
    base[120:180, 270:290] = 90
    base += rng.normal(0, noise, base.shape) if noise else 0
    return Image.fromarray(pixels.as_uint8(base), "RGB")


TRUE_BOX = (90, 250, 210, 310)


def within(box, expected=TRUE_BOX, slack=4) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(box, expected, strict=True))


def test_noise_a_gradient_and_a_colour_of_the_same_luminance_do_not_hide_the_object():
    rng = np.random.default_rng(0)
    noisy = P.prepare(photo(rng, 235, noise=12), PrepareConfig())
    assert within(noisy.box) and noisy.background.noise > 0 and noisy.failed is None
    assert noisy.pixels[:, :7].max() == 0 and noisy.pixels[:, 22:].max() == 0  # no noise kept
    _, x = np.mgrid[0:300, 0:400]
    light = 250 - 110 * x / 400  # from 250 on the left to 140 on the right
    evened = P.prepare(photo(rng, light[..., None]), PrepareConfig())
    assert evened.background.evened and within(evened.box)
    assert [name for name, _ in evened.steps][:3] == ["grayscale", "evened", "inverted"]
    # A dark blue object on a grey table of its luminance: in grey levels, nothing to see.
    blue = np.zeros((300, 400, 3)) + 0.299 * 40 + 0.587 * 80 + 0.114 * 200
    blue[90:210, 250:310] = (40, 80, 200)
    image = Image.fromarray(np.rint(blue).astype(np.uint8), "RGB")
    assert np.ptp(np.asarray(image.convert("L"))) <= 1
    found = P.prepare(image, PrepareConfig())
    assert within(found.box, slack=3) and found.pixels.max() == 255  # 2: the margin


def test_a_textured_tables_noise_is_how_far_it_reaches_so_faint_parts_stay():
    rng = np.random.default_rng(2)
    plane = rng.normal(100, 10, (400, 400, 1)).astype(np.float32)
    assert 9.0 < background.border_noise(plane) < 10.5  # Gaussian: its standard deviation
    plane[:40, 150:250, 0] += 150  # an object reaching the border: the MAD holds
    assert 9.0 < background.border_noise(plane) < 11.0
    tiny = rng.uniform(0, 255, (28, 28, 1)).astype(np.float32)  # 108 border pixels: the MAD
    assert background.border_noise(tiny) == pytest.approx(
        background.robust_noise(tiny[background.ring(tiny.shape)][:, 0])
    )
    y = np.arange(300, dtype=np.float64)[:, None, None]
    grain = 210 + 16 * np.sin(2 * np.pi * y / 12)  # bounded: reaches 16, its MAD says 16.8
    table = grain.astype(np.float32) + np.zeros((1, 400, 1), np.float32)
    assert background.border_noise(table) < 5.2
    base = np.broadcast_to(grain, (300, 400, 3)).copy()
    base[90:210, 250:310] = 30
    base[210:240, 250:310] -= 50  # a faint part: 50 grey levels darker than the table
    image = Image.fromarray(pixels.as_uint8(base), "RGB")
    prepared = P.prepare(image, PrepareConfig())
    assert within(prepared.box, (87, 247, 243, 313), slack=2)  # with it (and a 3-pixel margin)


def test_a_shadow_soft_or_hard_is_cut_off_and_a_dim_part_with_a_sharp_edge_kept():
    # A dark collar over a dim body, both sharp edged: the body is the garment's, though it lies
    # far beyond the reach of the collar (the core), and is kept.
    paper = np.full((300, 400), 235.0)
    dim = paper.copy()
    dim[90:110, 250:310] = 0
    dim[110:210, 250:310] = 200  # 35 grey levels under the paper
    assert within(P.prepare(pixels.image_of(pixels.as_uint8(dim)), PrepareConfig()).box, slack=2)
    # The same outline all dark, with a shadow: its silhouette blurred (a tenth of its size: soft;
    # half a pixel: hard) and moved down and to the right by an eighth, darkening the paper by 30%.
    ink = np.zeros((300, 400))
    ink[90:210, 250:310] = 1
    for blur in (12, 0.5):
        cast = np.roll(ndimage.gaussian_filter(ink, blur), (15, 15), axis=(0, 1))
        shadowed = P.prepare(
            pixels.image_of(pixels.as_uint8(paper * (1 - 0.3 * cast) * (1 - ink))), PrepareConfig()
        )
        assert within(shadowed.box, slack=2), blur  # 2: the margin
        assert shadowed.pixels[:, 21:].max() == 0, blur  # right of the 28 x 14 object: no shadow


def test_a_small_object_in_a_large_picture(tmp_path):
    rng = np.random.default_rng(1)
    large = photo(rng, 230, noise=4, size=(1200, 1600))  # the object a tenth of the height
    prepared = P.prepare(large, PrepareConfig())
    assert within(prepared.box, slack=10)  # 3 pixels of the working copy
    assert prepared.steps[0][1].shape == (384, 512)  # shown at the working copy's size


def test_failed_preparations_are_said_and_flagged():
    flat = P.prepare(Image.new("RGB", (300, 200), (120, 160, 30)), PrepareConfig())
    assert flat.failed == "no object found: nothing stands out from the background"
    assert flat.box == (0, 0, 200, 300)
    noise = np.random.default_rng(0).integers(0, 256, (200, 300), dtype=np.uint8)
    scattered = P.prepare(Image.fromarray(noise), PrepareConfig())
    assert scattered.failed is not None and scattered.failed.startswith("no object found")
    assert flags.doubts(flat.pixels, 0.9, flat.failed)[0] == flat.failed
    tiny = P.prepare(Image.new("L", (3, 3), 0), PrepareConfig())
    assert tiny.pixels.shape == (28, 28) and tiny.failed is not None
    long = np.full((20, 4000), 255, dtype=np.uint8)
    long[5:15, 1000:3000] = 0
    elongated = P.prepare(Image.fromarray(long), PrepareConfig())
    assert elongated.box is not None and elongated.pixels.shape == (28, 28)


@pytest.fixture(scope="module")
def test_images(data_root) -> tuple[Tensor, Tensor]:
    return data.load_split("test")


def test_a_dataset_image_comes_out_unchanged(test_images):
    images, _ = test_images
    images = images[:1000]
    prepared_all = [P.prepare(pixels.image_of(x), PrepareConfig()) for x in images]
    prepared = torch.stack([p.pixels for p in prepared_all])
    # Bit for bit: a 28x28 picture, light on a dark background, is the model's input already
    # (measured: all of the first 1000; 9999 of the 10000 test images).
    assert torch.equal(prepared, images)
    assert all([name for name, _ in p.steps] == ["input"] for p in prepared_all)
    assert not any(p.inverted or p.turned for p in prepared_all)
    assert all(p.box == (0, 0, 28, 28) and p.failed is None for p in prepared_all)


def test_doubts(test_images):
    images, _ = test_images
    assert flags.doubts(images[0], 0.9) == []
    assert flags.doubts(images[0], 0.42) == ["unsure: top probability 0.42 < 0.5"]
    white = torch.full((28, 28), 255, dtype=torch.uint8)
    assert flags.doubts(white, 0.99) == [
        "unlike the training images: pixel mean 1.000 outside 0.0567..0.6033",
        "unlike the training images: pixel std 0.000 outside 0.1222..0.4497",
    ]
    # The typical ranges hold 99% of the training images, as their comment says.
    train, _ = data.load_split("train")
    scaled = train.float() / 255
    means, stds = scaled.mean((1, 2)), scaled.std((1, 2), unbiased=False)
    for values, (low, high) in ((means, flags.TYPICAL_MEAN), (stds, flags.TYPICAL_STD)):
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
