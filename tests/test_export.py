"""scripts/export.py: the ONNX file passes onnx.checker and carries its metadata, both exports take
any batch size, and on 1000 test images ONNX Runtime and TorchScript give the PyTorch
checkpoint's logits (float32) and its predicted classes."""

from __future__ import annotations

import json
import warnings

import onnx
import onnxruntime
import pytest
import torch
from conftest import run_in_process

import fmnist
from fmnist import checkpoint, data, export
from fmnist.errors import UserError

pytestmark = pytest.mark.slow  # each export takes seconds (the session's, shared)

PARITY_IMAGES = 1000


def session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def load_torchscript(path, extra: dict | None = None) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        return torch.jit.load(str(path), _extra_files=extra if extra is not None else {})


def test_onnx_checker_and_metadata(trained_run, exported):
    model = onnx.load(str(exported["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    meta = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(meta["classes"]) == list(data.CLASSES)
    assert meta["fmnist_version"] == fmnist.__version__ and meta["producer"] == "fmnist"
    assert meta["tta"] == "flip" and meta["tta_in_graph"].startswith("no")
    assert meta["normalization"] == f"inside the graph: (image - {data.MEAN}) / {data.STD}"
    assert meta["checkpoint"] == str(trained_run / "checkpoints" / "best.pt")
    stored = checkpoint.load(trained_run)["ood"]
    assert float(meta["ood_threshold"]) == stored["threshold"] and stored["score"] == "energy"
    assert meta["ood_score"].startswith("energy: -logsumexp(logits)")
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert (graph_input.name, graph_output.name) == ("image", "logits")
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert not list(exported["onnx"].parent.glob("*.data"))  # the weights are inside


def test_torchscript_metadata(exported):
    extra = {export.METADATA_FILE: ""}
    load_torchscript(exported["torchscript"], extra)
    meta = json.loads(extra[export.METADATA_FILE])
    assert json.loads(meta["classes"]) == list(data.CLASSES)
    assert meta["fmnist_version"] == fmnist.__version__ and meta["tta"] == "flip"


@pytest.mark.parametrize("batch", [1, 7])
def test_any_batch_size(exported, batch):
    images = torch.rand(batch, 1, 28, 28)
    (logits,) = session(exported["onnx"]).run(["logits"], {"image": images.numpy()})
    assert logits.shape == (batch, 10)
    with torch.no_grad():
        assert load_torchscript(exported["torchscript"])(images).shape == (batch, 10)


@pytest.fixture(scope="module")
def reference(trained_run) -> tuple[torch.Tensor, torch.Tensor]:
    """1000 test images in [0, 1], and the checkpoint's float32 logits for them (no autocast,
    no TTA: what the exported graph computes)."""
    images, _ = data.load_split("test")
    loaded = checkpoint.load_model(trained_run)
    x = images[:PARITY_IMAGES].float().div(255).unsqueeze(1)
    with torch.no_grad():
        logits = loaded.model(
            data.normalise(images[:PARITY_IMAGES], loaded.mean, loaded.std)[:, None]
        )
    return x, logits


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_parity_on_1000_test_images(exported, reference, fmt):
    x, expected = reference
    if fmt == "onnx":
        (logits,) = session(exported["onnx"]).run(["logits"], {"image": x.numpy()})
        logits = torch.from_numpy(logits)
    else:
        with torch.no_grad():
            logits = load_torchscript(exported["torchscript"])(x)
    agreement = (logits.argmax(1) == expected.argmax(1)).float().mean().item()
    difference = (logits - expected).abs().max().item()
    print(
        f"\n{fmt}: {agreement:.2%} of {len(x)} predictions identical, max |logit difference| "
        f"{difference:.2e}"
    )
    assert agreement >= 0.999
    assert difference < 1e-4


def test_a_checkpoint_without_a_threshold_exports_without_one(trained_run, tmp_path):
    old = checkpoint.load(trained_run)
    del old["ood"]
    checkpoint.save(tmp_path / "old.pt", **old)
    done = export.export_checkpoint(str(tmp_path / "old.pt"), "onnx", tmp_path)
    assert "ood_threshold" not in done["metadata"]
    assert export.load_onnx(done["path"]).ood_threshold is None
    assert "no ood_threshold: the checkpoint has none" in export.summary(done)


def test_the_script_says_what_it_checked(trained_run, tmp_path):
    out = tmp_path / "out"
    result = run_in_process("scripts/export.py", f"ckpt_path={trained_run}", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    assert f"to {out / 'model.onnx'} (onnx, " in result.stdout
    assert "Checked: onnx.checker passes; the file, loaded back, gives the checkpoint's logits" in (
        result.stdout
    )
    assert "INFO" not in result.stdout  # the exporter's own log lines are kept quiet


def test_an_export_that_disagrees_is_removed(trained_run, tmp_path, monkeypatch):
    real = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda *args: real(*args) + 1e-3)
    with pytest.raises(UserError, match="computes other logits than the checkpoint"):
        export.export_checkpoint(str(trained_run), "torchscript", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_exportable_swaps_the_global_max_pool_for_the_same_amax(trained_run):
    model = checkpoint.load_model(trained_run).model.eval()
    copy = export.exportable(model)
    assert isinstance(model.head[0], torch.nn.AdaptiveMaxPool2d)  # the model itself is untouched
    assert isinstance(copy.head[0], export.GlobalMaxPool)
    assert not any(isinstance(m, torch.nn.AdaptiveMaxPool2d) for m in copy.modules())
    images = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(copy(images), model(images))  # a max is a max: bit for bit
