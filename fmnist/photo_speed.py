"""How long phone photos take to read, prepare and predict (`scripts/benchmark.py photos=N`):
12-megapixel JPEGs made from test images, through fmnist.predict's own functions.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fmnist.engine import bf16_is_fast

PHONE = (4032, 3024)  # a 12-megapixel phone photo, landscape


def phone_photos(count: int, folder: Path) -> list[Path]:
    """`count` phone-sized JPEGs (quality 90) in `folder`: a Fashion-MNIST test image's garment,
    dark, a fifth to a half of the frame's height, somewhere on a light, slightly uneven and
    noisy background. Seeded: the same files every time."""
    import numpy as np
    from PIL import Image

    from fmnist import data

    images, _ = data.load_split("test")
    rng = np.random.default_rng(0)
    width, height = PHONE
    light = np.linspace(235, 205, width, dtype=np.float32)[None, :, None]
    grain = rng.normal(0, 4, (height // 8, width // 8, 3)).astype(np.float32)
    paths = []
    for i in range(count):
        side = int(rng.uniform(0.2, 0.5) * height)
        top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        ink = Image.fromarray(images[i].numpy()).resize((side, side), Image.Resampling.BILINEAR)
        noise = np.repeat(np.repeat(grain, 8, axis=0), 8, axis=1)  # sensor noise, blotchy
        photo = light + noise
        patch = photo[top : top + side, left : left + side]
        patch *= 1 - np.asarray(ink, dtype=np.float32)[..., None] / 255
        path = folder / f"{i:03d}.jpg"
        Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)
        paths.append(path)
    return paths


def photo_seconds(count: int) -> dict[str, Any]:
    """Seconds to read, prepare and predict `count` phone-sized JPEGs (`phone_photos`; writing
    them is not timed, nor is start-up): fmnist.predict's own functions, the default CNN with
    flip TTA, once after a warm-up of one photo."""
    from fmnist import data, engine, predict
    from fmnist.config import SmallCNNConfig
    from fmnist.models import SmallCNN
    from fmnist.script_configs import PredictConfig, PrepareConfig

    settings = SmallCNNConfig()
    model = SmallCNN(
        widths=settings.widths, convs_per_block=settings.convs_per_block, dropout=0.0
    ).eval()
    compute = engine.Compute(torch.device("cpu"), bf16_is_fast(torch.device("cpu")), False)
    predictor = predict.Predictor(
        lambda pixels: engine.predict(model, data.normalise(pixels).unsqueeze(1), compute, "flip"),
        list(data.CLASSES),
        "an untrained SmallCNN",
        {},
    )
    with tempfile.TemporaryDirectory() as folder:
        paths = phone_photos(count, Path(folder))
        settings_ = PredictConfig(ckpt_path="-", images=[folder], prepare=PrepareConfig())
        predict.load(paths[0], settings_)  # warm-up: the first call imports and allocates
        start = time.perf_counter()
        with torch.no_grad():
            pictures = [predict.load(path, settings_) for path in paths]
            predict.predict_pictures(predictor, pictures, None)
        seconds = time.perf_counter() - start
    return {
        "photos": count,
        "size": f"{PHONE[0]}x{PHONE[1]}",
        "seconds": round(seconds, 2),
        "ms_per_photo": round(1000 * seconds / count, 1),
    }
