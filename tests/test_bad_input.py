"""Every kind of user mistake: a non-zero exit, one clear line, no traceback, nothing written."""

from __future__ import annotations

import pickle
import shutil
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch
from conftest import (
    ROOT,
    SMOKE_RUN,
    RunsCode,
    copy_run,
    png_header,
    run_in_process,
    run_script,
)
from omegaconf import OmegaConf

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
    made["finished_run"] = str(copy_run(trained_run, base / "finished"))
    made["stopped_run"] = str(copy_run(trained_run, base / "stopped", finished=False))
    (base / "stopped_early" / "checkpoints").mkdir(parents=True)  # before its first epoch's end
    shutil.copy(checkpoint, base / "stopped_early" / "checkpoints" / "last.pt")
    made["stopped_early"] = str(base / "stopped_early")
    made["sweep"] = str(base / "sweep")
    (base / "sweep").mkdir()
    task = {"hydra": {"overrides": {"task": ["optimizer.lr=0.05,0.1", "seed=0"]}}}
    OmegaConf.save(task, base / "sweep" / "multirun.yaml")
    for run in RUNS:
        made[f"{run} listing"] = listing(Path(made[run]))
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
    spaces = base / "spaces" / "hparams_search"  # search spaces of a user's own (tune.py)
    spaces.mkdir(parents=True)
    for name, entry in (
        ("unknown", "optimizer.lrr: {low: 0.1, high: 0.2}"),
        ("empty", "optimizer.lr: {low: 0.5, high: 0.1}"),
        ("through_zero", "optimizer.lr: {low: 0.0, high: 0.1, log: true}"),
        ("bad_choice", "model: {choices: [small_cnn, resnet]}"),
    ):
        (spaces / f"{name}.yaml").write_text(
            f"# @package _global_\nsearch:\n  study: {name}\n  overrides: [experiment=smoke]\n"
            f"  space:\n    {entry}\n"
        )
    made["spaces"] = f"hydra.searchpath=[file://{spaces.parent}]"
    with socket.socket() as busy:  # a port another server listens on, for the module's cases
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        made["busy_port"] = str(busy.getsockname()[1])
        yield made


RUNS = ("finished_run", "stopped_run", "stopped_early", "sweep")  # directories cases point at


def listing(directory: Path) -> str:
    """What `directory` holds: each file's path, size and modification time."""
    return repr(
        [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.rglob("*"))]
    )


TRAIN = "scripts/train.py"
EXPLAIN = "scripts/explain.py"
EVALUATE = "scripts/evaluate.py"
SNAPSHOT = "scripts/snapshot.py"
PREDICT = "scripts/predict.py"
EXPORT = "scripts/export.py"
BENCHMARK = "scripts/benchmark.py"
UNWRITABLE = (  # /sys: no directory can be made there, even by root
    "error: cannot create or write the output directory /sys/x (Operation not permitted): give "
    "one you can write, hydra.{}.dir=DIR"
)
BEFORE_ITS_FIRST_EPOCH = (
    "{stopped_early} has no checkpoints/best.pt: its run stopped during its first epoch, and "
    "checkpoints/last.pt holds its weights as they were then: give "
    "ckpt_path={stopped_early}/checkpoints/last.pt"
)
APP = "scripts/app.py"
BENCHMARK_APP = "scripts/benchmark_app.py"
TUNE = "scripts/tune.py"
CASES = [
    # (script, arguments, what the message must say)
    (TRAIN, ["loss=foo"], "loss=foo is not an option of loss: choose one of scratch, torch"),
    (TRAIN, ["model.foo=1"], "model.foo is not a setting of model=small_cnn: its settings are"),
    (TRAIN, ["data.batch_size=abc"], "data.batch_size=abc is invalid: Value 'abc' of type 'str'"),
    (TRAIN, ["trainer.max_epochs=1.5"], "trainer.max_epochs=1.5 is invalid: Value '1.5' of type"),
    (TRAIN, ["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is invalid: must be > 0"),
    (TRAIN, ["optimizer.lr=0"], "optimizer.lr=0.0 is invalid: must be > 0"),
    (TRAIN, ["data.batch_size=0"], "data.batch_size=0 is invalid"),
    (TRAIN, ["data.eval_batch_size=-5"], "data.eval_batch_size=-5 is invalid"),
    (TRAIN, ["trainer.max_epochs=0"], "trainer.max_epochs=0 is invalid"),
    (TRAIN, ["data.val_size=-1"], "data.val_size=-1 is invalid"),
    (TRAIN, ["data.subset=0"], "data.subset=0 is invalid"),
    (TRAIN, ["data.zoom=1"], "data.zoom=1.0 is invalid: must be in [0, 1)"),
    (TRAIN, ["optimizer.momentum=1.5"], "optimizer.momentum=1.5 is invalid"),
    (TRAIN, ["loss.label_smoothing=-0.1"], "loss.label_smoothing=-0.1 is invalid"),
    (TRAIN, ["loss.weight=[1,2]"], "give 10 non-negative class weights"),
    (TRAIN, ["model.widths=[]"], "model.widths=[] is invalid"),
    (TRAIN, ["trainer.device=tpu"], "choose one of auto, cpu, cuda, mps"),
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
        ["ckpt_path={smoke_ckpt}", *SMOKE_RUN, "model=linear"],
        "was trained with another config (model=small_cnn there, linear now)",
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
    (TRAIN, ["ckpt_path={smoke_ckpt}", *SMOKE_RUN], "has finished (metrics.json exists)"),
    (TRAIN, ["trainer.max_skipped_in_a_row=0"], "trainer.max_skipped_in_a_row=0 is invalid"),
    (TRAIN, ["optimizer.lr=inf"], "optimizer.lr=inf is invalid: must be > 0 and finite"),
    (TRAIN, ["optimizer.lr=nan"], "optimizer.lr=nan is invalid: must be > 0 and finite"),
    (
        TRAIN,
        ["optimizer.lrr=0.1"],
        "error: optimizer.lrr is not a setting of optimizer=sgd: its settings are lr, momentum, "
        "nesterov, weight_decay",
    ),
    (TRAIN, ["+optimizer.lrr=0.1"], "error: optimizer.lrr is not a setting of optimizer=sgd"),
    (TRAIN, ["-m", "optimizer.lrr=0.1,0.2"], "error: optimizer.lrr is not a setting of"),
    (
        TRAIN,
        ["sed=1"],
        "error: sed is not a setting of the config: its settings are data, model, loss, optimizer",
    ),
    (
        TRAIN,
        ["ckpt_path=outputs/multirun/x/0_data.subset=8192,loss=scratch"],
        "error: cannot read 'ckpt_path=outputs/multirun/x/0_data.subset=8192,loss=scratch': "
        "mismatched input '='",
    ),
    (TRAIN, ["hydra.run.dir=/sys/x"], UNWRITABLE.format("run")),
    (TRAIN, ["-m", "seed=0,1", "hydra.sweep.dir=/sys/x"], UNWRITABLE.format("sweep")),
    (
        TRAIN,
        ["hydra.run.dir={finished_run}"],
        "error: {finished_run} holds a finished run (metrics.json exists): give another "
        "hydra.run.dir for a new run",
    ),
    (
        TRAIN,
        [*SMOKE_RUN, "trainer.resume=auto", "hydra.run.dir={finished_run}"],
        "error: {finished_run} has finished (metrics.json exists): nothing to resume",
    ),
    (
        TRAIN,
        ["hydra.run.dir={stopped_run}"],
        "error: {stopped_run} holds an unfinished run: continue it with trainer.resume=auto",
    ),
    (
        TRAIN,
        [*SMOKE_RUN, "seed=1", "trainer.resume=auto", "hydra.run.dir={stopped_run}"],
        "(seed=0 there, 1 now): resume with the same overrides",
    ),
    (
        TRAIN,
        ["-m", "optimizer.lr=0.05,0.2", "trainer.resume=auto", "hydra.sweep.dir={sweep}"],
        "error: {sweep} was started with other overrides (optimizer.lr=0.05,0.1 seed=0): resume",
    ),
    (EXPLAIN, ["logits=[[1,2],[3]]"], "error:"),
    (EXPLAIN, ["logits=[1,2,3]", "targets=3"], "error:"),
    (EXPLAIN, ["logits=[1,a,3]", "targets=0"], "error:"),
    (EXPLAIN, ["probs=[0.5,0.6]", "target=0"], "error:"),
    (
        EXPLAIN,
        ["logit=[1,2,3]", "targets=0"],
        "error: logit is not a setting of the config: its settings are logits, targets, probs",
    ),
    (EVALUATE, [], "ckpt_path is required"),
    (EVALUATE, ["ckpt_path={tmp}/nowhere.pt", "tta=shift"], "choose one of none, flip, flip_shift"),
    (EVALUATE, ["ckpt_path={tmp}/nowhere.pt"], "no checkpoint at"),
    (EVALUATE, ["ckpt_path={truncated_ckpt}"], "is not a readable checkpoint"),
    (EVALUATE, ["ckpt_path={foreign_ckpt}"], "is a PyTorch file but not an fmnist checkpoint"),
    (EVALUATE, ["ckpt_path={torch_pickle_ckpt}"], "was refused"),
    (EVALUATE, ["ckpt_path={smoke_ckpt}", "split=holdout"], "split"),
    (
        EVALUATE,
        ["splitt=val"],
        "error: splitt is not a setting of the config: its settings are ckpt_path, split, device",
    ),
    (EVALUATE, ["ckpt_path={stopped_early}"], BEFORE_ITS_FIRST_EPOCH),
    (
        EVALUATE,
        ["ckpt_path={sweep}"],
        "error: {sweep} is a sweep, not a run: give one of its jobs, ckpt_path={sweep}/<job> "
        "(none of its jobs has a checkpoint yet)",
    ),
    (TRAIN, ["ckpt_path={sweep}"], "error: {sweep} is a sweep, not a run: give one of its jobs"),
    (
        EVALUATE,
        ["ckpt_path={smoke_ckpt}", "data.root={tmp}/missing"],
        "error: Fashion-MNIST is not prepared in {tmp}/missing: prepare it there with `python -m "
        "fmnist.data --root {tmp}/missing` (`make data` prepares the project's data/), or give "
        "data.root=DIR of a prepared copy",
    ),
    (EVALUATE, ["ckpt_path={smoke_ckpt}", "hydra.run.dir=/sys/x"], UNWRITABLE.format("run")),
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
    (SNAPSHOT, ["model.foo=1"], "error: model.foo is not a setting of model=small_cnn"),
    (SNAPSHOT, ["hydra.run.dir=/sys/x"], UNWRITABLE.format("run")),
    (PREDICT, ["images=[{picture}]"], "ckpt_path is required"),
    (
        PREDICT,
        ["ckpt_path={smoke_ckpt}", "images=[{picture}]", "hydra.run.dir=/sys/x"],
        UNWRITABLE.format("run"),
    ),
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
    (EXPORT, ["ckpt_path={stopped_early}"], BEFORE_ITS_FIRST_EPOCH),
    (EXPORT, ["ckpt_path={smoke_ckpt}", "hydra.run.dir=/sys/x"], UNWRITABLE.format("run")),
    (
        BENCHMARK,
        ["presets=[fast,nosuch]"],
        "presets: 'nosuch' is not a training config: "
        "In 'training': Could not find 'experiment/nosuch'",
    ),
    (BENCHMARK, ['presets=["trainer.max_epochs=0"]'], "trainer.max_epochs=0 is invalid"),
    (BENCHMARK, ["hydra.run.dir=/sys/x"], UNWRITABLE.format("run")),
    (BENCHMARK, ["stepss=3"], "error: stepss is not a setting of the config: its settings are"),
    (BENCHMARK, ["steps=0"], "error: steps=0 is invalid: must be at least 1"),
    (BENCHMARK, ["loss_shapes=[[256]]"], "error: loss_shapes=[[256]] is invalid: give [N, C]"),
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
    (APP, ["device=tpu"], "choose one of auto, cpu, cuda, mps"),
    (APP, ["lesson.probs=[0.5,0.5]"], "give 10 probabilities, one per Fashion-MNIST class"),
    (APP, ["server.prt=1"], "error: server.prt is not a setting of server: its settings are host"),
    (
        APP,
        ["server.port=abc"],
        "error: server.port=abc is invalid: Value 'abc' of type 'str' could not be converted",
    ),
    (APP, ["foo=1"], "error: foo is not a setting of the config: its settings are ckpt_path"),
    (APP, ["+foo=1"], "error: foo is not a setting of the config: its settings are ckpt_path"),
    (
        APP,
        ["model=linear"],
        "error: model is not a setting of scripts/app.py: leave out model=linear "
        "(`python scripts/app.py --help` lists its settings)",
    ),
    (BENCHMARK_APP, ["clients=0"], "clients=0 is invalid: must be at least 1"),
    (BENCHMARK_APP, ["model=linear"], "error: model is not a setting of scripts/benchmark_app.py"),
    (BENCHMARK_APP, ["+calls2=1"], "error: calls2 is not a setting of the config"),
    (TUNE, [], "error: choose a search: hparams_search=NAME (fast, fast_pareto, smoke)"),
    (TUNE, ["hparams_search=nosuch"], "hparams_search=nosuch is not an option of hparams_search"),
    (
        TUNE,
        ["hparams_search=unknown", "{spaces}"],
        "error: search.space: optimizer.lrr is not a setting of optimizer=sgd: its settings are lr",
    ),
    (
        TUNE,
        ["hparams_search=empty", "{spaces}"],
        "error: search.space.optimizer.lr: the range 0.5..0.1 is empty: give low below high",
    ),
    (
        TUNE,
        ["hparams_search=through_zero", "{spaces}"],
        "error: search.space.optimizer.lr: a log range must stay above zero, got low=0.0",
    ),
    (
        TUNE,
        ["hparams_search=bad_choice", "{spaces}"],
        "error: search.space: model=resnet is not an option of model: choose one of",
    ),
    (TUNE, ["hparams_search=smoke", "search.n_trials=0"], "search.n_trials=0 is invalid"),
    (
        TUNE,
        ["hparams_search=smoke", "search.storage=redis://localhost/0"],
        "error: search.storage=redis://localhost/0 is invalid: give sqlite:///path/study.db",
    ),
    (
        TUNE,
        ["hparams_search=smoke", "search.storage=postgresql://me:secret@127.0.0.1:1/fmnist"],
        "error: search.storage: cannot use postgresql+psycopg://me:***@127.0.0.1:1/fmnist (",
    ),
    (
        TUNE,
        ["hparams_search=smoke", "search.objectives=[val_acc,train_seconds]"],
        "error: search.pruner=median cannot stop trials of a two-objective search",
    ),
    (
        TUNE,
        ["hparams_search=smoke", "search.objectives=[train_seconds]"],
        "search.objectives=['train_seconds'] is invalid: give [val_acc], or [val_acc,train_secon",
    ),
    (
        TUNE,
        ["hparams_search=smoke", "optimizer.lr=0.1"],
        "error: optimizer.lr=0.1: optimizer.lr is searched by this hparams_search (search.space)",
    ),
    (
        TUNE,
        ["hparams_search=smoke", "data.val_size=0"],
        "error: a search judges its trials on the validation split, and this config has none",
    ),
    (TUNE, ["hparams_search=smoke", "search.study=a/b"], "search.study=a/b is invalid"),
    (BENCHMARK_APP, ["ckpt_path={tmp}/nowhere.pt", "calls=1"], "no checkpoint at"),
]


# One case per script, and one per kind of failure (Hydra's, the schema's, the data's, a
# checkpoint's, a picture's), also as a real process: the exit code and stderr a shell sees.
REAL = {  # (script, *its arguments)
    (TRAIN, "loss=foo"),
    (TRAIN, "optimizer.lr=0"),
    (TRAIN, "data.root={corrupt_root}"),
    (TRAIN, "ckpt_path={pickle_ckpt}"),
    (TRAIN, "optimizer.lrr=0.1"),
    (TRAIN, "hydra.run.dir=/sys/x"),
    (EXPLAIN, "logits=[[1,2],[3]]"),
    (EVALUATE,),
    (SNAPSHOT, "target_class=10"),
    (PREDICT, "ckpt_path={smoke_ckpt}", "images=[{truncated_picture}]"),
    (EXPORT, "ckpt_path={foreign_ckpt}"),
    (BENCHMARK, "presets=[fast,nosuch]"),
    (APP, "server.port={busy_port}"),
    (APP, "model=linear"),
    (BENCHMARK_APP, "clients=0"),
    (EXPLAIN, "logit=[1,2,3]", "targets=0"),
    (TUNE, "hparams_search=smoke", "search.n_trials=0"),
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


SCRIPTS = sorted(path.name for path in (ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("setting", ["nosuch=1", "+nosuch=1"])
def test_every_script_refuses_an_unknown_setting(files, tmp_path, script, setting):
    """Every script in scripts/ (a new one cannot skip this): an unknown setting, typed plain or
    added with +, is its one line naming the setting, not Hydra's several lines nor a traceback;
    and every script has a case of its own in CASES."""
    message = "error: nosuch is not a setting of the config: its settings are "
    check(run_in_process, files, tmp_path, f"scripts/{script}", [setting], message)
    assert f"scripts/{script}" in {case[0] for case in CASES}


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
    for run in RUNS:  # the cases that refuse them leave them as they were
        assert listing(Path(files[run])) == files[f"{run} listing"], run


HUGE_PICTURE = """
import re, sys
from pathlib import Path
from fmnist import predict
from fmnist.script_configs import PredictConfig

def kilobytes(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1])

settings = PredictConfig(ckpt_path="-", images=[sys.argv[1]])
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
before = kilobytes("VmRSS")
picture = predict.load(Path(sys.argv[1]), settings)
print((kilobytes("VmHWM") - before) // 1024, *picture.box())
"""


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_a_picture_just_under_the_bomb_limit_is_read_small(tmp_path, suffix):
    """A 9400x9400 picture (88 million pixels, a 300 kB RGB PNG or a palette GIF) is read and
    prepared in a few hundred MB: made small as it is decoded, not prepared at full size
    (gigabytes)."""
    from PIL import Image, ImageDraw

    path = tmp_path / f"huge.{suffix}"
    if suffix == "png":
        picture = Image.new("RGB", (9400, 9400), (235, 235, 235))
        ImageDraw.Draw(picture).rectangle((3000, 2000, 6000, 7500), fill=(30, 40, 120))
    else:
        picture = Image.new("P", (9400, 9400), 0)
        picture.putpalette([235, 235, 235, 30, 40, 120])
        ImageDraw.Draw(picture).rectangle((3000, 2000, 6000, 7500), fill=1)
    picture.save(path)
    result = subprocess.run(
        [sys.executable, "-c", HUGE_PICTURE, str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    megabytes, *box = map(int, result.stdout.split())
    assert megabytes < 500, f"{megabytes} MB to read and prepare it"
    # The object's box in the file's own pixels, with preparation's margin (2% of its longest
    # side, 110 pixels) and the block averaged (27 pixels) either side.
    for found, edge in zip(box, (2000, 3000, 7501, 6001), strict=True):
        assert abs(abs(found - edge) - 110) <= 30, box
