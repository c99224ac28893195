"""A training run from a composed config: build everything, train, evaluate, save, report."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from fmnist import checkpoint
from fmnist.config import validate
from fmnist.engine import Compute, evaluate, train_epoch
from fmnist.errors import UserError, reports_user_errors
from fmnist.logging import TensorBoard, flatten, progress

log = logging.getLogger("fmnist")


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "trainer.device=cuda but no CUDA GPU is visible: use trainer.device=auto or cpu"
        )
    return torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else name.replace("auto", "cpu")
    )


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 pays off on GPUs that support it and on CPUs with AVX-512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def build_loss(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The `loss` group's object; its class weights become a tensor, as both losses expect."""
    weight = None if cfg.weight is None else torch.tensor(list(cfg.weight), dtype=torch.float32)
    return instantiate(cfg, weight=weight).to(device)


@reports_user_errors
def main(cfg: DictConfig) -> float:
    """`scripts/train.py`: validate, train in Hydra's run directory, return test accuracy."""
    validate(cfg)
    metrics = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    return metrics["test_acc"]


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train the configured model; write checkpoints, events and metrics.json to `run_dir`."""
    settings = cfg.trainer
    seed_everything(cfg.seed, settings.deterministic)
    device = pick_device(settings.device)
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and bf16_is_fast(device))
    compute = Compute(device, bf16, settings.channels_last)

    data = instantiate(cfg.data, device=device, seed=cfg.seed)
    model = instantiate(cfg.model).to(
        device, memory_format=torch.channels_last if compute.channels_last else None
    )
    trained = torch.compile(model) if settings.compile else model
    loss_fn = build_loss(cfg.loss, device)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(
        optimizer, total_steps=settings.max_epochs * len(data.train)
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    log.info("Data: %s; %d training batches per epoch", data.origin, len(data.train))
    log.info(
        "Model: %s, %d parameters, on %s, %s",
        type(model).__name__,
        sum(p.numel() for p in model.parameters()),
        device,
        "bf16 autocast" if bf16 else "float32",
    )

    checkpoints = run_dir / "checkpoints"
    step, best_acc, train_seconds = 0, -1.0, 0.0
    with TensorBoard(run_dir) as tensorboard, logging_redirect_tqdm():
        for epoch in progress(range(settings.max_epochs), settings.progress, desc="epochs"):
            start = time.perf_counter()
            step = train_epoch(
                trained,
                data.train,
                loss_fn,
                optimizer,
                scheduler,
                compute,
                tensorboard,
                epoch,
                step,
                settings.progress,
            )
            train_seconds += time.perf_counter() - start

            val = evaluate(trained, data.val, compute) if data.val else None
            if val:
                tensorboard.scalars(step, **val.as_dict("val"))
                tensorboard.confusion("val/confusion", val.confusion, step)
            log.info(
                "epoch %d/%d  step %d  %s  %.1fs",
                epoch + 1,
                settings.max_epochs,
                step,
                f"val loss {val.loss:.4f} acc {val.accuracy:.4f}"
                if val
                else "(no validation split)",
                time.perf_counter() - start,
            )
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "step": step,
                "config": config,
                "precision": "bf16" if bf16 else "32",  # evaluation must match it exactly
                "metrics": val.as_dict("val") if val else {},
            }
            checkpoint.save(checkpoints / "last.pt", **state)
            if val is None or val.accuracy > best_acc:
                best_acc = val.accuracy if val else best_acc
                checkpoint.save(checkpoints / "best.pt", **state)

        # The run's result is its best model by validation accuracy: test it, once.
        best = checkpoint.load(checkpoints / "best.pt", device)
        model.load_state_dict(best["model"])
        test = evaluate(trained, data.test, compute)
        tensorboard.scalars(step, **test.as_dict("test"))
        tensorboard.confusion("test/confusion", test.confusion, step)
        metrics = {
            **best["metrics"],
            **test.as_dict("test"),
            "best_epoch": best["epoch"],
            "epochs": settings.max_epochs,
            "steps": step,
            "train_seconds": round(train_seconds, 2),
            "train_images_per_second": round(
                settings.max_epochs * data.train.num_samples / train_seconds, 1
            ),
        }
        checkpoint.save(checkpoints / "best.pt", **{**best, "metrics": metrics})
        reported = {k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))}
        tensorboard.hyperparameters(dict(flatten(config)), reported)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "test loss %.4f acc %.4f (weights of epoch %d); run saved in %s",
        test.loss,
        test.accuracy,
        best["epoch"],
        run_dir,
    )
    return metrics
