"""The lesson in English and in Simplified Chinese (fmnist.i18n): one table, every key in both
languages with the same placeholders, the same numbers in both, English exactly as the commands
print it, and no words on the page that bypass the table."""

from __future__ import annotations

import re
import string

import pytest
from conftest import run_in_process

from fmnist import explain
from fmnist.app import lesson, server
from fmnist.app.picture import Pictures
from fmnist.app.words import Words
from fmnist.i18n import CLASSES_ZH, TEXTS, Text, language_of, say
from fmnist.i18n.lesson import LESSON
from fmnist.i18n.page import PAGE
from fmnist.script_configs import HALF_TRAINED_COAT

CJK = re.compile(r"[\u4e00-\u9fff]")


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("key", sorted(TEXTS))
def test_every_key_is_in_both_languages_with_the_same_placeholders(key):
    english, chinese = TEXTS[key]
    assert english.strip() and chinese.strip()
    assert placeholders(english) == placeholders(chinese)
    words = re.sub(r"\{\w+\}|`[^`]*`|\w+\.\w+\S*|log|ln|softmax", "", english)
    notation_only = not re.search(r"[A-Za-z]{3,}", words)
    assert notation_only or CJK.search(chinese), f"{key}: {chinese!r} is not in Chinese"


def test_the_tables_share_no_key_and_name_ten_classes():
    assert not LESSON.keys() & PAGE.keys()
    assert len(CLASSES_ZH) == 10 and CLASSES_ZH[4] == "外套"


def test_a_message_is_english_and_can_be_told_in_chinese():
    message = Text("explain.error.range", t=3, c=3, last=2)
    assert message == "target 3 is out of range: with 3 classes, targets must be in [0, 2]"
    assert message.in_language("zh") == "目标 3 超出范围：共有 3 个类别，目标必须在 [0, 2] 之间"
    assert language_of("zh-CN") == language_of("zh-TW,zh;q=0.9") == "zh"
    assert language_of("en-US") == language_of(None) == language_of("fr") == "en"


def decimals(text: str) -> list[str]:
    return re.findall(r"-?\d+\.\d+(?:e[+-]\d+)?", text)


@pytest.mark.parametrize(
    "given",
    [
        {"example": {"logits": [[-1, 0.5, 2], [-1, 0.5, 3]], "targets": [1, 2]}},
        {"probs": list(HALF_TRAINED_COAT), "target": 4},
        {"logits": [[1, 1e308, -1e308]], "targets": [0]},
    ],
)
def test_the_lesson_tells_the_same_numbers_in_both_languages(given):
    english, chinese = explain.explain(given, "en"), explain.explain(given, "zh")
    assert decimals(english) == decimals(chinese) and CJK.search(chinese)
    assert explain.explain(given) == english  # English is the default


def test_explain_py_prints_chinese_with_lang_zh(tmp_path):
    result = run_in_process("scripts/explain.py", "lang=zh", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 个样本的平均损失" in result.stdout and ": 0.9185" not in result.stdout
    assert "）：0.9185" in result.stdout and "两者一致吗：一致" in result.stdout
    coat = run_in_process(
        "scripts/explain.py",
        f"probs=[{','.join(map(str, HALF_TRAINED_COAT))}]",
        "target=4",
        "lang=zh",
        cwd=tmp_path,
    )
    assert "目标类别 4（外套）" in coat.stdout and "= -log(0.0875) = 2.4361" in coat.stdout


def test_the_lesson_tabs_summaries_in_chinese():
    worked = lesson.from_logits(server.explain_example(), "zh")
    assert (
        "**样本 1**（目标 1）：损失 = `-(0*log(0.0391)+1*log(0.1753)+0*log(0.7856)) = 1.7413`"
        in (worked.summary())
    )
    assert "**0.9185**" in worked.summary() and "两者一致吗：一致" in worked.summary()
    headers, _ = lesson.from_probs([[4, *HALF_TRAINED_COAT]], "zh").q_table()
    assert headers[:3] == ["样本", "目标", "q T恤/上衣"] and headers[-1] == "损失（精确的 q）"


def page_strings(config: dict) -> list[str]:
    """Every word the page's layout shows: labels, Markdown, buttons, tab names, choices."""
    found = []
    for component in config["components"]:
        props = component.get("props", {})
        for key in ("label", "x_title", "color_title"):
            if isinstance(props.get(key), str) and props.get("show_label", True) is not False:
                found.append(props[key])
        if component["type"] in ("markdown", "button") and isinstance(props.get("value"), str):
            found.append(props["value"])
        for choice in props.get("choices") or []:
            found.append(choice[0] if isinstance(choice, list | tuple) else choice)
    return [text for text in found if re.search(r"[A-Za-z]{3,}", text)]


DYNAMIC = ("**Sample ",)  # the summaries: computed


def test_no_word_on_the_page_bypasses_the_table():
    """Built in English, every word on the page is one the table gave (`Words` notes each); the
    summaries, computed by the lesson in the page's language, are checked above. In Chinese,
    every noted word changes."""
    from fmnist.app import page

    words = Words()
    contents = page.Contents(
        logits=server.explain_example(),
        probs=[[4, *HALF_TRAINED_COAT]],
        pictures=Pictures(None, None),  # type: ignore[arg-type]  # only laid out, not used
        model="SmallCNN",
        runs={},
        max_upload=server.MAX_UPLOAD,
    )
    blocks = page.build(contents, words)
    english = {v for update in words.apply("en") for v in _strings(update)}
    shown = page_strings(blocks.get_config_file())
    bypassing = [
        text
        for text in shown
        if text not in english
        and not text.startswith(DYNAMIC)
        and text not in ("language / 语言", "English", "auto", "true", "false")
    ]
    assert bypassing == []
    chinese = {v for update in words.apply("zh") for v in _strings(update)}
    words_of = [re.sub(r"\blogit\b", "", text) for text in english & chinese]  # notation stays
    untranslated = [text for text in words_of if re.search(r"[A-Za-z]{4,}", text)]
    assert untranslated == []


def _strings(update: dict) -> list[str]:
    found = []
    for key, value in update.items():
        if key == "__type__":
            continue
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found += [v[0] if isinstance(v, tuple | list) else v for v in value if v]
    return [v for v in found if isinstance(v, str)]


def test_say_fills_placeholders_and_tells_texts_in_its_language():
    inner = Text("explain.error.row", name="logits", i=2)
    outer = Text("explain.error.empty", where=inner)
    assert outer == "logits row 2 is empty"
    assert outer.in_language("zh") == "logits 第 2 行 是空的"
    assert say("zh", "page.tab.lesson") == "手算交叉熵"
