"""Export a trained checkpoint as a self-contained model file: ONNX or TorchScript.

The logic of `python scripts/export.py ckpt_path=... format=onnx|torchscript` (configured by
configs/export.yaml and fmnist.script_configs). The exported model takes `image`, float32
(N, 1, 28, 28) in [0, 1], a light object on black (fmnist.prepare makes one from a picture), and
returns `logits`, float32 (N, 10); N is free. The checkpoint's normalisation is inside the graph,
so the file needs nothing else; its class names, the fmnist version, how it was made and the
threshold of fmnist.ood's flag (on the energy of its logits) are in its metadata (ONNX
`metadata_props`, TorchScript's extra file `fmnist.json`).

Exported in float32 whatever precision the checkpoint's run used (bf16 autocast is for its own
evaluation), and without test-time augmentation: the metadata's `tta` says which views the run
averaged, and fmnist.predict averages them for an .onnx file as it does for the checkpoint.
ONNX comes from PyTorch's exporter (`torch.onnx.export`), then `onnx.checker`; either file is then
loaded back and run against the PyTorch model, and refused (removed) if they disagree.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

import fmnist
from fmnist import checkpoint, ood, runs
from fmnist.data import SIDE
from fmnist.engine import TTA_MODES
from fmnist.errors import UserError, reports_user_errors
from fmnist.files import write_atomically
from fmnist.script_configs import validate_export

FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
INPUT, OUTPUT = "image", "logits"
METADATA_FILE = "fmnist.json"  # TorchScript: the metadata, as one extra file in the archive
CHECK_IMAGES = 64  # random images the written file is run on, against the PyTorch model
CHECK_TOLERANCE = 1e-4  # the largest |logit difference| accepted (float32 rounding is ~1e-6)
INSTALL = 'pip install -e ".[export]" (make setup installs it)'


class Normalised(nn.Module):
    """A model that takes pixels in [0, 1]: (image - mean) / std, then the model."""

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, image: Tensor) -> Tensor:
        """`image` float32 (N, 1, 28, 28) in [0, 1] to logits (N, 10)."""
        logits: Tensor = self.model((image - self.mean) / self.std)
        return logits


def metadata(loaded: checkpoint.Loaded) -> dict[str, str]:
    """What the exported file says about itself (strings, as ONNX metadata_props hold), with the
    threshold of fmnist.ood's flag when the checkpoint has one."""
    threshold = ood.from_checkpoint(loaded.checkpoint)
    flag = (
        {
            "ood_score": "energy: -logsumexp(logits), of the TTA-averaged logits",
            "ood_threshold": str(threshold.value),
            "ood_quantile": str(ood.QUANTILE),
        }
        if threshold is not None
        else {}
    )
    return {
        "producer": "fmnist",
        "fmnist_version": fmnist.__version__,
        "classes": json.dumps(loaded.classes),
        "model": loaded.model_name(),
        "checkpoint": str(loaded.path),
        "checkpoint_step": str(loaded.checkpoint.get("step")),
        "input": f"{INPUT}: float32 (N, 1, {SIDE}, {SIDE}) in [0, 1], a light object on black",
        "output": f"{OUTPUT}: float32 (N, {len(loaded.classes)}), softmax gives probabilities",
        "normalization": f"inside the graph: ({INPUT} - {loaded.mean}) / {loaded.std}",
        "tta": loaded.setting("trainer.tta", str),
        "tta_in_graph": "no: average the logits of the tta views yourself to match the run",
        "precision": "float32",
        **flag,
    }


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError(f"format=onnx needs the onnx package: {INSTALL}") from None
    return onnx


class GlobalMaxPool(nn.Module):
    """`nn.AdaptiveMaxPool2d(1)` as an `amax` over height and width: the same values, as an ONNX
    ReduceMax. The exporters of torch 2.7 to 2.11 (those tried) cannot write adaptive_max_pool2d;
    2.14's turns it into a ReduceMax itself."""

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=(2, 3), keepdim=True)


def exportable(model: nn.Module) -> nn.Module:
    """A copy of `model` whose global max-pools are `GlobalMaxPool`s, for the ONNX exporter."""
    copy = deepcopy(model)
    for module in list(copy.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.AdaptiveMaxPool2d) and child.output_size in (1, (1, 1)):
                setattr(module, name, GlobalMaxPool())
    return copy


@contextmanager
def _quiet() -> Iterator[None]:
    """Without the exporter's warnings and its optimiser's INFO log lines (about its own graph
    rewrites, nothing a user can act on)."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def export_onnx(model: Normalised, path: Path, meta: dict[str, str]) -> None:
    """The model as ONNX with a dynamic batch dimension and `meta`, checked by onnx.checker."""
    onnx = _onnx()
    batch = torch.export.Dim("batch")
    with _quiet():
        program = torch.onnx.export(
            exportable(model),
            (torch.rand(2, 1, SIDE, SIDE),),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={INPUT: {0: batch}},
            dynamo=True,
            external_data=False,  # the weights inside the one file
            verbose=False,
        )
    assert program is not None  # what dynamo=True always returns
    proto = program.model_proto
    onnx.helper.set_model_props(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"the exported ONNX model fails onnx.checker: {e}") from None
    write_atomically(path, lambda f: f.write(proto.SerializeToString()), "ONNX model")


def export_torchscript(model: Normalised, path: Path, meta: dict[str, str]) -> None:
    """The model compiled by torch.jit.script, `meta` as the archive's extra file fmnist.json."""
    with warnings.catch_warnings():  # PyTorch deprecates TorchScript in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
        extra = {METADATA_FILE: json.dumps(meta, indent=2)}
        write_atomically(
            path, lambda f: torch.jit.save(scripted, f, _extra_files=extra), "TorchScript"
        )


# --------------------------------------------------------------------------------------------
# Reading an exported file back
# --------------------------------------------------------------------------------------------


@dataclass
class OnnxModel:
    """An exported .onnx file opened in ONNX Runtime (CPU), with its fmnist metadata."""

    path: Path
    session: Any  # onnxruntime.InferenceSession
    classes: list[str]
    tta: str  # the views the checkpoint's run averaged (not in the graph)
    meta: dict[str, str]
    ood_threshold: float | None  # fmnist.ood's; None: exported before it existed

    def logits(self, images: Tensor) -> Tensor:
        """float32 (N, 1, 28, 28) in [0, 1] to float32 logits (N, 10)."""
        (logits,) = self.session.run([OUTPUT], {INPUT: images.float().contiguous().numpy()})
        return torch.from_numpy(logits)


def load_onnx(path: str | os.PathLike[str]) -> OnnxModel:
    """An .onnx file exported by fmnist, ready to run; anything else is one `UserError` line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no model at {path}: give an .onnx file written by scripts/export.py")
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{path}: running an .onnx file needs onnxruntime: {INSTALL}") from None
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's own exception types, for any unreadable file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable ONNX model (corrupt?): {reason}") from None
    meta = session.get_modelmeta().custom_metadata_map
    names = [node.name for node in session.get_inputs()], [n.name for n in session.get_outputs()]
    if meta.get("producer") != "fmnist" or names != ([INPUT], [OUTPUT]):
        raise UserError(
            f"{path} is an ONNX model but not one exported by fmnist (no fmnist metadata, or "
            f"not {INPUT} -> {OUTPUT}): export a checkpoint with scripts/export.py"
        )
    try:
        classes = json.loads(meta["classes"])
    except (KeyError, ValueError):
        classes = None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{path} has no valid class names in its metadata")
    tta = meta.get("tta")
    if tta not in TTA_MODES:
        raise UserError(f"{path} has tta={tta!r} in its metadata: expected one of {TTA_MODES}")
    try:
        threshold = float(meta["ood_threshold"]) if "ood_threshold" in meta else None
    except ValueError:
        raise UserError(f"{path} has an invalid ood_threshold in its metadata") from None
    return OnnxModel(path, session, classes, tta, meta, threshold)


def run_exported(path: Path, fmt: str, images: Tensor) -> Tensor:
    """The written file's logits on float32 `images` (N, 1, 28, 28) in [0, 1]."""
    if fmt == "onnx":
        return load_onnx(path).logits(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        logits: Tensor = module(images)
        return logits


@torch.no_grad()
def check(model: Normalised, path: Path, fmt: str) -> float:
    """The largest |logit difference| between the written file and `model` on `CHECK_IMAGES`
    seeded random images; over `CHECK_TOLERANCE`, or another predicted class, is an error."""
    images = torch.rand(CHECK_IMAGES, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    expected: Tensor = model(images)
    got = run_exported(path, fmt, images)
    difference = (expected - got).abs().max().item()
    if difference > CHECK_TOLERANCE or not torch.equal(expected.argmax(1), got.argmax(1)):
        raise UserError(
            f"the exported {path.name} computes other logits than the checkpoint (max "
            f"|difference| {difference:.1e} on {CHECK_IMAGES} random images): it was removed; "
            "please report this with the checkpoint"
        )
    return difference


def export_checkpoint(ckpt_path: str, fmt: str, run_dir: Path) -> dict[str, Any]:
    """Write the checkpoint's model as `fmt` into `run_dir`, check it; what was done, as a dict."""
    loaded = checkpoint.load_model(ckpt_path)
    model = Normalised(loaded.model, loaded.mean, loaded.std).eval()
    meta = metadata(loaded)
    path = run_dir / FILE_NAMES[fmt]
    (export_onnx if fmt == "onnx" else export_torchscript)(model, path, meta)
    try:
        difference = check(model, path, fmt)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return {"path": path, "format": fmt, "metadata": meta, "max_difference": difference}


def summary(r: dict[str, Any]) -> str:
    """What was exported, what it takes and gives, and how it was checked."""
    meta, path = r["metadata"], r["path"]
    checked = "onnx.checker passes; " if r["format"] == "onnx" else ""
    return "\n".join(
        [
            f"Exported {meta['model']} from {meta['checkpoint']} (step {meta['checkpoint_step']})",
            f"  to {path} ({r['format']}, {path.stat().st_size / 1e6:.2f} MB, float32)",
            f"  input  {meta['input']}; the batch size N is free",
            f"  output {meta['output']}",
            f"  the model's own flag: energy above {meta['ood_threshold']} (fmnist.ood)"
            if "ood_threshold" in meta
            else "  no ood_threshold: the checkpoint has none (trained before it was added)",
            f"  normalisation {meta['normalization']}",
            f"  test-time augmentation: not in the graph (the run averaged: {meta['tta']})",
            f"  classes {', '.join(json.loads(meta['classes']))}",
            f"Checked: {checked}the file, loaded back, gives the checkpoint's logits on "
            f"{CHECK_IMAGES} random images (max |difference| {r['max_difference']:.1e}).",
        ]
    )


@reports_user_errors
def main(cfg: DictConfig) -> dict[str, Any]:
    """`scripts/export.py`: export, check, and say what was written."""
    with runs.removed_if_unused(runs.output_dir()) as run_dir:
        settings = validate_export(cfg)
        result = export_checkpoint(settings.ckpt_path, settings.format, run_dir)
    print(summary(result))
    return result
