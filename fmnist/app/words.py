"""The page's words in the reader's language (English or Simplified Chinese, fmnist.i18n).

The page is built in English. `Words` notes every component whose words come from the table
(its label, its value, its choices...), so that when the language changes (the switch at the top,
set first from the browser's Accept-Language) one event updates them all; what the handlers
compute (the lesson's summary, a picture's steps) they compute in the language they are given,
their last input. A `UserError` is shown in the page in that language too (`in_page`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from fmnist.errors import UserError
from fmnist.i18n import LANGUAGES, in_language, language_of, say

Update = Callable[[str], dict[str, Any]]  # a language -> the component's new properties


class Words:
    """The components whose words follow the page's language."""

    def __init__(self) -> None:
        self.components: list[Any] = []
        self.updates: list[Update] = []

    def follow(self, component: Any, update: Update) -> Any:
        """Note `component`, whose properties `update(lang)` gives; returns it."""
        self.components.append(component)
        self.updates.append(update)
        return component

    def text(self, component: Any, prop: str, key: str, **values: Any) -> Any:
        """`component`'s `prop` (label, value, ...) is the text `key`."""
        return self.follow(component, lambda lang: {prop: say(lang, key, **values)})

    def markdown(self, key: str, **values: Any) -> Any:
        """A Markdown block of the text `key`."""
        return self.text(gr.Markdown(say("en", key, **values)), "value", key, **values)

    def apply(self, lang: str) -> list[Any]:
        """Every noted component's update for `lang`."""
        return [gr.update(**update(lang)) for update in self.updates]


def switch() -> Any:
    """The language switch: its value is the language's code (en, zh)."""
    return gr.Radio(
        [(name, code) for code, name in LANGUAGES.items()],
        value="en",
        label="language / 语言",
        elem_id="language",
        scale=0,
    )


def browser_language(request: gr.Request) -> str:
    """The language of the reader's browser (its Accept-Language header): zh for Chinese."""
    accepted = request.headers.get("accept-language", "")
    return language_of(accepted.split(",")[0])


def in_page(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A `UserError` from `fn` is shown in the page as a message (until closed), in the page's
    language (`fn`'s last argument), not as a failure."""

    def handler(*args: Any) -> Any:
        try:
            return fn(*args)
        except UserError as e:
            last = args[-1] if args else None
            lang = last if isinstance(last, str) and last in LANGUAGES else "en"
            message = in_language(e.args[0], lang) if e.args else str(e)
            raise gr.Error(message, duration=None, print_exception=False) from None

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler
