"""Shared fixtures: the real dataset (skipped only when absent and FMNIST_REQUIRE_DATA is unset)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmnist import data

ROOT = Path(__file__).resolve().parent.parent


class RunsCode:
    """A pickle that would create a marker file if anything ever unpickled it unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The prepared real Fashion-MNIST root (prepares it from a local source if needed)."""
    try:
        data.prepare(download=False)
    except data.NoSourceError as e:
        if os.environ.get("FMNIST_REQUIRE_DATA"):
            pytest.fail(f"FMNIST_REQUIRE_DATA is set but the dataset is missing: {e}")
        pytest.skip("real Fashion-MNIST is not available (run `make data`)")
    return data.resolve_root()


def run_script(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run `scripts/NAME.py args...` or `-m module args...` as a real subprocess."""
    command = [sys.executable, *(args if args[0] == "-m" else (str(ROOT / args[0]), *args[1:]))]
    return subprocess.run(
        command,
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
