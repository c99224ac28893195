"""A training run from a composed config: build everything, train, evaluate, save, report."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

from fmnist import checkpoint, distributed
from fmnist.config import validate
from fmnist.engine import Compute, NonFiniteLoss, Position, Training, evaluate, train_epoch
from fmnist.errors import UserError, reports_user_errors
from fmnist.logging import TensorBoard, flatten, progress

log = logging.getLogger("fmnist")


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
    if deterministic:  # cuBLAS needs this to be deterministic on GPUs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    if deterministic != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)  # imports torch._inductor: 2 s
    torch.backends.cudnn.benchmark = not deterministic


def build_loss(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The `loss` group's object; its class weights become a tensor, as both losses expect."""
    weight = None if cfg.weight is None else torch.tensor(list(cfg.weight), dtype=torch.float32)
    return instantiate(cfg, weight=weight).to(device)


@reports_user_errors
def main(cfg: DictConfig) -> float:
    """`scripts/train.py`: validate, train in Hydra's run directory, return test accuracy."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        return train(cfg, run_dir)["test_acc"]
    except Exception:
        checkpoint.discard_if_unused(run_dir)
        raise


def build(cfg: DictConfig) -> Training:
    """Seed, then build data, model, loss, optimizer and schedule from the config."""
    settings = cfg.trainer
    distributed.init()
    seed_everything(cfg.seed, settings.deterministic)
    device = distributed.device(settings.device)
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and bf16_is_fast(device))
    compute = Compute(device, bf16, settings.channels_last)

    data = instantiate(cfg.data, device=device, seed=cfg.seed)
    model = instantiate(cfg.model)
    if settings.sync_batchnorm and distributed.world_size() > 1:
        if device.type != "cuda":
            raise UserError(
                "trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU "
                "kernel): leave it false on CPU"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last if compute.channels_last else None)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(
        optimizer, total_steps=settings.max_epochs * len(data.train)
    )
    trained = model
    if distributed.world_size() > 1:  # averages gradients over the ranks during backward
        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Training(
        compute,
        data,
        model,
        torch.compile(trained) if settings.compile else trained,
        build_loss(cfg.loss, device),
        optimizer,
        scheduler,
    )


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop after the current step (a second one stops at once)."""

    def __enter__(self) -> StopSignals:
        self.received: int | None = None
        self.previous = {
            sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Interrupted(UserError):
    """Training stopped on a signal, after saving a checkpoint."""

    label = "stopped"


def rng_states() -> dict:
    """Every random state a training step draws from (the loaders' come from (seed, epoch))."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint this run continues from, if any (see `checkpoint.run_dir_for`)."""
    if cfg.ckpt_path:
        return checkpoint.resolve(cfg.ckpt_path, "last.pt")
    if cfg.trainer.resume == "auto":
        return run_dir / "checkpoints" / "last.pt"
    return None


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train the configured model; write checkpoints, events and metrics.json to `run_dir`.

    With `trainer.resume=auto` or `ckpt_path`, continue an unfinished run where its last
    checkpoint left off: on a deterministic CPU run, bit for bit as if it had never stopped.
    """
    settings = cfg.trainer
    t = build(cfg)
    model, data, compute = t.model, t.data, t.compute
    writer = distributed.is_main()  # under torchrun, rank 0 alone writes and shows progress
    show_progress = settings.progress and writer
    if not writer:
        log.setLevel(logging.WARNING)
    config = OmegaConf.to_container(cfg, resolve=True)
    position, best_acc, train_seconds = Position(), -1.0, 0.0
    source = resume_point(cfg, run_dir)
    if source:
        state = checkpoint.load(source, compute.device)
        checkpoint.check_same_config(state, config, source)
        model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        position = Position(**state["position"])
        best_acc, train_seconds = state["best_val_acc"], state["train_seconds"]
        log.info("Resuming %s at step %d (epoch %d)", source, position.step, position.epoch + 1)
    log.info("Data: %s; %d training batches per epoch", data.origin, len(data.train))
    log.info(
        "Model: %s, %d parameters, on %s, %s",
        type(model).__name__,
        sum(p.numel() for p in model.parameters()),
        compute.device,
        "bf16 autocast" if compute.bf16 else "float32",
    )

    checkpoints = run_dir / "checkpoints"

    def save(name: str, metrics: dict, elapsed: float) -> None:
        if not writer:
            return
        checkpoint.save(
            checkpoints / name,
            model=model.state_dict(),
            optimizer=t.optimizer.state_dict(),
            scheduler=t.scheduler.state_dict(),
            position=vars(position).copy(),
            epoch=position.epoch,
            step=position.step,
            rng=rng_states(),
            best_val_acc=best_acc,
            train_seconds=elapsed,
            config=config,
            precision="bf16" if compute.bf16 else "32",  # evaluation must match it exactly
            metrics=metrics,
        )

    # Events after the checkpoint we resume from were never saved: TensorBoard drops them.
    purge_step = position.step + 1 if source else None
    with (
        TensorBoard(run_dir, purge_step, enabled=writer) as tensorboard,
        logging_redirect_tqdm(),
        StopSignals() as stop,
    ):
        epochs = range(position.epoch, settings.max_epochs)
        for _ in progress(
            epochs,
            show_progress,
            initial=position.epoch,
            total=settings.max_epochs,
            desc="epochs",
        ):
            start = time.perf_counter()
            try:
                for _ in train_epoch(
                    t, position, tensorboard, show_progress, settings.skip_nonfinite
                ):
                    every = settings.checkpoint_every_steps
                    stopping = distributed.any_(stop.received is not None)  # all ranks together
                    if stopping or (every and position.step % every == 0):
                        save("last.pt", {}, train_seconds + time.perf_counter() - start)
                    if stopping:
                        signum = stop.received or signal.SIGTERM
                        raise Interrupted(
                            f"{signal.Signals(signum).name} at step {position.step}: saved "
                            f"{checkpoints / 'last.pt'}; continue with `python scripts/train.py "
                            "trainer.resume=auto` (same overrides)",
                            exit_code=128 + signum,
                        )
            except NonFiniteLoss as e:
                kept = checkpoints / "last.pt"
                raise NonFiniteLoss(
                    f"{e}; last good checkpoint: {kept if kept.exists() else 'none written yet'}"
                ) from None
            train_seconds += time.perf_counter() - start

            val = evaluate(t.trained, data.val, compute, settings.tta) if data.val else None
            if val:
                tensorboard.scalars(position.step, **val.as_dict("val"))
                tensorboard.confusion("val/confusion", val.confusion, position.step)
            log.info(
                "epoch %d/%d  step %d  %s  %.1fs",
                position.epoch,
                settings.max_epochs,
                position.step,
                f"val loss {val.loss:.4f} acc {val.accuracy:.4f}"
                if val
                else "(no validation split)",
                time.perf_counter() - start,
            )
            improved = val is None or val.accuracy > best_acc
            best_acc = max(best_acc, val.accuracy) if val else best_acc
            save("last.pt", val.as_dict("val") if val else {}, train_seconds)
            if improved:
                save("best.pt", val.as_dict("val") if val else {}, train_seconds)

        # The run's result is its best model by validation accuracy: test it, once.
        distributed.barrier()  # rank 0 has written best.pt
        best = checkpoint.load(checkpoints / "best.pt", compute.device)
        model.load_state_dict(best["model"])
        test = evaluate(t.trained, data.test, compute, settings.tta)
        tensorboard.scalars(position.step, **test.as_dict("test"))
        tensorboard.confusion("test/confusion", test.confusion, position.step)
        metrics = {
            **best["metrics"],
            **test.as_dict("test"),
            "best_epoch": best["epoch"],
            "epochs": settings.max_epochs,
            "steps": position.step,
            "skipped_steps": position.skipped,
            "train_seconds": round(train_seconds, 2),
            "train_images_per_second": round(
                settings.max_epochs * data.train.num_samples / train_seconds, 1
            ),
        }
        reported = {k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))}
        tensorboard.hyperparameters(dict(flatten(config)), reported)
    if writer:
        checkpoint.save(checkpoints / "best.pt", **{**best, "metrics": metrics})
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "test loss %.4f acc %.4f (weights of epoch %d); run saved in %s",
        test.loss,
        test.accuracy,
        best["epoch"],
        run_dir,
    )
    return metrics
