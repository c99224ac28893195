"""Checkpoints: everything needed to rebuild a model, evaluate it or resume its training.

A checkpoint is a plain dict of tensors, numbers, strings and lists, saved with `torch.save`
through a temporary file and a rename (never half-written), and loaded with
`torch.load(weights_only=True)`, which refuses to run any code a file might carry.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

import fmnist
from fmnist import data
from fmnist.errors import UserError

FORMAT = 1  # bump when the layout below changes incompatibly


def save(path: Path, **contents: Any) -> None:
    """Write a checkpoint atomically: a crash or a full disk leaves the previous file intact."""
    checkpoint = {
        "format": FORMAT,
        "version": fmnist.__version__,
        "classes": list(data.CLASSES),
        "normalization": {"mean": data.MEAN, "std": data.STD},
        **contents,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(
            f"cannot write checkpoint {path}: {e.strerror or e}; free space or fix permissions"
        ) from None


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (then its checkpoints/best.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    if not path.is_file():
        raise UserError(
            f"no checkpoint at {path}: give a .pt file or a run directory under outputs/"
        )
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint without executing anything stored in it."""
    path = resolve(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0]
        raise UserError(
            f"{path} was refused: it is not a plain fmnist checkpoint ({reason})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {reason}"
        ) from None
    if not isinstance(checkpoint, dict) or "format" not in checkpoint or "model" not in checkpoint:
        raise UserError(f"{path} is a PyTorch file but not an fmnist checkpoint")
    if checkpoint["format"] != FORMAT:
        raise UserError(
            f"{path} has checkpoint format {checkpoint['format']} "
            f"(fmnist {checkpoint.get('version')}); "
            f"this fmnist ({fmnist.__version__}) reads format {FORMAT}"
        )
    return checkpoint


def build_model(checkpoint: dict[str, Any]) -> nn.Module:
    """The checkpoint's model, rebuilt from its own config and loaded with its weights."""
    model = instantiate(checkpoint["config"]["model"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise UserError(
            f"the checkpoint's weights do not fit its model: {str(e).splitlines()[0]}"
        ) from None
    return model
