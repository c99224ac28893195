"""The app (fmnist.app): each tab's logic in this process, the page's API through gradio_client
against the real server (conftest's `app_server`), and what the server refuses to serve.

The page itself, in a real browser: tests/test_browser_app.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import disguises
import pytest
import torch
from conftest import png_header, run_in_process
from PIL import Image

from fmnist import data
from fmnist.app import learning, lesson, server
from fmnist.app.picture import SHOWN, Pictures
from fmnist.errors import UserError
from fmnist.i18n import CLASSES_ZH, say
from fmnist.losses import cross_entropy
from fmnist.predict import from_checkpoint
from fmnist.prepare import image_of
from fmnist.report import val_predictions
from fmnist.script_configs import HALF_TRAINED_COAT, AppConfig, PrepareConfig, ServerConfig

# --------------------------------------------------------------------------------------------
# Cross-entropy by hand
# --------------------------------------------------------------------------------------------


def test_the_prefilled_examples_are_the_seeds():
    """explain.py's example gives 0.9185, the half-trained Coat 2.4361, term by term."""
    rows = server.explain_example()
    assert rows == [[1, -1, 0.5, 2], [2, -1, 0.5, 3]]
    worked = lesson.from_logits(rows)
    assert f"{worked.mean:.4f}" == "0.9185" and worked.agree
    assert worked.expansions() == [
        "-(0*log(0.0391)+1*log(0.1753)+0*log(0.7856)) = 1.7413",
        "-(0*log(0.0166)+0*log(0.0746)+1*log(0.9088)) = 0.0956",
    ]
    assert "**0.9185**" in worked.summary()
    assert worked.steps.startswith("Softmax + cross-entropy, step by step: 2 samples, 3 classes")
    coat = AppConfig().lesson
    worked = lesson.from_probs([[coat.target, *coat.probs]])
    assert list(coat.probs) == list(HALF_TRAINED_COAT)
    assert f"{worked.mean:.4f}" == "2.4361" and worked.expansions()[0].endswith("= 2.4361")
    assert "1*log(0.0875)" in worked.expansions()[0] and worked.agree


def test_an_edited_table_is_worked_out_by_fmnist_losses():
    """Any table: the mean is fmnist.losses.cross_entropy's, and PyTorch's agrees."""
    rows = [[0, 3.5, -2, 0.25, 7], [3, 1e4, 0, 0, -1e4], [2.0, "1.5", 0, 0, 0]]  # text cells too
    worked = lesson.from_logits(rows)
    x = torch.tensor([[3.5, -2, 0.25, 7], [1e4, 0, 0, -1e4], [1.5, 0, 0, 0]], dtype=torch.float64)
    t = torch.tensor([0, 3, 2])
    assert worked.mean == cross_entropy(x, t).item() and worked.targets == [0, 3, 2]
    assert worked.losses == cross_entropy(x, t, reduction="none").tolist()
    assert abs(worked.torch_mean - worked.mean) < 1e-9 and math.isfinite(worked.mean)
    headers, table = worked.q_table()
    assert headers[:3] == ["sample", "target", "q 0"] and len(table) == 3


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1, -1, "a", 2]], "logits must hold finite numbers, got 'a'"),
        ([[1, -1, None, 2]], "logits must hold finite numbers, got None"),
        ([[3, -1, 0.5, 2]], "target 3 is out of range: with 3 classes"),
        ([[1.5, -1, 0.5, 2]], "targets must be whole class indices like 0 or [1,2], got 1.5"),
        ([[1, 2]], "logits need at least 2 classes per row, got 1"),
        ([], "logits must be a list of numbers"),
    ],
)
def test_a_bad_table_is_one_line_naming_the_cell(rows, message):
    with pytest.raises(UserError) as caught:
        lesson.from_logits(rows)
    assert message in str(caught.value)


def test_infinite_losses_agree_by_explain_pys_rule_and_read_as_numbers():
    """q = 0 on the true class: both losses are infinite, and they agree, as scripts/explain.py
    says; the numbers stay numbers in JSON ("inf", not null). A logit of 1e308 is written
    1e+308, not as its 309 digits."""
    worked = lesson.from_probs([[0, 0.0, 0.5, 0.5]])
    assert worked.agree and "they agree: yes (both infinite)" in worked.summary()
    assert "nan" not in worked.summary() and "DISAGREE" not in worked.summary()
    numbers = json.loads(json.dumps(worked.as_dict()))
    assert numbers["mean"] == numbers["torch"] == "inf" and numbers["losses"] == ["inf"]
    assert "They agree: yes (both infinite)." in worked.steps
    huge = lesson.from_logits([[0, 1, 1e308, -1e308]])
    assert huge.agree and "**1e+308**" in huge.summary()
    assert not any(len(run) > 20 for run in re.findall(r"\d+", huge.summary() + huge.steps))


def test_probabilities_that_are_not_a_distribution_are_refused():
    with pytest.raises(UserError, match=r"sums to 1\.1000, not 1"):
        lesson.from_probs([[0, 0.5, 0.6]])


# --------------------------------------------------------------------------------------------
# Your picture
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pictures(trained_run) -> Pictures:
    return Pictures(from_checkpoint(str(trained_run), "cpu"), None)


@pytest.fixture(scope="module")
def test_png(data_root, tmp_path_factory) -> tuple[Path, int]:
    """Test image #1 as a PNG file, and its class."""
    images, labels = data.load_split("test", data_root)
    path = tmp_path_factory.mktemp("pictures") / "test-1.png"
    image_of(images[1]).save(path)
    return path, int(labels[1])


@pytest.mark.slow
def test_a_picture_is_what_predict_py_says_of_it(pictures, test_png, trained_run, tmp_path):
    """The tab's prediction and lesson are predict.py's, for the same file and true class."""
    path, label = test_png
    result = pictures.file(str(path), PrepareConfig(), label)
    out = tmp_path / "predict"
    ran = run_in_process(
        "scripts/predict.py",
        f"ckpt_path={trained_run}",
        f"images=[{path}]",
        f"target={label}",
        f"hydra.run.dir={out}",
    )
    assert ran.returncode == 0, ran.stderr
    (expected,) = json.loads((out / "predictions.json").read_text())["predictions"]
    shown = result.as_dict()
    assert shown["q"] == expected["q"] and shown["top"] == expected["top"]
    assert shown["lesson"]["loss"] == expected["lesson"]["loss"]
    printed = ran.stdout.replace(str(path), path.name)  # the page names the file, not its path
    assert "-log(q[" in result.lesson() and result.lesson() in printed
    top = result.top()
    assert max(top, key=top.get) == data.CLASSES[shown["top"][0]["class"]]
    captions = [caption for _, caption in result.steps()]
    assert captions == ["test-1.png, as given", "1. what the model sees (28x28)"]
    assert "- doubts: " in result.details() and "`inverted`: False" in result.details()


@pytest.mark.slow
@pytest.mark.parametrize("disguise", ["blue_on_grey", "gradient_80"])
def test_every_preparation_step_is_a_captioned_picture(pictures, data_root, disguise, tmp_path):
    """A photo-like picture goes through every step; each is shown as a picture, in order and
    captioned, and no array reaches the page's text."""
    images, _ = data.load_split("test", data_root)
    path = disguises.write(disguise, images[7].numpy(), 7, tmp_path)
    result = pictures.file(str(path), PrepareConfig(), None)
    made = [name for name, _ in result.prediction.picture.prepared.steps]
    assert made[-1] == "input" and len(made) >= 5, made
    assert ("evened" in made) == (disguise == "gradient_80") and "mask" in made
    shown = result.steps()
    assert [caption for _, caption in shown] == [
        f"{path.name}, as given",
        *(f"{n}. {say('en', f'picture.step.{name}')}" for n, name in enumerate(made, start=1)),
    ]
    # Each a small picture (at most SHOWN pixels a side: the browser enlarges it), the last the
    # model's 28x28 input as it is.
    assert all(
        isinstance(picture, Image.Image) and max(picture.size) <= SHOWN for picture, _ in shown
    )
    assert shown[-1][0].size == (28, 28)
    assert "array" not in result.details() and "[[" not in result.details()
    assert len(result.details()) < 1000


@pytest.mark.slow
def test_a_test_image_by_index_is_predicted_against_its_class(pictures, test_png):
    path, label = test_png
    result, found = pictures.test_image(1, PrepareConfig())
    assert found == label and result.prediction.lesson.target == label
    uploaded = pictures.file(str(path), PrepareConfig(), None)
    assert result.prediction.q == uploaded.prediction.q  # the PNG holds the same pixels
    with pytest.raises(UserError, match=r"test image 10000 does not exist: .* \(0..9999\)"):
        pictures.test_image(10_000, PrepareConfig())


@pytest.mark.slow
def test_bad_pictures_are_one_line_naming_the_file(pictures, tmp_path):
    """Named by the file's name, not by where the server keeps uploads."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20_000, 20_000))
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture\n")
    for path, message in (
        (bomb, "bomb.png is too large to decode safely (400,000,000 pixels"),
        (notes, "notes.png is not a picture Pillow can read"),
    ):
        with pytest.raises(UserError) as caught:
            pictures.file(str(path), PrepareConfig(), None)
        assert str(caught.value).startswith(message) and str(tmp_path) not in str(caught.value)


@pytest.mark.slow
def test_an_empty_drawing_or_no_shot_is_refused(pictures):
    blank = Image.new("RGBA", (400, 400), (0, 0, 0, 0))  # the sketchpad's untouched canvas
    for image in (blank, None, Image.new("RGB", (300, 200), "white")):
        with pytest.raises(UserError) as caught:
            pictures.image(image, "drawing", PrepareConfig(), None)
        assert str(caught.value) == "the drawing is empty: draw a piece of clothing first"
    with pytest.raises(UserError, match=r"there is no webcam shot \(or it is one flat colour\)"):
        pictures.image(None, "webcam", PrepareConfig(), None)
    drawn = blank.copy()
    drawn.paste((0, 0, 0, 255), (150, 100, 250, 300))  # a dark stroke on the canvas
    result = pictures.image(drawn, "drawing", PrepareConfig(), 3)
    assert result.prediction.picture.prepared.inverted  # shown on white, then inverted
    assert result.prediction.lesson.target == 3


# --------------------------------------------------------------------------------------------
# Watch it learn
# --------------------------------------------------------------------------------------------


def test_the_slider_shows_each_epochs_numbers(trained_run):
    run = learning.load(trained_run)
    assert run.epochs == [0, 1, 2] and [step for step, _ in run.train_loss] == list(range(1, 17))
    record = val_predictions.load(trained_run)
    for epoch in run.epochs:
        view = learning.view(run, epoch)
        assert view.summary.startswith(f"**Epoch {epoch}**")
        assert [row[5] for row in view.rows] == [round(v, 4) for v in record.epochs[epoch].loss]
        assert [row[1] for row in view.rows] == [data.CLASSES[y] for y in record.labels]
        assert [caption for _, caption in view.images] == [
            f"{data.CLASSES[y]} → {row[2]}, loss {loss:.4f}"
            for y, row, loss in zip(
                record.labels, view.rows, record.epochs[epoch].loss, strict=True
            )
        ]
        now = view.curve[view.curve.series == "this epoch"]
        assert set(now.step) == {record.epochs[epoch].step}  # the slider's epoch, marked
    untrained, last = learning.view(run, 0), learning.view(run, 2)
    assert [row[4] for row in untrained.rows] != [row[4] for row in last.rows]
    assert "(untrained, step 0)" in untrained.summary and "ln 10 = 2.3026" in untrained.summary
    followed = last.curve[last.curve.series == "the 16 images' mean loss"]
    assert list(followed.loss) == [e.mean_loss for e in record.epochs]
    chinese = learning.view(run, 2, "zh")
    assert chinese.summary.startswith("**第 2 个迭代周期**") and "ln 10 = 2.3026" in chinese.summary
    assert chinese.headers[0] == "图像" and chinese.rows[0][1] == CLASSES_ZH[record.labels[0]]
    assert [row[3:] for row in chinese.rows] == [row[3:] for row in last.rows]  # the same numbers


def test_a_run_without_validation_images_says_so_in_one_line(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("data:\n  val_size: 0\n")
    with pytest.raises(UserError) as caught:
        learning.load(tmp_path)
    assert str(caught.value) == learning.NO_VALIDATION
    (tmp_path / ".hydra" / "config.yaml").write_text("data:\n  val_size: 5000\n")
    with pytest.raises(UserError, match="it was trained before fmnist kept one"):
        learning.load(tmp_path)
    with pytest.raises(UserError, match=r"gone no longer exists \(deleted or moved since the"):
        learning.load(tmp_path / "gone")  # deleted while the page was serving


def test_the_runs_listed_are_the_pages_own_then_the_newest(trained_run, tmp_path):
    runs = tmp_path / "outputs" / "runs"
    for name in ("older", "newer"):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "last.pt").write_bytes(b"")
    os.utime(runs / "older" / "checkpoints" / "last.pt", (1, 1))
    assert learning.find_runs(tmp_path / "outputs", trained_run) == [
        trained_run,
        runs / "newer",
        runs / "older",
    ]
    assert learning.find_runs(tmp_path / "nowhere", None) == []


# --------------------------------------------------------------------------------------------
# The server's command line
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_without_ckpt_path_the_newest_finished_run_is_served(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert server.model(AppConfig()) == (None, None)  # no run: the lesson tab alone
    (tmp_path / "outputs" / "runs").mkdir(parents=True)
    (tmp_path / "outputs" / "runs" / "smoke").symlink_to(trained_run)
    unfinished = tmp_path / "outputs" / "runs" / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)  # no metrics.json: not a finished run
    predictor, run_dir = server.model(AppConfig())
    assert predictor is not None and run_dir == trained_run.resolve()  # the link, followed
    assert predictor.details["path"] == str((trained_run / "checkpoints" / "best.pt").resolve())


def test_a_port_in_use_or_a_foreign_address_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"port {port} is in use on 127\.0\.0\.1"):
            server.check_free(ServerConfig(port=port))
    with pytest.raises(
        UserError, match=r"server\.host=192\.0\.2\.1 is not an address of this machine"
    ):
        server.check_free(ServerConfig(host="192.0.2.1"))


@pytest.mark.slow
def test_without_a_model_the_lesson_works_and_the_other_tabs_say_how_to_train_one():
    """The page as built for no checkpoint: the lesson's worked examples, one line in each of the
    other tabs, no /predict; and Gradio's analytics off."""
    from fmnist.app import page

    contents = page.Contents(
        logits=server.explain_example(),
        probs=[[4, *HALF_TRAINED_COAT]],
        pictures=None,
        model="none",
        runs={},
        max_upload=server.MAX_UPLOAD,
    )
    blocks = page.build(contents)
    assert blocks.analytics_enabled is False
    config = blocks.get_config_file()
    texts = [c["props"].get("value") for c in config["components"] if c["type"] == "markdown"]
    assert texts.count(page.no_model("en")) == 2
    assert page.no_model("en").startswith("No trained model yet: train one with `make train`")
    assert any("**0.9185**" in str(t) for t in texts) and any("**2.4361**" in str(t) for t in texts)
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"explain", "explain_probs"} <= names and "predict" not in names


# --------------------------------------------------------------------------------------------
# The real server, through its API
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


@pytest.mark.slow
def test_the_api_names_explain_and_predict(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/explain", "/explain_probs", "/predict"}


def table_of(x: torch.Tensor) -> dict:
    """The lesson's logits table for logits `x`, with targets 2 and 0."""
    rows = [[t, *row] for t, row in zip([2, 0], x.tolist(), strict=True)]
    return {"headers": ["target", "a", "b", "c"], "data": rows}


@pytest.mark.slow
def test_explain_through_gradio_client_is_fmnist_losses(client):
    table = table_of(torch.tensor([[0.5, -3, 4], [1, 1, 1]]))
    summary, _, _, steps, numbers = client.predict(table, api_name="/explain")
    x = torch.tensor([[0.5, -3, 4], [1, 1, 1]], dtype=torch.float64)
    expected = cross_entropy(x, torch.tensor([2, 0])).item()
    assert numbers["mean"] == expected and numbers["agree"]
    assert f"**{expected:.4f}**" in summary and steps.startswith("Softmax + cross-entropy")
    chinese, _, _, zh_steps, zh_numbers = client.predict(table_of(x), "zh", api_name="/explain")
    assert zh_numbers == numbers and "两者一致吗：一致" in chinese  # the same numbers
    assert zh_steps.startswith("Softmax + 交叉熵，一步一步来")
    table = {"headers": ["target", "a", "b"], "data": [[0, 0.0, 1.0]]}
    summary, _, _, _, numbers = client.predict(table, api_name="/explain_probs")
    assert numbers["mean"] == numbers["torch"] == "inf" and numbers["agree"]
    assert "they agree: yes (both infinite)" in summary


@pytest.mark.slow
def test_predict_through_gradio_client_then_a_bad_file(client, test_png, pictures, tmp_path):
    """The API's answer is the tab's; a bad file is an error naming it, and the server goes on."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path, label = test_png
    top, _, steps, details, worked, numbers = client.predict(
        handle_file(str(path)), data.CLASSES[label], "auto", True, api_name="/predict"
    )
    expected = pictures.file(str(path), PrepareConfig(), label)
    assert numbers == json.loads(json.dumps(expected.as_dict()))
    assert top["label"] == data.CLASSES[expected.prediction.top[0]]
    assert [step["caption"] for step in steps] == [caption for _, caption in expected.steps()]
    assert details == expected.details() and worked == expected.lesson()
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture\n")
    with pytest.raises(AppError, match=r"notes\.png is not a picture Pillow can read"):
        client.predict(handle_file(str(notes)), "(unknown)", "auto", True, api_name="/predict")
    again = client.predict(handle_file(str(path)), "(unknown)", "auto", True, api_name="/predict")
    assert again[5]["q"] == numbers["q"] and again[5]["lesson"] is None
    chinese = client.predict(
        handle_file(str(path)), data.CLASSES[label], "auto", True, "zh", api_name="/predict"
    )
    assert chinese[0]["label"] == CLASSES_ZH[expected.prediction.top[0]]
    assert chinese[5] == numbers and "（p_c = 0 的项都消失了）" in chinese[4]  # same numbers
    with pytest.raises(AppError, match=r"notes\.png 不是 Pillow 能读取的图片"):
        client.predict(
            handle_file(str(notes)), "(unknown)", "auto", True, "zh", api_name="/predict"
        )


@pytest.mark.slow
def test_eight_clients_at_once_each_get_their_own_pictures_prediction(
    app_server, data_root, tmp_path
):
    """scripts/benchmark_app.py's load, on the real server: 24 different pictures from 8 clients
    at once, every answer its own picture's (checked by name and distribution in `load`), and a
    mixed-up or empty answer would be counted."""
    from fmnist.app import load

    pictures = load.test_pictures(tmp_path, 24, str(data_root))
    results = load.load(app_server.url, pictures, clients=8)
    assert (results["answered"], results["failed"], results["clients"]) == (24, 0, 8)
    assert 0 < results["latency_ms"]["p50"] <= results["latency_ms"]["p95"]
    q = [0.1] * 10
    assert load._check({"file": "test-3.png", "q": q}, pictures[3]) is None
    assert "the answer is for 'test-4.png'" in str(load._check({"file": "test-4.png"}, pictures[3]))
    assert "no distribution" in str(load._check({"file": "test-3.png", "q": q[:9]}, pictures[3]))


@pytest.mark.slow
def test_an_upload_over_20_mb_is_refused_by_the_server(app_server, test_png):
    """Whatever the client: the server itself refuses it (browsers and gradio_client also check
    before sending)."""
    import httpx

    path, _ = test_png
    picture = path.read_bytes()
    for padding, status in ((20 * 2**20, 413), (0, 200)):
        sent = httpx.post(
            f"{app_server.url}/gradio_api/upload",
            files={"files": ("big.png", picture + bytes(padding), "image/png")},
            timeout=120,
        )
        assert sent.status_code == status, sent.text
    assert (
        "maximum allowed size of 20971520 bytes"
        in httpx.post(
            f"{app_server.url}/gradio_api/upload",
            files={"files": ("big.png", bytes(20 * 2**20 + 1), "image/png")},
            timeout=120,
        ).text
    )


@pytest.mark.slow
def test_no_file_outside_the_upload_folder_is_served(app_server):
    """Not the run's files, not this machine's: by URL, or named in an API call."""
    for path in (
        app_server.run / "metrics.json",
        Path("/etc/hostname"),
        app_server.cwd / "app.log",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{app_server.url}/gradio_api/file={path}", timeout=10)
        assert refused.value.code in (403, 404), path
    call = urllib.request.Request(
        f"{app_server.url}/gradio_api/call/predict",
        data=json.dumps(
            {"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "(unknown)"]}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(call, timeout=10) as response:
        event = json.load(response)["event_id"]
    with urllib.request.urlopen(
        f"{app_server.url}/gradio_api/call/predict/{event}", timeout=60
    ) as response:
        stream = response.read().decode()
    assert "event: error" in stream and socket.gethostname() not in stream
