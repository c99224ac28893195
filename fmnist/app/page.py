"""The page: three tabs laid out in Gradio (fmnist.app.lesson_tab, .picture_tab, .learning_tab),
the language switch, and the API endpoints they name.

Every handler calls fmnist.app.lesson, .picture or .learning; a `UserError` (bad input) becomes
a message in the page (and an error for an API client) while the server keeps serving. Nothing is
drawn on the server with matplotlib: the plots are Gradio's, drawn in the browser, and the
pictures are Pillow images.

The page speaks English or Simplified Chinese (fmnist.i18n): the switch at the top starts at the
browser's language (its Accept-Language header) and can be changed at any time.

API endpoints (`gradio_client.Client(url).predict(..., api_name=...)`), each taking the language
of its words last (`en`, the default, or `zh`; the numbers are the same):
- `/explain`: a logits table, rows of [target, x_1, ..., x_C] -> the worked lesson;
- `/explain_probs`: rows of [target, q_1, ..., q_C] -> the same, from probabilities;
- `/predict`: a picture file, the true class (or "(unknown)"), prepare.invert, prepare.crop ->
  the top class and q, the steps, the doubts and the loss against the true class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from fmnist.app import learning_tab, lesson_tab, picture_tab
from fmnist.app.picture import Pictures
from fmnist.app.words import Words, browser_language, switch
from fmnist.i18n import say

# The pictures of a picture's steps and of the followed images come at their own size (a 28x28
# input is 28x28): the browser enlarges them, each pixel a square, not blurred.
CSS = "#picture-steps img, #learning-images img { image-rendering: pixelated; }"


@dataclass
class Contents:
    """What the page starts with."""

    logits: list[list[float]]  # rows of [target, x_1, ..., x_C]: the first example
    probs: list[list[float]]  # rows of [target, q_1, ..., q_C]: the second
    pictures: Pictures | None  # None: no trained model
    model: str  # the model, in words
    runs: dict[str, Path]  # the runs "Watch it learn" may show, by name; the first is shown
    max_upload: str  # Gradio's max_file_size, e.g. "20mb"


def no_model(lang: str) -> str:
    return say(lang, "page.no_model", fix=say(lang, "page.no_model_fix"))


def build(contents: Contents, words: Words | None = None) -> gr.Blocks:
    """The page, with its three tabs; `launch` it. `words` notes what follows the language."""
    words = words or Words()
    title = f"{say('en', 'page.title')} · {say('zh', 'page.title')}"
    page = gr.Blocks(title=title, analytics_enabled=False)
    with page:
        with gr.Row():
            words.markdown("page.intro")
            language = switch()
        with gr.Tabs():
            with words.text(
                gr.Tab(say("en", "page.tab.lesson"), id="lesson"), "label", "page.tab.lesson"
            ):
                lesson_tab.build(contents.logits, contents.probs, words, language)
            with words.text(
                gr.Tab(say("en", "page.tab.picture"), id="picture"), "label", "page.tab.picture"
            ):
                if contents.pictures is None:
                    _no_model(words, "picture-no-model")
                else:
                    picture_tab.build(
                        contents.pictures, contents.model, contents.max_upload, words, language
                    )
            with words.text(
                gr.Tab(say("en", "page.tab.learning"), id="learning"), "label", "page.tab.learning"
            ):
                if not contents.runs:
                    _no_model(words, "learning-no-model")
                else:
                    learning_tab.build(contents.runs, words, language)
        language.change(
            words.apply, inputs=language, outputs=words.components, api_visibility="private"
        )
        page.load(browser_language, outputs=language, api_visibility="private")
    page.queue(max_size=64)  # more waiting requests than this are refused, not piled up
    return page


def _no_model(words: Words, elem_id: str) -> None:
    words.follow(
        gr.Markdown(no_model("en"), elem_id=elem_id), lambda lang: {"value": no_model(lang)}
    )
