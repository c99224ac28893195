"""Checkpoints: everything needed to rebuild a model, evaluate it or resume its training.

A checkpoint is a plain dict of tensors, numbers, strings and lists, saved with `torch.save`
through a temporary file and a rename (never half-written), and loaded with
`torch.load(weights_only=True)`, which refuses to run any code a file might carry. `load_model`
rebuilds the model a checkpoint holds, for every command that uses a trained model (evaluate,
snapshot, ...): only fmnist's own model classes are ever built, with their schemas' checks.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import fmnist
from fmnist import data
from fmnist.config import OPTIONS
from fmnist.engine import Compute
from fmnist.errors import UserError
from fmnist.files import write_atomically

FORMAT = 1  # bump when the layout below changes incompatibly
SWEEP_CONFIG = "multirun.yaml"  # Hydra's copy of a sweep's config: a sweep's directory has one


def save(path: Path, **contents: Any) -> None:
    """Write a checkpoint atomically: a crash or a full disk leaves the previous file intact."""
    checkpoint = {
        "format": FORMAT,
        "version": fmnist.__version__,
        "classes": list(data.CLASSES),
        "normalization": {"mean": data.MEAN, "std": data.STD},
        **contents,
    }
    write_atomically(path, lambda f: torch.save(checkpoint, f), "checkpoint")


def resolve(path: str | os.PathLike[str], in_run_dir: str = "best.pt") -> Path:
    """A checkpoint file, or a run directory (then its checkpoints/`in_run_dir`)."""
    path = Path(path).expanduser()
    if (path / SWEEP_CONFIG).is_file():
        jobs = sorted(job.name for job in path.iterdir() if (job / "checkpoints").is_dir())
        shown = ", ".join(jobs[:5]) + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")
        raise UserError(
            f"{path} is a sweep, not a run: give one of its jobs, ckpt_path={path}/<job> "
            f"({'its jobs: ' + shown if jobs else 'none of its jobs has a checkpoint yet'})"
        )
    if path.is_dir():
        run_dir, path = path, path / "checkpoints" / in_run_dir
        last = run_dir / "checkpoints" / "last.pt"
        if not path.is_file() and last.is_file():
            raise UserError(
                f"{run_dir} has no checkpoints/{in_run_dir}: its run stopped during its first "
                f"epoch, and checkpoints/last.pt holds its weights as they were then: give "
                f"ckpt_path={last}, or finish the run first (train.py with trainer.resume=auto)"
            )
    if not path.is_file():
        raise UserError(
            f"no checkpoint at {path}: give a .pt file or a run directory under outputs/"
        )
    return path


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint without executing anything stored in it."""
    path = resolve(path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it would call {found.group(1)}" if found else "it holds more than tensors and data"
        raise UserError(
            f"{path} was refused: it is not a plain fmnist checkpoint ({what}; fmnist loads "
            "weights only and never runs code from a file)"
        ) from None
    except Exception as e:  # garbage makes the weights-only unpickler raise almost anything
        if "TorchScript" in str(e):
            raise UserError(
                f"{path} is a TorchScript module, not an fmnist checkpoint: give the checkpoint "
                "it was exported from (or, to predict.py, an .onnx export)"
            ) from None
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


# --------------------------------------------------------------------------------------------
# Rebuilding the model a checkpoint holds
# --------------------------------------------------------------------------------------------


def build_model(checkpoint: dict[str, Any], path: Path | str = "the checkpoint") -> nn.Module:
    """The checkpoint's model, rebuilt from its own config and loaded with its weights.

    Only fmnist's model classes are built, with their schemas' checks: a weights-only file can
    still name any `_target_` in its config, and instantiating that could run arbitrary code.
    """
    schemas = {schema._target_: schema for schema in OPTIONS["model"].values()}
    model_cfg = (
        checkpoint.get("config", {}).get("model")
        if isinstance(checkpoint.get("config"), dict)
        else None
    )
    target = model_cfg.get("_target_") if isinstance(model_cfg, dict) else None
    if target is None or target not in schemas:
        raise UserError(
            f"{path} names the model {target!r}, which is not an fmnist model "
            f"({', '.join(schemas)}): refused to build it"
        )
    try:
        model_cfg = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(schemas[target]), model_cfg)
        )
    except Exception as e:  # a range check (a UserError, maybe wrapped) or an unknown key
        error = e.__cause__ if isinstance(e.__cause__, UserError) else e
        raise UserError(
            f"{path} has an invalid model config: {str(error).splitlines()[0]}"
        ) from None
    model: nn.Module = instantiate(OmegaConf.structured(model_cfg))
    _load_weights(model, evaluated_weights(checkpoint), path, target)
    return model


def evaluated_weights(checkpoint: dict[str, Any]) -> object:
    """The weights a run validated and tested: the average of its weights when it kept one
    (`trainer.ema_decay`), else its weights."""
    average = checkpoint.get("ema")
    if not isinstance(average, dict):
        return checkpoint.get("model")
    prefix = "module."  # torch.optim.swa_utils.AveragedModel's state_dict wraps the model
    return {k.removeprefix(prefix): v for k, v in average.items() if k.startswith(prefix)}


def _load_weights(model: nn.Module, weights: object, path: Path | str, target: str) -> None:
    """Load `weights` strictly, explaining a mismatch in one line (which keys, which shapes)."""
    if not isinstance(weights, dict) or not all(
        isinstance(v, torch.Tensor) for v in weights.values()
    ):
        raise UserError(f"{path}: its 'model' entry is not a state_dict of tensors")
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong_shape = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = [f"{len(missing)} missing keys (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})"] if unexpected else []
        parts += [
            f"{key} has shape {tuple(weights[key].shape)}, the model needs "
            f"{tuple(expected[key].shape)}"
            for key in wrong_shape[:1]
        ]
        raise UserError(
            f"{path} holds the weights of another model than its config's {target}: "
            f"{' and '.join(parts)}"
        )
    model.load_state_dict(weights)


@dataclass
class Loaded:
    """A checkpoint and what it rebuilds: model, class names, normalisation, compute settings."""

    path: Path
    checkpoint: dict[str, Any]
    model: nn.Module  # on the CPU, in eval mode
    classes: list[str]
    mean: float
    std: float
    precision: str  # "bf16" or "32", as the run trained and evaluated

    def setting(self, key: str, types: type | tuple[type, ...]) -> Any:
        """A value of the run's saved config, e.g. `data.val_size`, checked to be of `types`."""
        value = self.checkpoint["config"]
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise UserError(
                    f"{self.path} has no {key} in its saved config: it is not a checkpoint of an "
                    "fmnist training run"
                )
            value = value[part]
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise UserError(f"{self.path} has an invalid {key}={value!r} in its saved config")
        return value

    def compute(self, device: torch.device) -> Compute:
        """The run's precision and memory layout, so its results are reproduced exactly."""
        return Compute(
            device, self.precision == "bf16", self.setting("trainer.channels_last", bool)
        )

    def model_name(self) -> str:
        return type(self.model).__name__


def load_model(path: str | os.PathLike[str]) -> Loaded:
    """Load a checkpoint (file or run directory) weights-only and rebuild its model.

    Every way a file can fail to be an fmnist checkpoint of a known model becomes one
    `UserError` line naming the file: missing, unreadable or truncated, refused by the
    weights-only unpickler, another kind of file, another format version, a model class that is
    not fmnist's, a model config the schema rejects, or weights that do not fit the model.
    """
    path = resolve(path)
    ckpt = load(path)  # weights only: nothing in the file can run
    if not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path} has no saved config: it is not a checkpoint of a training run")
    model = build_model(ckpt, path)  # fmnist's model classes only
    model.eval()

    classes = ckpt.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) != len(data.CLASSES)
        or not all(isinstance(c, str) for c in classes)
    ):
        raise UserError(f"{path} does not hold the {len(data.CLASSES)} class names")
    norm = ckpt.get("normalization")
    mean, std = (norm.get("mean"), norm.get("std")) if isinstance(norm, dict) else (None, None)
    if not (_is_real(mean) and _is_real(std)) or std <= 0:
        raise UserError(f"{path} does not hold a valid normalization (mean, std > 0)")
    precision = ckpt.get("precision")
    if precision not in ("bf16", "32"):
        raise UserError(f"{path} has precision={precision!r}: expected 'bf16' or '32'")
    return Loaded(path, ckpt, model, classes, float(mean), float(std), precision)


def _is_real(value: object) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
