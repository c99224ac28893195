"""The "Your picture" tab laid out in Gradio, and its events: a picture from an upload, the webcam,
a drawing or the test split, predicted by fmnist.app.picture, shown as the top classes, the
probabilities as bars (drawn in the browser by Gradio's BarPlot), every preparation step as a
captioned picture, the details and doubts, and the loss against the chosen true class, in the
page's language (every handler's last input).

The upload's event is the API's `/predict`. Predictions run side by side (`CONCURRENCY`): the
model runs in inference mode, preparation works on each request's own arrays, and nothing is
drawn with matplotlib, so requests share nothing they could mix up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from fmnist.app.picture import Pictures, Result
from fmnist.app.words import Words, in_page
from fmnist.data import CLASSES
from fmnist.errors import UserError
from fmnist.i18n import Text, class_name, say
from fmnist.predict import FORMATS
from fmnist.script_configs import PrepareConfig

CONCURRENCY = 4  # predictions at once; more wait in the queue
UNKNOWN = "(unknown)"  # the true class's value when none is chosen (the API's too)
# Gradio's Sketchpad opens with no tool chosen ("select the draw tool to start"): when the Draw
# tab opens, choose its brush (the toolbar's first button) as soon as the toolbar is drawn (it
# may take a moment), unless it is chosen already.
READY_TO_DRAW = """() => {
  const start = Date.now();
  const choose = () => {
    const brush = document.querySelector("#picture-drawing .toolbar-wrap button");
    if (brush) {
      if (!brush.classList.contains("highlight")) brush.click();
    } else if (Date.now() - start < 10000) {
      setTimeout(choose, 50);
    }
  };
  choose();
}"""


def shown(result: Result, lang: str) -> tuple[Any, ...]:
    """What the tab's outputs show of a prediction, in `lang`."""
    return (
        result.top(lang),
        result.bars(lang),
        result.steps(lang),
        result.details(lang),
        result.lesson(lang),
        result.as_dict(),
    )


def _settings(invert: str, crop: bool) -> PrepareConfig:
    return PrepareConfig(invert=invert, crop=crop)


def _target(truth: str | None) -> int | None:
    if truth in (None, "", UNKNOWN):
        return None
    if truth not in CLASSES:
        raise UserError(Text("picture.error.class", truth=repr(truth), classes=", ".join(CLASSES)))
    return CLASSES.index(truth)


def _truths(lang: str) -> list[tuple[str, str]]:
    """The true class's choices: (shown, value), the value the English name (or "(unknown)")."""
    names = [class_name(c, CLASSES, lang) for c in range(len(CLASSES))]
    return [(say(lang, "picture.unknown"), UNKNOWN), *zip(names, CLASSES, strict=True)]


@dataclass
class Events:
    """The tab's handlers, over one model's `Pictures`. Each returns the outputs' values, then
    how to get the picture shown again (`current`: a source and its argument)."""

    pictures: Pictures

    @in_page
    def file(
        self, path: str | None, truth: str, invert: str, crop: bool, lang: str = "en"
    ) -> tuple[Any, ...]:
        """A picture file, predicted as scripts/predict.py does it, with the loss against the
        true class (a class name, or "(unknown)"); invert: auto, true or false; crop: bool;
        lang: the words' language, en or zh (the numbers are the same)."""
        if path is None:
            raise UserError(Text("picture.error.no_file"))
        result = self.pictures.file(path, _settings(invert, crop), _target(truth))
        return (*shown(result, lang), ("file", path))

    def image(self, what: str) -> Callable[..., tuple[Any, ...]]:
        """The handler of a webcam shot or a drawing (`what`; the Sketchpad's composite)."""

        @in_page
        def predicted(
            image: Any, truth: str, invert: str, crop: bool, lang: str
        ) -> tuple[Any, ...]:
            picture = image.get("composite") if isinstance(image, dict) else image
            settings, target = _settings(invert, crop), _target(truth)
            result = self.pictures.image(picture, what, settings, target)
            return (*shown(result, lang), ("image", (picture, what)))

        return predicted

    @in_page
    def test(self, number: float | None, invert: str, crop: bool, lang: str) -> tuple[Any, ...]:
        """A test image by its index, against its own class (which the true class then shows)."""
        if number is None:
            raise UserError(Text("picture.error.no_index"))
        result, label = self.pictures.test_image(int(number), _settings(invert, crop))
        return (*shown(result, lang), ("test", int(number)), CLASSES[label])

    @in_page
    def again(self, state: Any, truth: str, invert: str, crop: bool, lang: str) -> tuple[Any, ...]:
        """The picture shown now, with the new true class, preparation or language."""
        if state is None:
            return tuple(gr.skip() for _ in range(OUTPUTS + 1))
        source, argument = state
        settings, target = _settings(invert, crop), _target(truth)
        if source == "file":
            result = self.pictures.file(argument, settings, target)
        elif source == "image":
            result = self.pictures.image(argument[0], argument[1], settings, target)
        else:
            result, _ = self.pictures.test_image(argument, settings, target)
        return (*shown(result, lang), state)


OUTPUTS = 6  # top, bars, steps, details, lesson, numbers


def build(pictures: Pictures, model: str, max_upload: str, words: Words, language: Any) -> None:
    """The tab's components and events (inside a `gr.Tab`)."""
    words.markdown("picture.intro", model=model)
    current = gr.State(None)  # how to get the picture shown now again: (source, argument)
    with gr.Row():
        with gr.Column():
            sources = _sources(max_upload, words)
            truth = words.follow(
                gr.Dropdown(
                    _truths("en"),
                    value=UNKNOWN,
                    label=say("en", "picture.truth"),
                    elem_id="true-class",
                ),
                lambda lang: {"choices": _truths(lang), "label": say(lang, "picture.truth")},
            )
            invert = words.text(
                gr.Radio(
                    ["auto", "true", "false"], value="auto", label=say("en", "picture.invert")
                ),
                "label",
                "picture.invert",
            )
            crop = words.text(
                gr.Checkbox(True, label=say("en", "picture.crop")), "label", "picture.crop"
            )
        with gr.Column():
            top = words.text(
                gr.Label(num_top_classes=3, label=say("en", "picture.top"), elem_id="picture-top"),
                "label",
                "picture.top",
            )
            bars = words.follow(
                gr.BarPlot(
                    x="class",
                    y="q",
                    color="kind",
                    y_lim=[0, 1],
                    x_label_angle=-40,
                    **_bar_words("en"),
                    elem_id="picture-bars",
                ),
                _bar_words,
            )
    outputs = [top, bars, *_results(words)]
    _wire(Events(pictures), sources, [truth, invert, crop, language], outputs, current)


BAR_COLOURS = {"top": "#ea580c", "true": "#16a34a", "both": "#15803d", "other": "#94a3b8"}


def _bar_words(lang: str) -> dict[str, Any]:
    """The bar plot's words in `lang`: its titles, its classes in class order, and a colour for
    each kind of bar (all four always, so a kind that appears later is drawn too)."""
    return {
        "label": say(lang, "picture.bars"),
        "x_title": say(lang, "picture.bars.class"),
        "color_title": say(lang, "picture.bars.kind"),
        "sort": [class_name(c, CLASSES, lang) for c in range(len(CLASSES))],
        "color_map": {say(lang, f"picture.bars.{k}"): colour for k, colour in BAR_COLOURS.items()},
    }


@dataclass
class Sources:
    upload: Any
    webcam: Any
    webcam_button: Any
    drawing: Any
    drawing_button: Any
    draw_tab: Any
    index: Any
    test_button: Any


def _sources(max_upload: str, words: Words) -> Sources:
    """Where a picture comes from: an upload, the webcam, a drawing, a test image."""

    def tab(key: str) -> Any:
        return words.text(gr.Tab(say("en", key)), "label", key)

    size = max_upload.upper()
    with gr.Tabs():
        with tab("picture.tab.upload"):
            upload = words.text(
                gr.File(
                    type="filepath",
                    label=say("en", "picture.file", formats=FORMATS, size=size),
                    elem_id="picture-file",
                ),
                "label",
                "picture.file",
                formats=FORMATS,
                size=size,
            )
        with tab("picture.tab.webcam"):
            webcam = words.text(
                gr.Image(sources=["webcam"], type="pil", label=say("en", "picture.webcam")),
                "label",
                "picture.webcam",
            )
            webcam_button = words.text(
                gr.Button(say("en", "picture.webcam_button")), "value", "picture.webcam_button"
            )
        with tab("picture.tab.draw") as draw_tab:
            drawing = words.text(
                gr.Sketchpad(
                    type="pil",
                    label=say("en", "picture.drawing"),
                    layers=False,
                    elem_id="picture-drawing",
                ),
                "label",
                "picture.drawing",
            )
            drawing_button = words.text(
                gr.Button(say("en", "picture.drawing_button"), elem_id="predict-drawing"),
                "value",
                "picture.drawing_button",
            )
        with tab("picture.tab.test"):
            index = words.text(
                gr.Number(0, precision=0, minimum=0, label=say("en", "picture.index")),
                "label",
                "picture.index",
            )
            test_button = words.text(
                gr.Button(say("en", "picture.test_button"), elem_id="predict-test"),
                "value",
                "picture.test_button",
            )
    return Sources(
        upload, webcam, webcam_button, drawing, drawing_button, draw_tab, index, test_button
    )


def _results(words: Words) -> list[Any]:
    """The steps, the details and doubts, the lesson, the numbers."""
    steps = words.text(
        gr.Gallery(
            label=say("en", "picture.steps"),
            columns=6,
            object_fit="contain",
            height="auto",
            format="png",
            elem_id="picture-steps",
        ),
        "label",
        "picture.steps",
    )
    details = gr.Markdown(elem_id="picture-details")
    worked = words.text(
        gr.Code(
            say("en", "picture.lesson_hint"),
            language=None,
            show_line_numbers=False,
            label=say("en", "picture.lesson"),
            elem_id="picture-lesson",
        ),
        "label",
        "picture.lesson",
    )
    with words.text(
        gr.Accordion(say("en", "picture.numbers"), open=False), "label", "picture.numbers"
    ):
        numbers = words.text(
            gr.JSON(label=say("en", "picture.numbers_label")), "label", "picture.numbers_label"
        )
    return [steps, details, worked, numbers]


def _wire(
    events: Events, sources: Sources, settings: list[Any], outputs: list[Any], current: Any
) -> None:
    """Each source predicts (first clearing what was shown); a new true class, preparation or
    language predicts the picture shown again. Only the upload is in the API, as `/predict`
    (the page's state, an output, is not). `settings`: the true class, invert, crop, and the
    language."""

    def clear() -> tuple[Any, ...]:
        # The bars stay until the new ones come: Gradio's plot, emptied, can still be measured by
        # its resize observer, which then fails in the browser.
        return None, gr.skip(), [], "", "", None

    private: dict[str, Any] = {"api_visibility": "private"}
    shared: dict[str, Any] = {"concurrency_limit": CONCURRENCY, "concurrency_id": "predict"}
    sources.draw_tab.select(None, js=READY_TO_DRAW)  # the brush chosen, ready to draw
    sources.upload.upload(clear, outputs=outputs, **private).then(
        events.file,
        inputs=[sources.upload, *settings],
        outputs=[*outputs, current],
        api_name="predict",
        **shared,
    )
    for button, image, what in (
        (sources.webcam_button, sources.webcam, "webcam"),
        (sources.drawing_button, sources.drawing, "drawing"),
    ):
        button.click(clear, outputs=outputs, **private).then(
            events.image(what),
            inputs=[image, *settings],
            outputs=[*outputs, current],
            **private,
            **shared,
        )
    sources.test_button.click(clear, outputs=outputs, **private).then(
        events.test,
        inputs=[sources.index, *settings[1:]],
        outputs=[*outputs, current, settings[0]],
        **private,
        **shared,
    )
    for control in settings[:-1]:
        control.input(
            events.again,
            inputs=[current, *settings],
            outputs=[*outputs, current],
            **private,
            **shared,
        )
    settings[-1].change(  # the language: set by the switch, or first by the browser's
        events.again,
        inputs=[current, *settings],
        outputs=[*outputs, current],
        **private,
        **shared,
    )
