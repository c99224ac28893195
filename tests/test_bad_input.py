"""Every kind of user mistake: a non-zero exit, one clear line, no traceback, nothing written."""

from __future__ import annotations

import pickle
import shutil
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch
from conftest import SMOKE, RunsCode, png_header, run_in_process, run_script

from fmnist import data
from fmnist.prepare import image_of

pytestmark = pytest.mark.slow  # the cases need a trained run; a real process for some


@pytest.fixture(scope="module")
def files(data_root, trained_run, tmp_path_factory) -> Iterator[dict[str, str]]:
    """Bad data roots, bad checkpoints and pictures, and a port in use, made once for the
    module."""
    base = tmp_path_factory.mktemp("bad")
    made = {"tmp": str(base), "marker": str(base / "MARKER")}
    for name, damage in (
        ("corrupt_root", lambda f: (f.seek(9000), f.write(b"\x07" * 4))),
        ("truncated_root", lambda f: f.truncate(1000)),
    ):
        root = base / name
        shutil.copytree(data.raw_dir(data_root), data.raw_dir(root))
        with open(data.raw_dir(root) / "t10k-images-idx3-ubyte", "r+b") as f:
            damage(f)
        made[name] = str(root)

    checkpoint = trained_run / "checkpoints" / "last.pt"
    made["smoke_ckpt"] = str(checkpoint)
    truncated = base / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    made["truncated_ckpt"] = str(truncated)
    foreign = base / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    made["foreign_ckpt"] = str(foreign)
    malicious = base / "malicious.pt"
    with open(malicious, "wb") as f:
        pickle.dump({"model": RunsCode(base / "MARKER"), "format": 1}, f)
    made["pickle_ckpt"] = str(malicious)
    made["torch_pickle_ckpt"] = str(base / "malicious_torch.pt")
    torch.save({"model": RunsCode(base / "MARKER")}, made["torch_pickle_ckpt"])

    images, _ = data.load_split("test", data_root)
    made["picture"] = str(base / "coat.png")
    image_of(images[0]).save(made["picture"])
    made["text_picture"] = str(base / "notes.png")
    Path(made["text_picture"]).write_text("not a picture\n")
    made["truncated_picture"] = str(base / "truncated.png")
    Path(made["truncated_picture"]).write_bytes(Path(made["picture"]).read_bytes()[:60])
    made["bomb"] = str(base / "bomb.png")
    Path(made["bomb"]).write_bytes(png_header(20_000, 20_000))
    (base / "empty").mkdir()
    made["empty_dir"] = str(base / "empty")
    made["text_onnx"] = str(base / "model.onnx")
    Path(made["text_onnx"]).write_text("not a model\n")
    made["foreign_onnx"] = str(base / "identity.onnx")
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [value],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), made["foreign_onnx"])
    made["torchscript"] = str(base / "model.torchscript.pt")
    with warnings.catch_warnings():  # PyTorch deprecates TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), made["torchscript"])
    with socket.socket() as busy:  # a port another server listens on, for the module's cases
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        made["busy_port"] = str(busy.getsockname()[1])
        yield made


TRAIN = "scripts/train.py"
EXPLAIN = "scripts/explain.py"
EVALUATE = "scripts/evaluate.py"
SNAPSHOT = "scripts/snapshot.py"
PREDICT = "scripts/predict.py"
EXPORT = "scripts/export.py"
BENCHMARK = "scripts/benchmark.py"
APP = "scripts/app.py"
BENCHMARK_APP = "scripts/benchmark_app.py"
CASES = [
    # (script, arguments, what the message must say)
    (TRAIN, ["loss=foo"], "Could not find 'loss/foo'"),
    (TRAIN, ["model.foo=1"], "Could not override 'model.foo'"),
    (TRAIN, ["data.batch_size=abc"], "could not be converted to Integer"),
    (TRAIN, ["trainer.max_epochs=1.5"], "could not be converted to Integer"),
    (TRAIN, ["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is invalid: must be > 0"),
    (TRAIN, ["optimizer.lr=0"], "optimizer.lr=0.0 is invalid: must be > 0"),
    (TRAIN, ["data.batch_size=0"], "data.batch_size=0 is invalid"),
    (TRAIN, ["data.eval_batch_size=-5"], "data.eval_batch_size=-5 is invalid"),
    (TRAIN, ["trainer.max_epochs=0"], "trainer.max_epochs=0 is invalid"),
    (TRAIN, ["data.val_size=-1"], "data.val_size=-1 is invalid"),
    (TRAIN, ["data.subset=0"], "data.subset=0 is invalid"),
    (TRAIN, ["optimizer.momentum=1.5"], "optimizer.momentum=1.5 is invalid"),
    (TRAIN, ["loss.label_smoothing=-0.1"], "loss.label_smoothing=-0.1 is invalid"),
    (TRAIN, ["loss.weight=[1,2]"], "give 10 non-negative class weights"),
    (TRAIN, ["model.widths=[]"], "model.widths=[] is invalid"),
    (TRAIN, ["trainer.device=tpu"], "choose one of auto, cpu, cuda"),
    (TRAIN, ["trainer.tta=true"], "choose one of none, flip, flip_shift"),
    (TRAIN, ["trainer.resume=yes"], "trainer.resume=yes is invalid"),
    (TRAIN, ["data.loader=fast"], "choose one of device, torch"),
    (TRAIN, ["data.val_size=60000"], "leaves no training data"),
    (
        TRAIN,
        ["data.root={tmp}/missing", "data.source_dirs=[]", "data.download=false"],
        "Fashion-MNIST is not in",
    ),
    (TRAIN, ["data.root={corrupt_root}"], "t10k-images-idx3-ubyte: checksum mismatch"),
    (TRAIN, ["data.root={truncated_root}"], "t10k-images-idx3-ubyte: truncated"),
    (TRAIN, ["ckpt_path={tmp}/nowhere.pt"], "no checkpoint at"),
    (
        TRAIN,
        ["ckpt_path={smoke_ckpt}", SMOKE, "model=linear"],
        "was trained with another config (model._target_=fmnist.models.SmallCNN there",
    ),
    (TRAIN, ["ckpt_path={truncated_ckpt}"], "is not a readable checkpoint"),
    (TRAIN, ["ckpt_path={foreign_ckpt}"], "is a PyTorch file but not an fmnist checkpoint"),
    (
        TRAIN,
        ["ckpt_path={pickle_ckpt}"],
        "was refused: it is not a plain fmnist checkpoint",
    ),
    (TRAIN, ["ckpt_path={torch_pickle_ckpt}"], "was refused: it is not a plain fmnist checkpoint"),
    (TRAIN, ["trainer.resume=auto"], "found nothing to resume"),
    (TRAIN, ["-m", "seed=0,1", "trainer.resume=auto"], "found no unfinished sweep under"),
    (TRAIN, ["ckpt_path={smoke_ckpt}", SMOKE], "has finished (metrics.json exists)"),
    (TRAIN, ["trainer.max_skipped_in_a_row=0"], "trainer.max_skipped_in_a_row=0 is invalid"),
    (EXPLAIN, ["logits=[[1,2],[3]]"], "error:"),
    (EXPLAIN, ["logits=[1,2,3]", "targets=3"], "error:"),
    (EXPLAIN, ["logits=[1,a,3]", "targets=0"], "error:"),
    (EXPLAIN, ["probs=[0.5,0.6]", "target=0"], "error:"),
    (EVALUATE, [], "ckpt_path is required"),
    (EVALUATE, ["ckpt_path={tmp}/nowhere.pt", "tta=shift"], "choose one of none, flip, flip_shift"),
    (EVALUATE, ["ckpt_path={tmp}/nowhere.pt"], "no checkpoint at"),
    (EVALUATE, ["ckpt_path={truncated_ckpt}"], "is not a readable checkpoint"),
    (EVALUATE, ["ckpt_path={foreign_ckpt}"], "is a PyTorch file but not an fmnist checkpoint"),
    (EVALUATE, ["ckpt_path={torch_pickle_ckpt}"], "was refused"),
    (EVALUATE, ["ckpt_path={smoke_ckpt}", "split=holdout"], "split"),
    (SNAPSHOT, ["index=10000"], "index"),
    (SNAPSHOT, ["target_class=10"], "target_class"),
    (SNAPSHOT, ["probs=[0.5,0.6]", "target=0"], "error:"),
    (
        SNAPSHOT,
        [
            "probs=[0.1058,0.1043,0.0988,0.1066,0.0875,0.0881,0.1027,0.1046,0.1057,0.0958]",
            "target=12",
        ],
        "error:",
    ),
    (SNAPSHOT, ["ckpt_path={pickle_ckpt}"], "was refused"),
    (PREDICT, ["images=[{picture}]"], "ckpt_path is required"),
    (PREDICT, ["ckpt_path={smoke_ckpt}"], "images is required"),
    (
        PREDICT,
        ["ckpt_path={smoke_ckpt}", "images=[{tmp}/nowhere.png]"],
        "nowhere.png does not exist",
    ),
    (PREDICT, ["ckpt_path={smoke_ckpt}", "images=[{empty_dir}]"], "{empty_dir} holds no picture"),
    (
        PREDICT,
        ["ckpt_path={smoke_ckpt}", "images=[{text_picture}]"],
        "{text_picture} is not a picture Pillow can read",
    ),
    (
        PREDICT,
        ["ckpt_path={smoke_ckpt}", "images=[{truncated_picture}]"],
        "{truncated_picture} could not be read",
    ),
    (PREDICT, ["ckpt_path={smoke_ckpt}", "images=[{bomb}]"], "{bomb} is too large to decode"),
    (
        PREDICT,
        ["ckpt_path={foreign_ckpt}", "images=[{picture}]"],
        "{foreign_ckpt} is a PyTorch file but not an fmnist checkpoint",
    ),
    (PREDICT, ["ckpt_path={pickle_ckpt}", "images=[{picture}]"], "was refused"),
    (
        PREDICT,
        ["ckpt_path={text_onnx}", "images=[{picture}]"],
        "{text_onnx} is not a readable ONNX model",
    ),
    (
        PREDICT,
        ["ckpt_path={foreign_onnx}", "images=[{picture}]"],
        "{foreign_onnx} is an ONNX model but not one exported by fmnist",
    ),
    (PREDICT, ["ckpt_path={smoke_ckpt}", "images=[{picture}]", "target=robe"], "target=robe"),
    (
        PREDICT,
        ["ckpt_path={torchscript}", "images=[{picture}]"],
        "{torchscript} is a TorchScript module, not an fmnist checkpoint",
    ),
    (EXPORT, [], "ckpt_path is required"),
    (EXPORT, ["ckpt_path={tmp}/nowhere.pt"], "no checkpoint at"),
    (EXPORT, ["ckpt_path={foreign_ckpt}"], "is a PyTorch file but not an fmnist checkpoint"),
    (EXPORT, ["ckpt_path={torch_pickle_ckpt}"], "was refused"),
    (EXPORT, ["ckpt_path={smoke_ckpt}", "format=tflite"], "choose one of onnx, torchscript"),
    (
        BENCHMARK,
        ["presets=[fast,nosuch]"],
        "presets: 'nosuch' is not a training config: "
        "In 'train': Could not find 'experiment/nosuch'",
    ),
    (BENCHMARK, ['presets=["trainer.max_epochs=0"]'], "trainer.max_epochs=0 is invalid"),
    (APP, ["ckpt_path={tmp}/nowhere.pt"], "no checkpoint at"),
    (APP, ["ckpt_path={foreign_ckpt}"], "is a PyTorch file but not an fmnist checkpoint"),
    (APP, ["ckpt_path={pickle_ckpt}"], "was refused"),
    (
        APP,
        ["server.port={busy_port}"],
        "port {busy_port} is in use on 127.0.0.1 (another server, or this page already running?)",
    ),
    (APP, ["server.port=70000"], "server.port=70000 is invalid: must be in 1..65535"),
    (APP, ["server.host=192.0.2.1"], "server.host=192.0.2.1 is not an address of this machine"),
    (APP, ["device=tpu"], "choose one of auto, cpu, cuda"),
    (APP, ["lesson.probs=[0.5,0.5]"], "give 10 probabilities, one per Fashion-MNIST class"),
    (BENCHMARK_APP, ["clients=0"], "clients=0 is invalid: must be at least 1"),
    (BENCHMARK_APP, ["ckpt_path={tmp}/nowhere.pt", "calls=1"], "no checkpoint at"),
]


# One case per script, and one per kind of failure (Hydra's, the schema's, the data's, a
# checkpoint's, a picture's), also as a real process: the exit code and stderr a shell sees.
REAL = {  # (script, *its arguments)
    (TRAIN, "loss=foo"),
    (TRAIN, "optimizer.lr=0"),
    (TRAIN, "data.root={corrupt_root}"),
    (TRAIN, "ckpt_path={pickle_ckpt}"),
    (EXPLAIN, "logits=[[1,2],[3]]"),
    (EVALUATE,),
    (SNAPSHOT, "target_class=10"),
    (PREDICT, "ckpt_path={smoke_ckpt}", "images=[{truncated_picture}]"),
    (EXPORT, "ckpt_path={foreign_ckpt}"),
    (BENCHMARK, "presets=[fast,nosuch]"),
    (APP, "server.port={busy_port}"),
}
IN_A_REAL_PROCESS = [case for case in CASES if (case[0], *case[1]) in REAL]
assert len(IN_A_REAL_PROCESS) == len(REAL), "REAL names a case CASES does not have"


@pytest.mark.parametrize(("script", "arguments", "message"), CASES, ids=lambda v: str(v)[:40])
def test_bad_input(files, tmp_path, script, arguments, message):
    """Each case through the script's own entry point, in this process (`run_in_process`)."""
    check(run_in_process, files, tmp_path, script, arguments, message)


@pytest.mark.parametrize(
    ("script", "arguments", "message"), IN_A_REAL_PROCESS, ids=lambda v: str(v)[:40]
)
def test_bad_input_in_a_real_process(files, tmp_path, script, arguments, message):
    check(run_script, files, tmp_path, script, arguments, message)


def check(run, files, tmp_path, script, arguments, message) -> None:
    """A non-zero exit, the message on stderr (ours: one line), no traceback, nothing written."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run(script, *(a.format(**files) for a in arguments), cwd=cwd)
    assert result.returncode != 0
    assert message.format(**files) in result.stderr
    assert "Traceback" not in result.stderr
    if result.stderr.startswith("error: "):  # ours: exactly one line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert [p for p in cwd.rglob("*") if p.is_file()] == []  # nothing half-written
    assert not Path(files["marker"]).exists()  # no checkpoint ever ran code
