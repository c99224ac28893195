"""The project's own metadata: what pip is told to install."""

from __future__ import annotations

import tomllib
from conftest import ROOT
from packaging.requirements import Requirement


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {req.name: req for req in map(Requirement, project["dependencies"])}


def test_torch_floor_is_what_the_code_needs_and_there_is_no_cap():
    """ONNX export needs torch 2.7 (2.6's exporter fails on BatchNorm; the suite passes on 2.7);
    an upper bound would keep users from patch releases (a machine's own pip constraints are its
    business)."""
    for name, floor in (("torch", "2.7"), ("torchvision", "0.22")):
        specifiers = requirements()[name].specifier
        assert not specifiers.contains("2.6.0" if name == "torch" else "0.21.0"), name
        assert specifiers.contains(floor) and specifiers.contains("99.0"), name
