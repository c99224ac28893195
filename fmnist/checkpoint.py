"""Checkpoints: everything needed to rebuild a model, evaluate it or resume its training.

A checkpoint is a plain dict of tensors, numbers, strings and lists, saved with `torch.save`
through a temporary file and a rename (never half-written), and loaded with
`torch.load(weights_only=True)`, which refuses to run any code a file might carry.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

import fmnist
from fmnist import data, distributed
from fmnist.errors import UserError, reports_user_errors
from fmnist.files import write_atomically
from fmnist.logging import flatten

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
    write_atomically(path, lambda tmp: torch.save(checkpoint, tmp), "checkpoint")


def resolve(path: str | os.PathLike, in_run_dir: str = "best.pt") -> Path:
    """A checkpoint file, or a run directory (then its checkpoints/`in_run_dir`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / in_run_dir
    if not path.is_file():
        raise UserError(
            f"no checkpoint at {path}: give a .pt file or a run directory under outputs/"
        )
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
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


def build_model(checkpoint: dict[str, Any], path: Path | str = "the checkpoint") -> nn.Module:
    """The checkpoint's model, rebuilt from its own config and loaded with its weights.

    Only fmnist's model classes are built, with their schemas' checks: a weights-only file can
    still name any `_target_` in its config, and instantiating that could run arbitrary code.
    """
    from fmnist.config import GROUP_SCHEMAS  # (fmnist.config imports this module)

    schemas = {schema._target_: schema for schema in GROUP_SCHEMAS["model"].values()}
    model_cfg = (
        checkpoint.get("config", {}).get("model")
        if isinstance(checkpoint.get("config"), dict)
        else None
    )
    target = model_cfg.get("_target_") if isinstance(model_cfg, dict) else None
    if target not in schemas:
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
    model = instantiate(OmegaConf.structured(model_cfg))
    _load_weights(model, checkpoint.get("model"), path, target)
    return model


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


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run directory holding nothing but Hydra's config copy and log, so a command that
    failed before doing its work leaves no half-made output (a resumed run is never removed)."""
    if (
        not run_dir.is_dir()
        or run_dir.resolve() == Path.cwd().resolve()
        or not distributed.is_main()
    ):
        return
    if all(p.name == ".hydra" or p.name.endswith(".log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


IGNORED_WHEN_RESUMING = ("trainer.resume", "ckpt_path")


def _comparable(config: dict) -> dict:
    """A config as flat keys, without the keys that only say how to start."""
    flat = dict(flatten(config))
    return {
        k: v
        for k, v in flat.items()
        if k not in IGNORED_WHEN_RESUMING and not k.startswith("hydra.")
    }


def config_difference(saved: dict, current: dict) -> str | None:
    """The first setting that differs between two configs, as a phrase; None when they agree."""
    old, new = _comparable(saved), _comparable(current)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            return f"{key}={old.get(key)} there, {new.get(key)} now"
    return None


def check_same_config(state: dict[str, Any], config: dict, source: Path) -> None:
    """Resuming with other settings would silently change the run: refuse, naming the setting."""
    difference = config_difference(state["config"], config)
    if difference:
        raise UserError(
            f"{source} was trained with another config ({difference}): resume with the same "
            "overrides, or start a new run"
        )


def finished(run_dir: Path) -> bool:
    """A run is finished once it has written metrics.json."""
    return (run_dir / "metrics.json").exists()


@reports_user_errors
def run_dir_for(new_dir: str, *, _root_: DictConfig) -> str:
    """The `fmnist_run_dir` resolver behind `hydra.run.dir`: where this run writes.

    A fresh run gets `new_dir`. `trainer.resume=auto` gets the newest unfinished run under the
    same parent whose saved config matches, and `ckpt_path=...` the run holding that checkpoint,
    so a resumed run appends to its own directory and TensorBoard series. Resolving here, before
    Hydra creates anything, means a failed resume leaves no empty run directory behind.
    """
    job_keys = [key for key in _root_ if key != "hydra"]  # hydra.run.dir is what we are resolving
    current = OmegaConf.to_container(OmegaConf.masked_copy(_root_, job_keys), resolve=True)
    if _root_.ckpt_path:
        path = resolve(_root_.ckpt_path, "last.pt")
        check_same_config(load(path), current, path)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    elif _root_.trainer.resume == "auto":
        newest_first = sorted(
            Path(new_dir).parent.glob("*/checkpoints/last.pt"),
            key=lambda path: path.stat().st_mtime,
            reverse=True,
        )
        unfinished = [path for path in newest_first if not finished(path.parent.parent)]
        matching = [
            path.parent.parent
            for path in unfinished
            if config_difference(load(path)["config"], current) is None
        ]
        if not matching:
            where = Path(new_dir).parent
            raise UserError(
                f"trainer.resume=auto found nothing to resume: no unfinished run under {where} "
                f"with this config ({len(unfinished)} unfinished with another); start a new run "
                "without trainer.resume, or pass ckpt_path=..."
            )
        run_dir = matching[0]
    else:
        return distributed.agree(new_dir)  # under torchrun, rank 0's timestamp for all
    if finished(run_dir):
        raise UserError(f"{run_dir} has finished (metrics.json exists): nothing to resume")
    return distributed.agree(str(run_dir))
