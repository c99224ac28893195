"""The CUDA paths, where a GPU exists: train, stop with SIGINT, resume, evaluate, the fast preset.

Skipped without CUDA (`pytest -m gpu` runs just these on a GPU machine)."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from conftest import SMOKE, run_script, start_training, torchrun, wait_for_checkpoint

from fmnist import checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
]
CUDA = [SMOKE, "trainer.device=cuda", "trainer.checkpoint_every_steps=1"]


def test_stop_resume_and_evaluate_on_cuda(data_root, tmp_path):
    process = start_training(tmp_path, *CUDA)
    wait_for_checkpoint(tmp_path, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped: SIGINT at step ")

    resumed = run_script("scripts/train.py", *CUDA, "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr  # RNG states restored on the CPU
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    out = tmp_path / "eval"
    evaluated = run_script("scripts/evaluate.py", f"ckpt_path={run_dir}", f"hydra.run.dir={out}")
    assert evaluated.returncode == 0, evaluated.stderr
    recorded = checkpoint.load(run_dir)["metrics"]["test_acc"]
    assert json.loads((out / "eval.json").read_text())["accuracy"] == recorded


def test_fast_preset_end_to_end_on_cuda(data_root, tmp_path):
    result = run_script(
        "scripts/train.py",
        "experiment=fast",
        "trainer.device=cuda",
        "trainer.progress=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] > 0.9


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_with_sync_batchnorm_on_gpus(data_root, tmp_path):
    result = torchrun(tmp_path, SMOKE, "trainer.sync_batchnorm=true")
    assert result.returncode == 0, result.report()
