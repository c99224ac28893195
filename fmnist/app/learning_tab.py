"""The "Watch it learn" tab laid out in Gradio: a run (the page's own, or any under outputs/) and a
slider over its epochs; at each, the summary, the 16 followed images captioned with their
prediction and loss, the loss curve with the epoch marked (drawn in the browser), and the table
of q and loss per image (fmnist.app.learning)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from fmnist.app import learning
from fmnist.app.words import Words
from fmnist.errors import UserError
from fmnist.i18n import Text, in_language, say


@dataclass
class Runs:
    """The runs the tab may show, by the names the server listed; anything else is refused."""

    by_name: dict[str, Path]

    def load(self, name: str) -> learning.Run | Text | str:
        """The run, or why it cannot be shown (in one line)."""
        if name not in self.by_name:
            return Text("learning.error.unknown", name=repr(name))
        try:
            return learning.load(self.by_name[name])
        except UserError as e:
            return e.args[0] if e.args else str(e)

    def shown(self, name: str, at: float, lang: str) -> tuple[Any, ...]:
        """The summary, images, curve and table at epoch `at`, in `lang`."""
        loaded = self.load(name)
        if not isinstance(loaded, learning.Run):
            # an empty curve, not None: Gradio's plot, set to None, fails in the browser
            nothing = pd.DataFrame(columns=["step", "loss", "series"])
            return in_language(loaded, lang), [], nothing, None
        view = learning.view(loaded, int(at), lang)
        return view.summary, view.images, view.curve, {"headers": view.headers, "data": view.rows}

    def chosen(self, name: str, lang: str) -> tuple[Any, ...]:
        """A run's slider (over its epochs, at the first) and what it shows there."""
        loaded = self.load(name)
        if not isinstance(loaded, learning.Run):
            return (gr.Slider(visible=False), *self.shown(name, 0, lang))
        first, last = loaded.epochs[0], loaded.epochs[-1]
        slider = gr.Slider(minimum=first, maximum=last, value=first, visible=True)
        return (slider, *self.shown(name, first, lang))


def build(by_name: dict[str, Path], words: Words, language: Any) -> None:
    """The tab's components and events (inside a `gr.Tab`)."""
    runs = Runs(by_name)
    words.markdown("learning.intro")
    names = list(by_name)
    loaded = runs.load(names[0])
    ok = isinstance(loaded, learning.Run)
    first, last = (
        (loaded.epochs[0], loaded.epochs[-1]) if isinstance(loaded, learning.Run) else (0, 1)
    )
    start = runs.shown(names[0], first, "en")
    run = words.text(
        gr.Dropdown(names, value=names[0], label=say("en", "learning.run"), elem_id="learning-run"),
        "label",
        "learning.run",
    )
    epoch = words.text(
        gr.Slider(
            first,
            last,
            value=first,
            step=1,
            label=say("en", "learning.epoch"),
            visible=ok,
            elem_id="learning-epoch",
        ),
        "label",
        "learning.epoch",
    )
    summary = gr.Markdown(start[0], elem_id="learning-summary")
    images = words.text(
        gr.Gallery(
            start[1],
            label=say("en", "learning.images"),
            columns=8,
            height="auto",
            format="png",
            elem_id="learning-images",
        ),
        "label",
        "learning.images",
    )
    with gr.Row():
        curve = words.text(
            gr.LinePlot(
                start[2],
                x="step",
                y="loss",
                color="series",
                label=say("en", "learning.curve"),
                elem_id="learning-curve",
            ),
            "label",
            "learning.curve",
        )
        table = words.text(
            gr.Dataframe(
                start[3],
                interactive=False,
                label=say("en", "learning.table"),
                elem_id="learning-table",
            ),
            "label",
            "learning.table",
        )
    outputs = [summary, images, curve, table]
    private: dict[str, Any] = {"api_visibility": "private"}
    run.change(runs.chosen, inputs=[run, language], outputs=[epoch, *outputs], **private)
    epoch.change(runs.shown, inputs=[run, epoch, language], outputs=outputs, **private)
    language.change(runs.shown, inputs=[run, epoch, language], outputs=outputs, **private)
