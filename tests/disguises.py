"""Fashion-MNIST test images disguised as photos: the garment drawn dark on a light, noisy, uneven,
textured or coloured background, small, turned or compressed, as a phone would see it.

Each disguise is one change at two strengths (plus a mix of several, the noisy corner, and three
plain kinds: the PNG itself, dark on white, a white canvas), made from a 28x28 dataset image with
a generator seeded by the image's index and the disguise, so the same files come out every time.
`write` saves one picture; the test predicts whole directories of them through
scripts/predict.py. Nothing here knows how fmnist.prepare works: the parameters are what a phone
photo of a garment on a table could look like.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

CANVAS = (200, 160)  # width, height of most disguises' frame
PAPER = 235  # a light background's grey level, not pure white


def enlarged(x: np.ndarray, side: int) -> np.ndarray:
    """The 28x28 image's object share (x / 255, 0..1) enlarged to side x side (Lanczos)."""
    image = Image.fromarray(x).resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float64) / 255


def place(ink: np.ndarray, frame: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """`ink` (0..1) at a random place fully inside a frame (width, height) of zeros."""
    width, height = frame
    canvas = np.zeros((height, width))
    top = int(rng.integers(0, height - ink.shape[0] + 1))
    left = int(rng.integers(0, width - ink.shape[1] + 1))
    canvas[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return canvas


def drawn(ink: np.ndarray, paper: np.ndarray | float) -> np.ndarray:
    """The garment drawn dark on `paper`: where ink is 1 the paper is black, as the dataset's
    product photos were before Zalando negated them."""
    return paper * (1 - ink)


def grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def on_paper(x: np.ndarray, rng: np.random.Generator, side: int = 84) -> np.ndarray:
    """The garment `side` pixels tall, dark, somewhere on a `CANVAS` of `PAPER` grey."""
    return drawn(place(enlarged(x, side), CANVAS, rng), PAPER)


def noisy(sigma: float) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    """Sensor noise: Gaussian, `sigma` grey levels, on every pixel (a PNG: nothing else)."""

    def make(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
        return grey(on_paper(x, rng) + rng.normal(0, sigma, (CANVAS[1], CANVAS[0])))

    return make


def plain(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """On paper, nothing else (the JPEG disguises save it at a quality)."""
    return grey(on_paper(x, rng))


def gradient(drop: float) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    """Light falling off across the frame in a random direction: from 250 to 250 - `drop`."""

    def make(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
        width, height = CANVAS
        angle = rng.uniform(0, 2 * np.pi)
        y, x_ = np.mgrid[0:height, 0:width]
        along = x_ * np.cos(angle) + y * np.sin(angle)
        along = (along - along.min()) / np.ptp(along)
        return grey(drawn(place(enlarged(x, 84), CANVAS, rng), 250 - drop * along))

    return make


def shadow(depth: float) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    """A soft shadow beside the object: its silhouette, blurred (a tenth of its size) and moved
    down and to one side by an eighth of its size, darkening the paper by `depth` at most."""

    def make(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
        ink = place(enlarged(x, 84), CANVAS, rng)
        silhouette = grey(255 * (ink > 0.05)).filter(ImageFilter.GaussianBlur(8.4))
        shift = (int(rng.choice([-10, 10])), 10)  # an eighth of 84: to the left or right, down
        cast = np.roll(np.asarray(silhouette, dtype=np.float64) / 255, shift[::-1], axis=(0, 1))
        return grey(drawn(ink, PAPER * (1 - depth * cast)))

    return make


def texture(amplitude: float) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    """A table of wood with a woven cloth's fine pattern: grain (wavy bands some 12 pixels
    apart) plus a 4-pixel weave, `amplitude` grey levels each way, around 210."""

    def make(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
        width, height = CANVAS
        y, x_ = np.mgrid[0:height, 0:width].astype(np.float64)
        wobble = grey(rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1))).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        phase = np.asarray(wobble, dtype=np.float64) / 255 * 2 * np.pi
        tilt = rng.uniform(-0.3, 0.3)
        grain = np.sin(2 * np.pi * (y + tilt * x_) / 12 + phase)
        weave = np.sign(np.sin(np.pi * x_ / 2)) * np.sign(np.sin(np.pi * y / 2))
        paper = 210 + amplitude * (0.7 * grain + 0.3 * weave)
        return grey(drawn(place(enlarged(x, 84), CANVAS, rng), paper))

    return make


def luminance(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def same_luminance(colour: tuple[int, int, int], like: tuple[int, int, int]) -> np.ndarray:
    """`like` scaled to the luminance of `colour`."""
    target, base = np.array(colour, dtype=np.float64), np.array(like, dtype=np.float64)
    return base * luminance(target) / luminance(base)


def coloured(
    garment: tuple[int, int, int], table: tuple[int, int, int]
) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    """A `garment`-coloured object on a `table`-coloured background of the same luminance: in
    grey levels the object is invisible. The garment's shading is its share of colour."""
    paper = same_luminance(garment, table)

    def make(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
        ink = place(enlarged(x, 84), CANVAS, rng)[..., None]
        rgb = paper * (1 - ink) + np.array(garment, dtype=np.float64) * ink
        return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")

    return make


def small(share: float) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    """The object `share` of a 320x240 frame's shorter side, anywhere in it."""

    def make(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
        frame = (320, 240)
        return grey(drawn(place(enlarged(x, round(share * frame[1])), frame, rng), PAPER))

    return make


def rotated(degrees: float) -> Callable[[np.ndarray, np.random.Generator], Image.Image]:
    """Turned by `degrees` one way or the other (at random), 112 pixels tall, on paper."""

    def make(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
        ink = grey(255 * enlarged(x, 112))
        turned = ink.rotate(
            float(rng.choice([-degrees, degrees])), Image.Resampling.BICUBIC, expand=True
        )
        return grey(drawn(place(np.asarray(turned) / 255, CANVAS, rng), PAPER))

    return make


def noisy_corner(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A noisy corner JPEG: 56x56 near a corner of a 160x120 canvas of grey 235 with noise of
    standard deviation 6 (saved as JPEG quality 75)."""
    ink = np.zeros((120, 160))
    top, left = int(rng.integers(2, 10)), int(rng.integers(2, 10))
    ink[top : top + 56, left : left + 56] = enlarged(x, 56)
    return grey(drawn(ink, 235) + rng.normal(0, 6, ink.shape))


def dataset_png(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The image itself."""
    return Image.fromarray(x, "L")


def inverted_jpeg(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Dark on white, 112 x 112 (saved as JPEG quality 90)."""
    return grey(drawn(enlarged(x, 112), 255))


def on_a_white_canvas(x: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Dark on white, 84 x 84, off-centre on a 320 x 200 white canvas."""
    ink = np.zeros((200, 320))
    ink[30:114, 190:274] = enlarged(x, 84)
    return grey(drawn(ink, 255))


@dataclass(frozen=True)
class Disguise:
    make: Callable[[np.ndarray, np.random.Generator], Image.Image]
    suffix: str = ".png"
    quality: int = 95  # JPEG only
    stream: int | None = None  # the generator's key with the image's index (None: the name's CRC)


DISGUISES = {
    "png": Disguise(dataset_png),
    "inverted_jpeg": Disguise(inverted_jpeg, ".jpg", 90),
    "canvas": Disguise(on_a_white_canvas),
    "noise_4": Disguise(noisy(4)),
    "noise_12": Disguise(noisy(12)),
    "jpeg_90": Disguise(plain, ".jpg", 90),
    "jpeg_40": Disguise(plain, ".jpg", 40),
    "gradient_40": Disguise(gradient(40)),
    "gradient_80": Disguise(gradient(80)),
    "shadow_15": Disguise(shadow(0.15)),
    "shadow_30": Disguise(shadow(0.30)),
    "texture_8": Disguise(texture(8)),
    "texture_16": Disguise(texture(16)),
    "blue_on_grey": Disguise(coloured((40, 80, 200), (128, 128, 128))),
    "red_on_green": Disguise(coloured((200, 60, 50), (60, 160, 60))),
    "small_third": Disguise(small(1 / 3)),
    "small_fifth": Disguise(small(1 / 5)),
    "turned_5": Disguise(rotated(5)),
    "turned_10": Disguise(rotated(10)),
    # its own stream: the pictures docs/predict.md's figures were measured on
    "noisy_corner": Disguise(noisy_corner, ".jpg", 75, stream=2186285515),
}


def write(name: str, x: np.ndarray, index: int, folder: Path) -> Path:
    """Test image `index` (28x28 uint8 `x`) in disguise `name`, saved in `folder`."""
    disguise = DISGUISES[name]
    stream = zlib.crc32(name.encode()) if disguise.stream is None else disguise.stream
    rng = np.random.default_rng([index, stream])
    path = folder / f"{index:05d}{disguise.suffix}"
    image = disguise.make(x, rng)
    if disguise.suffix == ".jpg":
        image.save(path, quality=disguise.quality)
    else:
        image.save(path)
    return path
