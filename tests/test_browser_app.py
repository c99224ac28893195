"""The app's page as a person uses it, in a real browser with no way to the internet.

The real server (conftest's `app_server`: `scripts/app.py` on the session's trained run) and
headless Chromium (conftest's `browser`, as tests/test_browser.py drives TensorBoard): the worked
examples and an edited logit, a test image uploaded and its class on top, bad uploads answered in
the page while the server goes on, and the slider over a run's epochs. Every request the page
makes to anywhere but the server is refused and fails the test: the page works offline.

Each test saves a screenshot of its tab under its temporary directory; with
FMNIST_SCREENSHOTS=docs/images they also replace the README's pictures there (docs/app.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TIMEOUT_MS, png_header
from PIL import Image

from fmnist import data
from fmnist.app.learning import NO_VALIDATION
from fmnist.app.picture import Pictures
from fmnist.i18n import CLASSES_ZH
from fmnist.losses import cross_entropy
from fmnist.predict import from_checkpoint
from fmnist.prepare import image_of
from fmnist.report import val_predictions
from fmnist.script_configs import PrepareConfig

with contextlib.suppress(ImportError):  # conftest's `chromium` fixture skips (or fails) first
    from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("chromium")]

SCREENSHOTS = os.environ.get("FMNIST_SCREENSHOTS")  # a directory for the docs' pictures


@pytest.fixture
def app(app_server, page: Page) -> Iterator[Page]:
    """The page, opened on the lesson tab. A request to anywhere but the server (a font, a
    script from a CDN, analytics) is refused, and fails the test; so does a JavaScript error."""
    outside: list[str] = []
    errors: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(app_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app_server.url)
    expect(page.get_by_role("tab", name="Cross-entropy by hand")).to_be_visible()
    yield page
    assert outside == [], "the page reached beyond the server"
    assert errors == []


def screenshot(page: Page, path: Path, name: str) -> None:
    """The whole page as it is now; with FMNIST_SCREENSHOTS, a small copy there too (PNG in 64
    colours: a few dozen kB)."""
    page.mouse.move(0, 0)  # no hover effects
    page.screenshot(path=path / name, full_page=True)
    if SCREENSHOTS:
        with Image.open(path / name) as shot:
            small = shot.convert("RGB").quantize(colors=64, dither=Image.Dither.NONE)
            small.save(Path(SCREENSHOTS) / name, optimize=True)


def toast(page: Page, message: str) -> None:
    """The page shows `message` in an error notice; it is then closed."""
    notice = page.get_by_test_id("toast-body").filter(has_text=message)
    expect(notice).to_be_visible()
    notice.get_by_test_id("toast-close").click()
    expect(notice).to_have_count(0)


def test_the_lesson_works_the_examples_and_follows_an_edit(app: Page, tmp_path):
    logits, probs = app.locator("#logits-summary"), app.locator("#probs-summary")
    expect(logits).to_contain_text(re.compile(r"Mean loss, ours \(.*\): 0\.9185"))
    expect(logits).to_contain_text(re.compile(r"PyTorch \(.*\): 0\.9185, they agree"))
    expect(logits).to_contain_text("-(0*log(0.0391)+1*log(0.1753)+0*log(0.7856)) = 1.7413")
    expect(probs).to_contain_text(re.compile(r"Mean loss, ours \(.*\): 2\.4361"))
    expect(probs).to_contain_text("1*log(0.0875)")
    screenshot(app, tmp_path, "app-lesson.png")

    # Sample 1's last logit, 2 -> 4: the loss is what fmnist.losses says it is.
    table = app.locator("#logits-input")
    table.locator("[data-row='0'][data-col='3']").dblclick()
    table.get_by_label("Edit cell").fill("4")
    table.get_by_label("Edit cell").press("Enter")
    x = torch.tensor([[-1, 0.5, 4], [-1, 0.5, 3]], dtype=torch.float64)
    mean = cross_entropy(x, torch.tensor([1, 2])).item()
    assert f"{mean:.4f}" != "0.9185"
    expect(logits).to_contain_text(re.compile(rf"Mean loss, ours \(.*\): {mean:.4f}"))
    expect(logits).to_contain_text(re.compile(rf"PyTorch \(.*\): {mean:.4f}, they agree"))

    # A cell that is not a number is named in the page; the table is still worked out after it.
    table.locator("[data-row='1'][data-col='0']").dblclick()
    table.get_by_label("Edit cell").fill("7")
    table.get_by_label("Edit cell").press("Enter")
    toast(app, "target 7 is out of range: with 3 classes, targets must be in [0, 2]")


@pytest.fixture(scope="module")
def right_picture(app_server, data_root, tmp_path_factory) -> tuple[Path, str]:
    """A test image the served model predicts right and surely (q > 0.5), as a PNG file, and
    its class: uploaded, its class must come out on top."""
    pictures = Pictures(from_checkpoint(str(app_server.run), "cpu"), str(data_root))
    images, labels = pictures.test_split()
    for index in range(len(labels)):
        result, label = pictures.test_image(index, PrepareConfig())
        top = result.prediction.top[0]
        if top == label and result.prediction.q[top] > 0.5:
            path = tmp_path_factory.mktemp("upload") / f"test-{index}.png"
            image_of(images[index]).save(path)
            return path, data.CLASSES[label]
    raise AssertionError("the model predicts no test image right")


def upload(page: Page, path: Path) -> None:
    box = page.locator("#picture-file")
    clear = box.get_by_role(
        "button", name=re.compile("^(Clear|清除)$")
    )  # Gradio's, either language
    if clear.count():  # a file is shown: take it away first
        clear.click()
    box.locator("input[type=file]").set_input_files(path)


def draw_a_shirt(page: Page) -> None:
    """A T-shape drawn with the mouse on the sketchpad, as a person would: press, move, lift."""
    box = page.locator("#picture-drawing canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    strokes = [
        [(-60, -60), (60, -60)],  # shoulders and sleeves
        [(0, -60), (0, 70)],  # the body
        [(-25, -50), (-25, 70), (25, 70), (25, -50)],
    ]
    for stroke in strokes:
        page.mouse.move(x + stroke[0][0], y + stroke[0][1])
        page.mouse.down()
        for dx, dy in stroke[1:]:
            page.mouse.move(x + dx, y + dy, steps=12)
        page.mouse.up()


def test_a_picture_shows_its_class_on_top_and_bad_ones_a_message(
    app: Page, right_picture, tmp_path
):
    path, name = right_picture
    app.get_by_role("tab", name="Your picture").click()
    top = app.locator("#picture-top").get_by_test_id("label-output-value")

    # Bad uploads: each named in the page, and the server goes on serving.
    (tmp_path / "notes.png").write_text("not a picture\n")
    (tmp_path / "bomb.png").write_bytes(png_header(20_000, 20_000))
    (tmp_path / "huge.png").write_bytes(path.read_bytes() + bytes(21 * 2**20))
    upload(app, tmp_path / "notes.png")
    toast(app, "notes.png is not a picture Pillow can read: give PNG, JPEG, WebP, BMP or GIF")
    upload(app, tmp_path / "bomb.png")
    toast(app, "bomb.png is too large to decode safely (400,000,000 pixels")
    upload(app, tmp_path / "huge.png")
    toast(app, 'File(s) exceed the maximum allowed size of 20.0 Mb: "huge.png"')  # Gradio's
    app.get_by_role("tab", name="Draw").click()
    expect(app.get_by_text("select the draw tool to start")).to_be_hidden()  # ready to draw
    app.locator("#predict-drawing").click()
    toast(app, "the drawing is empty: draw a piece of clothing first")
    draw_a_shirt(app)
    app.locator("#predict-drawing").click()
    expect(top).to_have_text(re.compile("|".join(re.escape(c) for c in data.CLASSES)))
    steps = app.locator("#picture-steps")
    expect(steps).to_contain_text("drawing, as given")
    expect(steps).to_contain_text("what the model sees (28x28)")
    app.get_by_role("tab", name="Upload").click()

    upload(app, path)
    expect(top).to_have_text(name)
    app.get_by_role("combobox", name="true class").click()
    app.get_by_role("option", name=name, exact=True).click()
    k = data.CLASSES.index(name)
    expect(app.locator("#picture-lesson")).to_contain_text(f"= -log(q[{k}]) = -log(0.")
    expect(app.locator("#picture-lesson")).to_contain_text(f"true class {k} ({name})")
    screenshot(app, tmp_path, "app-picture.png")


def test_the_slider_replays_the_run_from_untrained(app: Page, app_server, tmp_path):
    record = val_predictions.load(app_server.run)
    app.get_by_role("tab", name="Watch it learn").click()
    summary, table = app.locator("#learning-summary"), app.locator("#learning-table")

    def q_true(epoch: int) -> list[str]:
        """The q[true class] column as the page should show it at `epoch`."""
        at = record.epochs[epoch]
        return [f"{round(at.q[k][y], 4):g}" for k, y in enumerate(record.labels)]

    expect(summary).to_contain_text(re.compile(r"Epoch 0 \(untrained, step 0\)"))
    assert abs(record.epochs[0].mean_loss - math.log(10)) < 0.2
    expect(table.locator("[data-col='4']")).to_have_text(q_true(0))
    last = record.epochs[-1].epoch
    number = app.locator("#learning-epoch").locator("input[type=number]")
    number.fill(str(last))
    number.press("Enter")
    expect(summary).to_contain_text(re.compile(rf"Epoch {last} \(after epoch {last} of {last}"))
    expect(table.locator("[data-col='4']")).to_have_text(q_true(last))
    assert q_true(0) != q_true(last)
    screenshot(app, tmp_path, "app-learning.png")

    app.get_by_role("combobox", name="run").click()
    app.get_by_role("option", name="outputs/runs/no-validation").click()
    expect(summary).to_have_text(NO_VALIDATION)
    expect(app.locator("#learning-epoch")).to_be_hidden()


def test_the_page_in_chinese_follows_the_browser_and_the_switch(
    app_server, browser, right_picture, tmp_path
):
    """A browser whose language is zh-CN gets the page in Simplified Chinese: the tabs, the
    lesson's words (its numbers the same), a picture's class on top, a bad upload's notice; the
    switch turns it back into English."""
    context = browser.new_context(locale="zh-CN", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    outside: list[str] = []
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(app_server.url)
            else (outside.append(route.request.url), route.abort())
        ),
    )
    page.goto(app_server.url)
    expect(page.get_by_role("tab", name="手算交叉熵")).to_be_visible()
    expect(page.get_by_role("tab", name="你的图片")).to_be_visible()
    logits, probs = page.locator("#logits-summary"), page.locator("#probs-summary")
    expect(logits).to_contain_text(re.compile(r"平均损失，我们的实现（.*）：0\.9185"))
    expect(logits).to_contain_text("两者一致吗：一致")
    expect(probs).to_contain_text("2.4361")
    screenshot(page, tmp_path, "app-lesson-zh.png")

    path, name = right_picture
    page.get_by_role("tab", name="你的图片").click()
    (tmp_path / "notes.png").write_text("not a picture\n")
    upload(page, tmp_path / "notes.png")
    toast(page, "notes.png 不是 Pillow 能读取的图片：请给出 PNG, JPEG, WebP, BMP or GIF 文件")
    upload(page, path)
    top = page.locator("#picture-top").get_by_test_id("label-output-value")
    expect(top).to_have_text(CLASSES_ZH[data.CLASSES.index(name)])
    expect(page.locator("#picture-steps")).to_contain_text("模型看到的图像（28x28）")
    screenshot(page, tmp_path, "app-picture-zh.png")

    page.locator("#language").get_by_text("English").click()
    expect(page.get_by_role("tab", name="Your picture")).to_be_visible()
    expect(top).to_have_text(name)
    context.close()
    assert outside == [], "the page reached beyond the server"
