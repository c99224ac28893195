"""Predict the class of your own pictures with a trained model: a checkpoint or an .onnx export.

The logic of `python scripts/predict.py ckpt_path=... images=[a.png,photos/]` (configured by
configs/predict.yaml and fmnist.script_configs). Each picture is read safely with Pillow, made
Fashion-MNIST-like by fmnist.prepare, and predicted as evaluate would: a checkpoint's model,
normalisation, precision and test-time augmentation come from the checkpoint
(`checkpoint.load_model`, `engine.predict`); an .onnx file runs in ONNX Runtime, with the views of
the TTA its metadata names. Each prediction gets the top 3 classes and `prepare.doubts`' warnings;
with `target=`, also the cross-entropy worked out as fmnist.snapshot does it.

A bad input (missing, not an image, too large) is named in one line and the others are still
predicted; the exit status is then 1 (2 when nothing could be predicted, and nothing is written).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from math import ceil
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from fmnist import checkpoint, data, engine, export, ood, runs
from fmnist.errors import UserError, reports_user_errors
from fmnist.files import all_or_nothing, write_text_atomically
from fmnist.i18n import Text
from fmnist.losses import softmax
from fmnist.prepare import DOUBT_RULE, Prepared, doubts, prepare
from fmnist.report import figures, text
from fmnist.script_configs import PredictConfig, PrepareConfig, validate_predict
from fmnist.snapshot import Snapshot, from_logits, report

# What a directory's pictures are recognised by; a file named directly is tried whatever its name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
FORMATS = "PNG, JPEG, WebP, BMP or GIF"
BATCH = 256  # pictures per forward pass
TOP = 3
THUMBNAIL = 96  # pixels: the longest edge of a picture's thumbnail in predictions.png
DECODED_SIDE = 336  # pixels a JPEG keeps on its shorter side when decoded smaller: an object a
# fifth of the frame then still spans over 60 pixels, twice the 28 it is fitted into
SCALE = "fmnist_scale"  # read_picture's note in image.info: file pixels per decoded pixel


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A checkpoint's model or an exported .onnx file, as one function from pixels to logits."""

    logits: Callable[[Tensor], Tensor]  # uint8 (N, 28, 28) -> float32 (N, 10) on the CPU
    classes: list[str]
    description: str  # in words, for the report and the lesson
    details: dict[str, Any]  # for predictions.json
    ood_threshold: float | None = None  # fmnist.ood's: an energy above it is flagged; None for
    # a model trained before it existed


def from_checkpoint(path: str, device_name: str) -> Predictor:
    """The checkpoint's model with its normalisation, precision, layout and TTA, as evaluate."""
    loaded = checkpoint.load_model(path)
    compute = loaded.compute(engine.device(device_name, "device"))
    tta = loaded.setting("trainer.tta", str)
    model = compute.place(loaded.model)

    threshold = ood.from_checkpoint(loaded.checkpoint)

    @torch.no_grad()
    def logits(pixels: Tensor) -> Tensor:
        x = data.normalise(pixels.to(compute.device), loaded.mean, loaded.std).unsqueeze(1)
        return engine.predict(model, x, compute, tta).cpu()

    mode = "bf16 autocast" if loaded.precision == "bf16" else "float32"
    step = loaded.checkpoint.get("step")
    return Predictor(
        logits,
        loaded.classes,
        Text(
            "predict.model.checkpoint",
            model=loaded.model_name(),
            path=loaded.path,
            step=step,
            mode=mode,
            tta=tta,
        ),
        {
            "kind": "checkpoint",
            "path": str(loaded.path.resolve()),
            "model": loaded.model_name(),
            "step": step,
            "precision": loaded.precision,
            "tta": tta,
            "device": str(compute.device),
            "normalization": {"mean": loaded.mean, "std": loaded.std},
        },
        threshold.value if threshold is not None else None,
    )


def from_onnx(path: str) -> Predictor:
    """An fmnist .onnx export in ONNX Runtime (float32, CPU), averaging the views of the TTA
    its metadata names (not in the graph) as the checkpoint's run did."""
    model = export.load_onnx(path)

    def logits(pixels: Tensor) -> Tensor:
        views = engine.tta_views(pixels.float().div(255).unsqueeze(1), model.tta, background=0.0)
        total = cast(Tensor, sum(model.logits(view) for view in views))  # not 0: views is not empty
        return total / len(views)

    return Predictor(
        logits,
        model.classes,
        f"{model.meta.get('model', 'a model')} exported to {model.path} (ONNX Runtime, float32, "
        f"TTA {model.tta})",
        {"kind": "onnx", "path": str(model.path.resolve()), "tta": model.tta, **model.meta},
        model.ood_threshold,
    )


# --------------------------------------------------------------------------------------------
# The pictures
# --------------------------------------------------------------------------------------------


def collect(entries: list[str]) -> tuple[list[Path], list[str], list[str]]:
    """The picture files `entries` name (files as given; directories: their image files, by
    name, sorted), the entries that name none (one line each), and notes on what was skipped."""
    files, problems, notes = [], [], []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file())
            pictures = [p for p in inside if p.suffix.lower() in IMAGE_SUFFIXES]
            others = [p.name for p in inside if p not in pictures]
            if not pictures:
                held = f"only {len(others)} other files, e.g. {others[0]}" if others else "none"
                problems.append(
                    f"{path} holds no picture files ({', '.join(IMAGE_SUFFIXES)}; files: {held}): "
                    "put pictures in it, or name the files"
                )
            elif others:
                more = f" and {len(others) - 5} more" if len(others) > 5 else ""
                notes.append(
                    f"Skipped in {path}, not pictures by their names: {', '.join(others[:5])}{more}"
                )
            files += pictures
        elif path.is_file():
            files.append(path)
        else:
            problems.append(
                f"{path} does not exist (relative paths start at {Path.cwd()}): check the path"
            )
    return files, problems, notes


def read_picture(path: Path) -> Image.Image:
    """The picture (a GIF's first frame), decoded and turned upright as its EXIF says; a file
    Pillow cannot read, or one over its decompression-bomb limit, is a `UserError`.

    A large picture is made smaller as it is read, keeping `DECODED_SIDE` pixels on its shorter
    side: a 28x28 input needs no more. A JPEG is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg
    itself (Pillow's `draft`): a phone's 12 megapixels then decode in a tenth of the time. Any
    other format is decoded whole, then averaged over blocks of pixels (Pillow's `reduce`) before
    anything else touches it: a 9400x9400 PNG costs its decoding (about a second, 265 MB for
    RGB) instead of seconds and gigabytes of preparation. `info["fmnist_scale"]` says by how
    much it shrank."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width = image.width
                if image.format == "JPEG" and min(image.size) > DECODED_SIDE:
                    shorter = DECODED_SIDE / min(image.size)
                    image.draft(None, (ceil(image.width * shorter), ceil(image.height * shorter)))
                image.load()
                upright = ImageOps.exif_transpose(reduced(image, DECODED_SIDE))
                upright.info[SCALE] = width / upright.width
                return upright
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(found.group(1)):,}" if found else None
        size = Text("predict.error.pixels", n=pixels) if pixels else Text("predict.error.many")
        limit = f"{Image.MAX_IMAGE_PIXELS:,}"
        raise UserError(Text("predict.error.bomb", path=path, size=size, limit=limit)) from None
    except UnidentifiedImageError:
        raise UserError(Text("predict.error.unknown", path=path, formats=FORMATS)) from None
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(Text("predict.error.damaged", path=path, reason=reason)) from None


# Pillow's `reduce` averages the values of these modes; any other is widened to one first, a band
# of rows at a time (a palette's indices, or single bits, cannot be averaged; widening the whole
# of a 9400x9400 GIF at once would take 350 MB).
AVERAGED_MODES = ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK")
WIDER_MODE = {"1": "L", "P": "RGBA", "PA": "RGBA"}  # else (16-bit grey) "I"
BAND_BLOCKS = 16  # rows of blocks widened at a time


def reduced(image: Image.Image, side: int) -> Image.Image:
    """`image` made smaller by a whole factor, averaging blocks of pixels, while its shorter side
    keeps at least `side` pixels; as it is when it has no more than twice that."""
    factor = min(image.size) // side
    if factor < 2:
        return image
    if image.mode in AVERAGED_MODES:
        return image.reduce(factor)
    wider = WIDER_MODE.get(image.mode, "I")
    small = Image.new(wider, (ceil(image.width / factor), ceil(image.height / factor)))
    band = factor * BAND_BLOCKS
    for top in range(0, image.height, band):
        rows = image.crop((0, top, image.width, min(top + band, image.height)))
        small.paste(rows.convert(wider).reduce(factor), (0, top // factor))
    small.info = {key: value for key, value in image.info.items() if key != "transparency"}
    return small  # (its alpha holds the transparency now)


@dataclass
class Picture:
    """A picture as shown (a thumbnail) and as the model sees it."""

    path: Path
    thumbnail: Image.Image
    prepared: Prepared
    scale: float  # the file's pixels per pixel of the decoded picture (`read_picture`)

    def box(self) -> list[int] | None:
        """The object's box (top, left, bottom, right) in the file's own pixels."""
        box = self.prepared.box
        return None if box is None else [round(v * self.scale) for v in box]


def load(path: Path, settings: PredictConfig) -> Picture:
    return picture_of(read_picture(path), path, settings.prepare)


def picture_of(
    image: Image.Image, path: Path, settings: PrepareConfig, thumbnail_size: int = THUMBNAIL
) -> Picture:
    """`image` (read from `path`, or from elsewhere: the page's upload, drawing or test image)
    prepared, with a thumbnail at most `thumbnail_size` pixels on its longest edge."""
    thumbnail = image.convert("RGBA")
    thumbnail.thumbnail((thumbnail_size, thumbnail_size))
    return Picture(path, thumbnail, prepare(image, settings), image.info.get(SCALE, 1.0))


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    picture: Picture
    q: list[float]  # the 10 probabilities
    doubts: list[str]  # why not to trust it (prepare.doubts, fmnist.ood); empty: none found
    lesson: Snapshot | None  # the cross-entropy against target=, when given
    energy: float  # fmnist.ood's score (-logsumexp of the logits): high is unlike training

    @property
    def top(self) -> list[int]:
        return sorted(range(len(self.q)), key=lambda c: -self.q[c])[:TOP]

    def as_dict(self, classes: list[str]) -> dict[str, Any]:
        prepared = self.picture.prepared
        return {
            "file": str(self.picture.path),
            "top": [{"class": c, "name": classes[c], "probability": self.q[c]} for c in self.top],
            "q": self.q,
            "doubts": self.doubts,
            "energy": self.energy,
            "inverted": prepared.inverted,
            "box": self.picture.box(),
            "background": vars(prepared.background),
            "turned_degrees": prepared.turned,
            "preparation_failed": prepared.failed,
            "steps": [name for name, _ in prepared.steps],
            "lesson": self.lesson.as_dict() if self.lesson else None,
        }


def predict_pictures(
    predictor: Predictor, pictures: list[Picture], target: int | None
) -> list[Prediction]:
    """Top classes, doubts and (with `target`) the lesson of each picture, in batches."""
    predictions = []
    for start in range(0, len(pictures), BATCH):
        batch = pictures[start : start + BATCH]
        pixels = torch.stack([p.prepared.pixels for p in batch])
        logits = predictor.logits(pixels)
        q = softmax(logits.double(), dim=1)
        energies = ood.energy(logits).tolist()
        for i, picture in enumerate(batch):
            lesson = None
            if target is not None:
                lesson = from_logits(
                    logits[i : i + 1],
                    target,
                    predictor.description,
                    predictor.classes,
                    picture=str(picture.path),
                    image=picture.prepared.pixels,
                )
            prepared = picture.prepared
            found = doubts(prepared.pixels, q[i].max().item(), prepared.failed)
            if predictor.ood_threshold is not None:
                flag = ood.doubt(energies[i], predictor.ood_threshold)
                found += [flag] if flag else []
            predictions.append(Prediction(picture, q[i].tolist(), found, lesson, energies[i]))
    return predictions


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def results(
    predictor: Predictor, predictions: list[Prediction], settings: PredictConfig, failed: list[str]
) -> dict[str, Any]:
    """Everything predictions.json holds."""
    classes = predictor.classes
    return {
        "model": predictor.details,
        "description": predictor.description,
        "prepare": {"invert": settings.prepare.invert, "crop": settings.prepare.crop},
        "target": settings.target,
        "target_name": None if settings.target is None else classes[settings.target],
        "classes": classes,
        "doubt_rule": DOUBT_RULE,
        "ood": {
            "score": "energy: -logsumexp of the logits (fmnist.ood)",
            "threshold": predictor.ood_threshold,
            "quantile": ood.QUANTILE,
            "available": predictor.ood_threshold is not None,
            "rule": ood.rule(predictor.ood_threshold, predictor.details.get("path")),
        },
        "predictions": [p.as_dict(classes) for p in predictions],
        "failed": failed,
    }


def csv_text(r: dict[str, Any]) -> str:
    """One row per picture: the top classes and probabilities, and the doubts."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    ranks = range(1, TOP + 1)
    writer.writerow(
        ["file", *(f"{k}_{rank}" for rank in ranks for k in ("class", "probability")), "doubts"]
    )
    for p in r["predictions"]:
        cells = [x for t in p["top"] for x in (t["name"], f"{t['probability']:.6f}")]
        writer.writerow([p["file"], *cells, "; ".join(p["doubts"])])
    return out.getvalue()


def write_outputs(r: dict[str, Any], predictions: list[Prediction], run_dir: Path) -> list[str]:
    """predictions.png and predictions.csv, then predictions.json last, all or nothing."""
    figure = figures.predictions_figure(
        [
            (
                p.picture.path.name,
                p.picture.thumbnail,
                [(name, pixels) for name, pixels in p.picture.prepared.steps],
                p.q,
                p.doubts,
            )
            for p in predictions
        ],
        r["classes"],
        r["target"],
    )
    with all_or_nothing(run_dir):
        figures.save_figure(figure, run_dir / "predictions.png")
        rows = csv_text(r)
        write_text_atomically(run_dir / "predictions.csv", rows)
        saved = json.dumps(r, indent=2) + "\n"
        write_text_atomically(run_dir / "predictions.json", saved)
    return ["predictions.json", "predictions.csv", "predictions.png"]


def load_all(files: list[Path], settings: PredictConfig, failed: list[str]) -> list[Picture]:
    """Every file read and prepared; each one that cannot be adds its line to `failed`."""
    pictures = []
    for path in files:
        try:
            pictures.append(load(path, settings))
        except UserError as e:
            failed.append(str(e))
    return pictures


@reports_user_errors
def main(cfg: DictConfig) -> dict[str, Any]:
    """`scripts/predict.py`: predict every picture, print, write; name each bad input."""
    with runs.removed_if_unused(runs.output_dir()) as run_dir:
        settings = validate_predict(cfg)
        predictor = (
            from_onnx(settings.ckpt_path)
            if settings.ckpt_path.lower().endswith(".onnx")
            else from_checkpoint(settings.ckpt_path, settings.device)
        )
        files, failed, notes = collect(settings.images)
        pictures = load_all(files, settings, failed)
        if not pictures:  # nothing to do: one line, nothing written
            raise UserError("; ".join(failed))
        predictions = predict_pictures(predictor, pictures, settings.target)
        r = results(predictor, predictions, settings, failed)
        print(text.predictions(r, notes))
        for p in predictions:
            if p.lesson:
                print(f"\n{'-' * 100}\n{report(p.lesson)}")
        written = write_outputs(r, predictions, run_dir)
    print(f"\nWrote {', '.join(written)} to {run_dir}")
    if failed:
        for problem in failed:
            print(f"error: {problem}", file=sys.stderr)
        raise UserError(
            f"{len(failed)} of the inputs could not be predicted (each named above); the "
            f"{len(predictions)} others were, into {run_dir}",
            exit_code=1,
        )
    return r
