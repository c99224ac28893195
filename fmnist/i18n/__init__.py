"""What fmnist tells a learner, in English and in Simplified Chinese, from one table.

Every text the page shows, and the step-by-step lessons that scripts/explain.py prints (`lang=zh`
for Chinese), comes from `TEXTS`: a key, then its English and its Chinese, with `{placeholders}`
for the numbers and names filled in. Numbers, notation and code stay as they are in both.

A message that may reach the page from deeper down (a bad upload, a bad cell of the lesson's
table) is a `Text`: a `str` holding the English (so the commands print exactly what they
printed before), which also knows its key and values, so the page can show it in the reader's
language (`in_language`).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from fmnist.i18n.lesson import LESSON
from fmnist.i18n.page import PAGE

LANGUAGES = {"en": "English", "zh": "中文"}  # code: the switch's label
# The Fashion-MNIST classes in Chinese, in class order (fmnist.data.CLASSES in English).
CLASSES_ZH = (
    "T恤/上衣",
    "裤子",
    "套头衫",
    "连衣裙",
    "外套",
    "凉鞋",
    "衬衫",
    "运动鞋",
    "包",
    "短靴",
)
TEXTS: dict[str, tuple[str, str]] = {**LESSON, **PAGE}  # key: (English, Chinese)


def language_of(locale: str | None) -> str:
    """The language for a browser's locale (`zh-CN`, `en-US`, ...): Chinese for any `zh`, else
    English."""
    return "zh" if locale and locale.strip().lower().startswith("zh") else "en"


def say(lang: str, key: str, /, **values: Any) -> str:
    """The text `key` in `lang` ("en" or "zh"), its placeholders filled; a value that is itself a
    `Text` is put in `lang` too."""
    english, chinese = TEXTS[key]
    template = chinese if lang == "zh" else english
    return template.format(**{name: in_language(value, lang) for name, value in values.items()})


def in_language(value: Any, lang: str) -> Any:
    """`value` in `lang` when it is a `Text`; as it is otherwise."""
    return value.in_language(lang) if isinstance(value, Text) else value


def class_name(k: int, english: list[str] | tuple[str, ...], lang: str) -> str:
    """Class `k`'s name: Fashion-MNIST's in Chinese for `zh`, else `english[k]`."""
    return CLASSES_ZH[k] if lang == "zh" and len(english) == len(CLASSES_ZH) else english[k]


def padded(text: str, columns: int) -> str:
    """`text` padded with spaces to `columns` columns of a terminal, where a Chinese character
    takes two."""
    width = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, columns - width)


class Text(str):
    """An English message that can be told in another language: `Text("key", value=...)`."""

    key: str
    values: dict[str, Any]

    def __new__(cls, key: str, /, **values: Any) -> Text:
        text = super().__new__(cls, say("en", key, **values))
        text.key, text.values = key, values
        return text

    def in_language(self, lang: str) -> str:
        return say(lang, self.key, **self.values)
