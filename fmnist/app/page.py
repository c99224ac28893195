"""The page: three tabs laid out in Gradio, their events, and the API endpoints they name.

Every handler calls fmnist.app.lesson, .picture or .learning; a `UserError` (bad input) becomes
a message in the page (and an error for an API client) while the server keeps serving. Figures
are drawn one at a time (pyplot is not thread-safe) and sent as PNG pictures.

API endpoints (`gradio_client.Client(url).predict(..., api_name=...)`):
- `/explain`: a logits table, rows of [target, x_1, ..., x_C] -> the worked lesson;
- `/explain_probs`: rows of [target, q_1, ..., q_C] -> the same, from probabilities;
- `/predict`: a picture file, the true class (or "(unknown)"), prepare.invert, prepare.crop ->
  the top class and q, the steps, the doubts and the loss against the true class.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from fmnist.app import learning, lesson
from fmnist.app.picture import Pictures, Result
from fmnist.app.server import NO_MODEL_FIX
from fmnist.data import CLASSES
from fmnist.errors import UserError
from fmnist.predict import FORMATS
from fmnist.report.figures import use_agg
from fmnist.script_configs import PrepareConfig

UNKNOWN = "(unknown)"  # the true class, when none is chosen
# Gradio's Sketchpad opens with no tool chosen ("select the draw tool to start"): when the Draw
# tab opens, choose its brush (the toolbar's first button), unless it is chosen already.
READY_TO_DRAW = """() => setTimeout(() => {
  const brush = document.querySelector("#picture-drawing .toolbar-wrap button");
  if (brush && !brush.classList.contains("highlight")) brush.click();
}, 100)"""
NO_MODEL = f"No trained model yet: {NO_MODEL_FIX}, then start the page again."
INTRO = """# fmnist: cross-entropy you can see
Softmax turns a model's raw scores (logits) into probabilities q; cross-entropy compares q with
the truth p (one-hot on the true class): loss = -sum_c p_c log q_c = -log q[true class].
"""


@dataclass
class Contents:
    """What the page starts with."""

    logits: list[list[float]]  # rows of [target, x_1, ..., x_C]: the first example
    probs: list[list[float]]  # rows of [target, q_1, ..., q_C]: the second
    pictures: Pictures | None  # None: no trained model
    model: str  # the model, in words
    runs: dict[str, Path]  # the runs "Watch it learn" may show, by name; the first is shown
    max_upload: str  # Gradio's max_file_size, e.g. "20mb"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_drawing = threading.Lock()


def rendered(draw: Callable[[], Any]) -> Image.Image:
    """The matplotlib figure `draw()` makes, as a PNG picture; the figure is closed."""
    with _drawing:
        figure = draw()
        buffer = io.BytesIO()
        try:
            figure.savefig(buffer, format="png")
        finally:
            use_agg()
            import matplotlib.pyplot as plt

            plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer)


def in_page(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A `UserError` from `fn` is shown in the page as a message (until closed), not a failure."""

    def handler(*args: Any) -> Any:
        try:
            return fn(*args)
        except UserError as e:
            raise gr.Error(str(e), duration=None, print_exception=False) from None

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def _table(headers: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"headers": headers, "data": rows}


# --------------------------------------------------------------------------------------------
# The tabs' handlers
# --------------------------------------------------------------------------------------------


def _worked(worked: lesson.Worked) -> tuple[Any, ...]:
    return (
        worked.summary(),
        _table(*worked.q_table()),
        rendered(worked.figure),
        worked.steps,
        worked.as_dict(),
    )


def explain(rows: list[list[Any]]) -> tuple[Any, ...]:
    """Softmax and cross-entropy of a logits table (rows: target, then the logits)."""
    return _worked(lesson.from_logits(rows))


def explain_probs(rows: list[list[Any]]) -> tuple[Any, ...]:
    """Cross-entropy of probabilities (rows: target, then q), against PyTorch's NLLLoss."""
    return _worked(lesson.from_probs(rows))


def _shown(result: Result) -> tuple[Any, ...]:
    return (
        result.top,
        rendered(result.figure),
        result.steps(),
        result.details(),
        result.lesson(),
        result.as_dict(),
    )


def _settings(invert: str, crop: bool) -> PrepareConfig:
    return PrepareConfig(invert=invert, crop=crop)


def _target(truth: str | None) -> int | None:
    if truth in (None, "", UNKNOWN):
        return None
    if truth not in CLASSES:
        raise UserError(f"{truth!r} is not a class: choose one of {', '.join(CLASSES)}")
    return CLASSES.index(truth)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def build(contents: Contents) -> gr.Blocks:
    """The page, with its three tabs; `launch` it."""
    page = gr.Blocks(title="fmnist: cross-entropy", analytics_enabled=False)
    with page:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Cross-entropy by hand", id="lesson"):
                lesson_tab(contents)
            with gr.Tab("Your picture", id="picture"):
                if contents.pictures is None:
                    gr.Markdown(NO_MODEL, elem_id="picture-no-model")
                else:
                    picture_tab(contents.pictures, contents.model, contents.max_upload)
            with gr.Tab("Watch it learn", id="learning"):
                learning_tab(contents.runs)
    page.queue(max_size=64)  # more waiting requests than this are refused, not piled up
    return page


def lesson_tab(contents: Contents) -> None:
    gr.Markdown(
        "### From logits\nEdit the table: one sample per row, its **target** class first, then "
        "its logits. Softmax gives q; the loss of a sample is -log q[target]; the batch's loss "
        "is their mean, worked out with `fmnist.losses` and checked against PyTorch's."
    )
    _lesson_section(contents.logits, explain, "explain", "logit", "logits")
    gr.Markdown(
        "### From probabilities\nA half-trained model's q for a test image of a **Coat** "
        "(class 4): the loss looks only at q[4]. Edit q (each row must sum to 1) or the target."
    )
    _lesson_section(contents.probs, explain_probs, "explain_probs", "q", "probs")


def _lesson_section(
    rows: list[list[float]],
    fn: Callable[[list[list[Any]]], tuple[Any, ...]],
    api_name: str,
    column: str,
    elem: str,
) -> None:
    classes = len(rows[0]) - 1
    names = CLASSES if classes == len(CLASSES) else [str(c) for c in range(classes)]
    table = gr.Dataframe(
        value=rows,
        headers=["target", *(f"{column} {name}" for name in names)],
        datatype="number",
        type="array",
        interactive=True,
        label=f"{column} per class, one sample per row (the target class first)",
        elem_id=f"{elem}-input",
    )
    first = fn(rows)
    summary = gr.Markdown(first[0], elem_id=f"{elem}-summary")
    with gr.Row():
        q = gr.Dataframe(first[1], interactive=False, label="q and the loss per sample")
        plot = gr.Image(first[2], type="pil", format="png", show_label=False)
    with gr.Accordion("Step by step, as scripts/explain.py prints it", open=False):
        steps = gr.Code(first[3], language=None, show_line_numbers=False, label="explanation")
    with gr.Accordion("The numbers (JSON)", open=False):
        numbers = gr.JSON(first[4], label="numbers")
    table.change(
        in_page(fn), inputs=table, outputs=[summary, q, plot, steps, numbers], api_name=api_name
    )


def picture_tab(pictures: Pictures, model: str, max_upload: str) -> None:
    gr.Markdown(
        f"Show the model a picture: it is prepared as `scripts/predict.py` does it (made "
        f"Fashion-MNIST-like: grey, light on black, cropped, 28x28), then predicted. Choose the "
        f"true class to see why a sure wrong answer costs more than an unsure one.  \nModel: "
        f"{model}"
    )
    current = gr.State(None)  # how to get the picture shown now again: (source, argument)
    with gr.Row():
        with gr.Column():
            with gr.Tabs():
                with gr.Tab("Upload"):
                    upload = gr.File(
                        type="filepath",
                        label=f"A picture ({FORMATS}; at most {max_upload.upper()})",
                        elem_id="picture-file",
                    )
                with gr.Tab("Webcam"):
                    webcam = gr.Image(sources=["webcam"], type="pil", label="webcam")
                    webcam_button = gr.Button("Predict this shot")
                with gr.Tab("Draw") as draw_tab:
                    drawing = gr.Sketchpad(
                        type="pil",
                        label="draw a piece of clothing",
                        layers=False,
                        elem_id="picture-drawing",
                    )
                    drawing_button = gr.Button("Predict the drawing", elem_id="predict-drawing")
                with gr.Tab("Test image"):
                    index = gr.Number(0, precision=0, minimum=0, label="test image index")
                    test_button = gr.Button("Predict the test image", elem_id="predict-test")
            truth = gr.Dropdown(
                [UNKNOWN, *CLASSES], value=UNKNOWN, label="true class", elem_id="true-class"
            )
            invert = gr.Radio(
                ["auto", "true", "false"],
                value="auto",
                label="invert (auto: when the background is light)",
            )
            crop = gr.Checkbox(True, label="crop to the object")
        with gr.Column():
            top = gr.Label(num_top_classes=3, label="prediction", elem_id="picture-top")
            bars = gr.Image(type="pil", format="png", show_label=False)
    steps = gr.Gallery(
        label="preparation, step by step",
        columns=4,
        height="auto",
        format="png",
        elem_id="picture-steps",
    )
    details = gr.Markdown(elem_id="picture-details")
    worked = gr.Code(
        "Choose the true class to see p and the loss worked out term by term.",
        language=None,
        show_line_numbers=False,
        label="the loss against the true class, term by term (predict.py target=...)",
        elem_id="picture-lesson",
    )
    with gr.Accordion("The numbers (JSON, as predictions.json has them)", open=False):
        numbers = gr.JSON(label="prediction")
    outputs = [top, bars, steps, details, worked, numbers]

    def clear() -> tuple[Any, ...]:
        return None, None, [], "", "", None

    @in_page
    def predict(path: str | None, truth: str, invert: str, crop: bool) -> tuple[Any, ...]:
        if path is None:
            raise UserError("no picture: upload one first")
        return _shown(pictures.file(path, _settings(invert, crop), _target(truth)))

    def upload_predicted(path: str | None, truth: str, invert: str, crop: bool) -> tuple[Any, ...]:
        """A picture file, predicted as scripts/predict.py does it, with the loss against the
        true class (a class name, or "(unknown)"); invert: auto, true or false; crop: bool."""
        return (*predict(path, truth, invert, crop), ("file", path))

    @in_page
    def image_predicted(
        image: Any, what: str, truth: str, invert: str, crop: bool
    ) -> tuple[Any, ...]:
        picture = image.get("composite") if isinstance(image, dict) else image
        result = pictures.image(picture, what, _settings(invert, crop), _target(truth))
        return (*_shown(result), ("image", (picture, what)))

    @in_page
    def test_predicted(number: float | None, invert: str, crop: bool) -> tuple[Any, ...]:
        if number is None:
            raise UserError("give a test image index, 0 to 9999")
        result, label = pictures.test_image(int(number), _settings(invert, crop))
        return (*_shown(result), ("test", int(number)), CLASSES[label])

    @in_page
    def again(state: Any, truth: str, invert: str, crop: bool) -> tuple[Any, ...]:
        """The picture shown now, with the new true class or preparation."""
        if state is None:
            return (*(gr.skip() for _ in outputs), state)
        source, argument = state
        settings, target = _settings(invert, crop), _target(truth)
        if source == "file":
            result = pictures.file(argument, settings, target)
        elif source == "image":
            result = pictures.image(argument[0], argument[1], settings, target)
        else:
            result, _ = pictures.test_image(argument, settings, target)
        return (*_shown(result), state)

    draw_tab.select(None, js=READY_TO_DRAW)  # the brush chosen: no "select the draw tool" first
    # The API's /predict: what an upload runs (the page's state, an output, is not in the API).
    upload.upload(clear, outputs=outputs, api_visibility="private").then(
        upload_predicted,
        inputs=[upload, truth, invert, crop],
        outputs=[*outputs, current],
        api_name="predict",
    )
    webcam_button.click(clear, outputs=outputs, api_visibility="private").then(
        lambda image, t, i, c: image_predicted(image, "webcam shot", t, i, c),
        inputs=[webcam, truth, invert, crop],
        outputs=[*outputs, current],
        api_visibility="private",
    )
    drawing_button.click(clear, outputs=outputs, api_visibility="private").then(
        lambda image, t, i, c: image_predicted(image, "drawing", t, i, c),
        inputs=[drawing, truth, invert, crop],
        outputs=[*outputs, current],
        api_visibility="private",
    )
    test_button.click(clear, outputs=outputs, api_visibility="private").then(
        test_predicted,
        inputs=[index, invert, crop],
        outputs=[*outputs, current, truth],
        api_visibility="private",
    )
    for control in (truth, invert, crop):
        control.input(
            again,
            inputs=[current, truth, invert, crop],
            outputs=[*outputs, current],
            api_visibility="private",
        )


def learning_tab(runs: dict[str, Path]) -> None:
    if not runs:
        gr.Markdown(NO_MODEL, elem_id="learning-no-model")
        return
    gr.Markdown(
        "16 fixed validation images, epoch by epoch: what the model predicts for each (q) and "
        "what that costs (the loss). At epoch 0 the model is untrained: q is about 1/10 for every "
        "class and every loss about ln 10. Move the slider to watch q sharpen."
    )

    def load(name: str) -> learning.Run | str:
        """The run, or why it cannot be shown (in one line)."""
        if name not in runs:
            return f"{name!r} is not one of the runs this page shows"
        try:
            return learning.load(runs[name])
        except UserError as e:
            return str(e)

    def shown(name: str, at: float) -> tuple[Any, ...]:
        loaded = load(name)
        if isinstance(loaded, str):
            return loaded, None, None, None
        view = learning.view(loaded, int(at))
        grid, curve = rendered(lambda: view.grid), rendered(lambda: view.curve)
        return view.summary, grid, curve, _table(view.headers, view.rows)

    def chosen(name: str) -> tuple[Any, ...]:
        """A run's slider (over its epochs, at the first) and what it shows there."""
        loaded = load(name)
        if isinstance(loaded, str):
            return (gr.Slider(visible=False), *shown(name, 0))
        first, last = loaded.epochs[0], loaded.epochs[-1]
        slider = gr.Slider(minimum=first, maximum=last, value=first, visible=True)
        return (slider, *shown(name, first))

    names = list(runs)
    loaded = load(names[0])
    first, last = (0, 1) if isinstance(loaded, str) else (loaded.epochs[0], loaded.epochs[-1])
    start = shown(names[0], first)
    run = gr.Dropdown(names, value=names[0], label="run", elem_id="learning-run")
    epoch = gr.Slider(
        first,
        last,
        value=first,
        step=1,
        label="epoch (0: untrained)",
        visible=not isinstance(loaded, str),
        elem_id="learning-epoch",
    )
    summary = gr.Markdown(start[0], elem_id="learning-summary")
    grid = gr.Image(start[1], type="pil", format="png", show_label=False)
    with gr.Row():
        curve = gr.Image(start[2], type="pil", format="png", show_label=False)
        table = gr.Dataframe(
            start[3], interactive=False, label="q and loss per image", elem_id="learning-table"
        )
    outputs = [summary, grid, curve, table]
    run.change(chosen, inputs=run, outputs=[epoch, *outputs], api_visibility="private")
    epoch.change(shown, inputs=[run, epoch], outputs=outputs, api_visibility="private")
