"""One training run from a composed config: build, maybe resume, train, evaluate, save, report."""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from fmnist import distributed, ood, run_state, runs, sweeps
from fmnist.config import validate
from fmnist.engine import (
    Compute,
    Metrics,
    NonFiniteLoss,
    Position,
    Training,
    evaluate,
    train_epoch,
    weight_average,
)
from fmnist.errors import Interrupted, UserError, reports_user_errors
from fmnist.report.training import TrainingReport
from fmnist.resume import resume_point

log = logging.getLogger("fmnist")


@reports_user_errors
def main(cfg: DictConfig) -> float:
    """`scripts/train.py`: validate, train in Hydra's run directory, return test accuracy (NaN
    for a sweep's job that failed, which is recorded while the sweep goes on, or for a run not
    tested: data.test=false)."""
    run_dir = runs.output_dir()
    with runs.removed_if_unused(run_dir):
        if runs.in_sweep():
            metrics = sweeps.job(run_dir, lambda: run(cfg, run_dir))
        else:
            metrics = run(cfg, run_dir)
    distributed.leave()  # under torchrun: all ranks here, then the group is gone
    test_acc: float = metrics.get("test_acc", math.nan) if metrics else math.nan
    return test_acc


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Validate, then train (a resumed sweep's job that finished before is kept as it is)."""
    validate(cfg)
    if runs.in_sweep() and sweeps.kept(run_dir, cfg.trainer.resume):
        # Printed, not logged: its log stays as it was, as do its .hydra/ (config_copy).
        print(f"{run_dir} finished before this sweep was resumed: kept as it is")
        metrics: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text())
        return metrics
    varied = sweeps.varied_settings() if runs.in_sweep() else []
    return train(cfg, run_dir, Launch(varied, continue_command()))


@dataclass
class Launch:
    """How a run was started, for what it does beyond training: the settings its sweep or search
    varies (TensorBoard's HPARAMS tab shows them first), the command that continues it after a
    stop, and what a search does after each epoch (report it; maybe stop the run early)."""

    varied: list[str]
    continue_command: str
    after_epoch: Callable[[Position, Metrics | None], None] | None = None


def train(cfg: DictConfig, run_dir: Path, launch: Launch) -> dict[str, Any]:
    """Train the configured model; write checkpoints, events and metrics.json to `run_dir`.

    With `trainer.resume=auto` or `ckpt_path`, continue an unfinished run where its last
    checkpoint left off: on a deterministic CPU run, bit for bit as if it had never stopped.
    """
    settings = cfg.trainer
    config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    training = build(cfg)
    checkpoints, progress = run_state.Checkpoints(run_dir, training, config), run_state.Progress()
    source = resume_point(cfg, run_dir)
    if source:
        progress = checkpoints.restore(source)
    position, data = progress.position, training.data
    resumed_at = position.step if source else None
    with (
        TrainingReport(run_dir, settings, distributed.is_main(), resumed_at) as report,
        run_state.StopSignals(launch.continue_command) as stop,
    ):
        report.start(training, config, source, position, launch.varied)
        for _ in report.epochs(position, settings.max_epochs):
            start = time.perf_counter()
            max_skipped = settings.max_skipped_in_a_row if settings.skip_nonfinite else 0
            steps = train_epoch(training, position, max_skipped)
            try:
                for step in report.steps(steps, position, len(data.train)):
                    stopping = distributed.any_(stop.received is not None, training.compute.device)
                    if stopping or checkpoints.due(step.number):
                        elapsed = progress.train_seconds + time.perf_counter() - start
                        checkpoints.save("last.pt", progress, elapsed)
                    if stopping:
                        raise interrupted(stop.received, step.number, checkpoints, launch)
            except NonFiniteLoss as e:
                raise NonFiniteLoss(
                    f"{e}; last good checkpoint: {checkpoints.last_good()}"
                ) from None
            progress.train_seconds += time.perf_counter() - start

            val = data.val and evaluate(
                training.evaluated, data.val, training.compute, settings.tta
            )
            seconds = time.perf_counter() - start
            report.validation(training, position, settings.max_epochs, val, seconds)
            checkpoints.save_epoch(progress, val)  # last.pt, and best.pt if val improved
            if launch.after_epoch:
                launch.after_epoch(position, val)

        # The run's result is its best model by validation accuracy: test it, once.
        best = checkpoints.load_best()
        test = data.test and evaluate(training.evaluated, data.test, training.compute, settings.tta)
        metrics = {
            **best["metrics"],
            **(test.as_dict("test") if test else {}),
            "best_epoch": best["epoch"],
            **progress.summary(settings.max_epochs * data.train.num_samples),
        }
        report.end(training, position.step, test, metrics)
    threshold = None
    if distributed.is_main():  # one rank measures; the others only wait for the group's end
        threshold = ood.fit_run(training.evaluated_module, config, training.compute)
    checkpoints.finish(best, metrics, threshold)
    tested = f"test loss {test.loss:.4f} acc {test.accuracy:.4f}" if test else "not tested"
    log.info("%s (weights of epoch %d); run saved in %s", tested, best["epoch"], run_dir)
    check_usable(metrics, run_dir)
    return metrics


def check_usable(metrics: dict[str, Any], run_dir: Path) -> None:
    """A run whose model gives a non-finite validation or test loss has diverged: it ends in one
    line and a non-zero exit, not as a normal run. Steps skipped by a run whose model is fine are
    noted."""
    losses = {key: metrics[key] for key in ("val_loss", "test_loss") if key in metrics}
    batches = metrics["steps"] + metrics["skipped_steps"]
    skipped = f"{metrics['skipped_steps']} of {batches} batches skipped"
    if not all(math.isfinite(value) for value in losses.values()):
        shown = ", ".join(f"{key.replace('_', ' ')} {value:.4g}" for key, value in losses.items())
        raise NonFiniteLoss(
            f"the run diverged ({skipped} for a non-finite loss; {shown}): its model in "
            f"{run_dir} is unusable; start again with a lower optimizer.lr"
        )
    if metrics["skipped_steps"]:
        log.info("note: %s for a non-finite loss; the model's losses are finite", skipped)


def continue_command() -> str:
    """The command that continues this run (in a sweep: the whole sweep), ready to paste: the
    same overrides, trainer.resume=auto, and the run's (or sweep's) directory."""
    hydra = HydraConfig.get()
    if runs.in_sweep():
        sweep_dir = Path(hydra.sweep.dir)
        given, where = ["-m", *sweeps.saved_overrides(sweep_dir)], f"hydra.sweep.dir={sweep_dir}"
    else:
        given, where = list(hydra.overrides.task), f"hydra.run.dir={hydra.run.dir}"
    kept = [item for item in given if sweeps.key_of(item) not in ("trainer.resume", "ckpt_path")]
    return shlex.join(["python", sys.argv[0], *kept, "trainer.resume=auto", where])


def interrupted(
    signum: int | None, step: int, checkpoints: run_state.Checkpoints, launch: Launch
) -> Interrupted:
    """The one line a stopped run ends with: where it saved, and the command that continues it."""
    signum = signum or signal.SIGTERM  # another rank received it
    return Interrupted(
        f"{signal.Signals(signum).name} at step {step}: saved {checkpoints.directory / 'last.pt'}; "
        f"continue with: {launch.continue_command}",
        exit_code=128 + signum,
    )


# --------------------------------------------------------------------------------------------
# Building a run from its config
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool) -> None:
    if deterministic:  # cuBLAS needs this to be deterministic on GPUs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    if deterministic != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)  # imports torch._inductor: 2 s
    torch.backends.cudnn.benchmark = not deterministic


def build_loss(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The `loss` group's object; its class weights become a tensor, as both losses expect
    (given to the constructor, not through the config, whose `weight` is a list of floats)."""
    weight = None if cfg.weight is None else torch.tensor(list(cfg.weight), dtype=torch.float32)
    loss: torch.nn.Module = instantiate(cfg, _partial_=True)(weight=weight).to(device)
    return loss


def build(cfg: DictConfig) -> Training:
    """Seed, then build data, model, loss, optimizer and schedule from the config."""
    settings = cfg.trainer
    distributed.init()
    seed_everything(cfg.seed, settings.deterministic)
    compute = Compute.choose(settings.device, str(settings.precision), settings.channels_last)

    data = instantiate(cfg.data, device=compute.device, seed=cfg.seed)
    model = instantiate(cfg.model)
    if settings.sync_batchnorm and distributed.world_size() > 1:
        if compute.device.type != "cuda":
            raise UserError(
                "trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU "
                "kernel): leave it false on CPU"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = compute.place(model)
    distributed.seed_per_rank(cfg.seed)  # from here on, each rank its own dropout masks
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = instantiate(cfg.scheduler)(
        optimizer, total_steps=settings.max_epochs * len(data.train)
    )
    trained = model
    if distributed.world_size() > 1:  # averages gradients over the ranks during backward
        device_ids = [compute.device.index] if compute.device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=device_ids)
    if settings.compile:
        trained = cast(torch.nn.Module, torch.compile(trained))  # an OptimizedModule
    ema = weight_average(model, settings.ema_decay) if settings.ema_decay else None
    loss_fn = build_loss(cfg.loss, compute.device)
    return Training(compute, data, model, trained, loss_fn, optimizer, scheduler, ema)
