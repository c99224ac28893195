"""The Chinese edition of the lesson notebook: the English one's code, cell for cell, with every
markdown cell in Chinese, and neither storing outputs."""

from __future__ import annotations

import json
import re

from conftest import ROOT

ENGLISH = ROOT / "notebooks" / "cross_entropy.ipynb"
CHINESE = ROOT / "notebooks" / "cross_entropy.zh.ipynb"
CJK = re.compile("[\u4e00-\u9fff]")


def cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell):
    return "".join(cell["source"])


def test_the_chinese_notebook_has_the_english_ones_code():
    english, chinese = cells(ENGLISH), cells(CHINESE)
    assert len(chinese) == len(english), f"{len(chinese)} cells, the English has {len(english)}"
    for index, (en, zh) in enumerate(zip(english, chinese, strict=True)):
        assert zh["cell_type"] == en["cell_type"], (
            f"cell {index} is {zh['cell_type']}, the English one {en['cell_type']}"
        )
        if en["cell_type"] == "code":
            assert source(zh) == source(en), f"code cell {index} differs from the English one"
        elif en["cell_type"] == "markdown":
            assert CJK.search(source(zh)), f"markdown cell {index} has no Chinese"


def test_the_two_notebooks_store_no_outputs():
    for path in (ENGLISH, CHINESE):
        for index, cell in enumerate(cells(path)):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{path.name} cell {index} stores outputs"
                assert cell["execution_count"] is None, f"{path.name} cell {index} has a count"
