"""The house rules (.ci/house.py, run by make lint): they hold today, and the checker finds what
breaks them."""

from __future__ import annotations

import ast
import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("house", ROOT / ".ci" / "house.py")
assert spec is not None and spec.loader is not None
house = importlib.util.module_from_spec(spec)
spec.loader.exec_module(house)


def test_the_house_rules_hold():
    assert house.problems() == []


def test_code_lines_leave_out_docstrings_comments_and_blank_lines():
    text = (
        '"""A module.\n\nIts docstring."""\n\n# a comment\nx = 1  # code\n\n\n'
        'def f():\n    """Doc."""\n    return x\n'
    )
    assert house.code_lines(text, ast.parse(text)) == 3


def test_a_cycle_is_found_once():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert house.cycles(graph) == [["a", "b", "c"]]
    assert house.cycles({"a": {"b"}, "b": set()}) == []


def test_imports_name_the_projects_modules():
    tree = ast.parse(
        "from fmnist import data\nimport fmnist.runs\nfrom fmnist.config import X\nimport os\n"
    )
    known = {"fmnist.data", "fmnist.runs", "fmnist.config", "fmnist"}
    assert house.imports(tree, "fmnist.train", known) == {
        "fmnist.data",
        "fmnist.runs",
        "fmnist.config",
    }
