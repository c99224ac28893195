"""The "Cross-entropy by hand" tab laid out in Gradio: two editable tables (logits, and a model's
probabilities), each worked out by fmnist.app.lesson into a summary, a table of q, the loss
curve with each sample marked (drawn in the browser), the step-by-step text and the numbers.
Their events are the API's `/explain` and `/explain_probs`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from fmnist.app import lesson
from fmnist.app.words import Words, in_page
from fmnist.i18n import say

Explained = Callable[[list[list[Any]], str], tuple[Any, ...]]


def _worked(worked: lesson.Worked) -> tuple[Any, ...]:
    headers, rows = worked.q_table()
    return (
        worked.summary(),
        {"headers": headers, "data": rows},
        worked.plot(),
        worked.steps,
        worked.as_dict(),
    )


@in_page
def explain(rows: list[list[Any]], lang: str) -> tuple[Any, ...]:
    """Softmax and cross-entropy of a logits table (rows: target, then the logits); the words in
    `lang` (en or zh), the numbers the same."""
    return _worked(lesson.from_logits(rows, lang))


@in_page
def explain_probs(rows: list[list[Any]], lang: str) -> tuple[Any, ...]:
    """Cross-entropy of probabilities (rows: target, then q), against PyTorch's NLLLoss; the
    words in `lang` (en or zh), the numbers the same."""
    return _worked(lesson.from_probs(rows, lang))


def build(logits: list[list[float]], probs: list[list[float]], words: Words, language: Any) -> None:
    """The tab's components and events (inside a `gr.Tab`)."""
    words.markdown("lesson.from_logits")
    _section(logits, explain, "explain", "logit", "logits", words, language)
    words.markdown("lesson.from_probs")
    _section(probs, explain_probs, "explain_probs", "q", "probs", words, language)


def _section(
    rows: list[list[float]],
    fn: Explained,
    api_name: str,
    column: str,
    elem: str,
    words: Words,
    language: Any,
) -> None:
    classes = len(rows[0]) - 1

    def headers(lang: str) -> list[str]:
        names = lesson.class_names(classes, lang)
        return [say(lang, "lesson.column.target"), *(f"{column} {name}" for name in names)]

    table = words.follow(
        gr.Dataframe(
            value=rows,
            headers=headers("en"),
            datatype="number",
            type="array",
            interactive=True,
            label=say("en", "lesson.table", column=column),
            elem_id=f"{elem}-input",
        ),
        lambda lang: {"headers": headers(lang), "label": say(lang, "lesson.table", column=column)},
    )
    first = fn(rows, "en")
    summary = gr.Markdown(first[0], elem_id=f"{elem}-summary")
    with gr.Row():
        q = words.text(
            gr.Dataframe(first[1], interactive=False, label=say("en", "lesson.q_table")),
            "label",
            "lesson.q_table",
        )
        plot = words.text(
            gr.LinePlot(
                first[2],
                x="q",
                y="loss",
                color="series",
                y_lim=[0, 5.5],
                label=say("en", "lesson.plot"),
                elem_id=f"{elem}-plot",
            ),
            "label",
            "lesson.plot",
        )
    with words.text(gr.Accordion(say("en", "lesson.steps"), open=False), "label", "lesson.steps"):
        steps = words.text(
            gr.Code(
                first[3],
                language=None,
                show_line_numbers=False,
                label=say("en", "lesson.explanation"),
            ),
            "label",
            "lesson.explanation",
        )
    with words.text(
        gr.Accordion(say("en", "lesson.numbers"), open=False), "label", "lesson.numbers"
    ):
        numbers = words.text(
            gr.JSON(first[4], label=say("en", "lesson.numbers_label")),
            "label",
            "lesson.numbers_label",
        )
    outputs = [summary, q, plot, steps, numbers]
    table.change(fn, inputs=[table, language], outputs=outputs, api_name=api_name)
    language.change(fn, inputs=[table, language], outputs=outputs, api_visibility="private")
