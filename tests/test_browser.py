"""TensorBoard as a person sees it, in a real browser.

A short sweep over the loss (`-m loss=scratch,torch`) goes into a fresh logdir, a real
`tensorboard` server serves it on 127.0.0.1, and headless Chromium (Debian's `chromium` package,
driven by Playwright from PyPI through `executable_path`: no browser download) opens its tabs:
the `train/loss` chart with both runs, named by what the sweep varies; the HPARAMS table with
that setting as its first column and values in its metric columns; the projector's embedding
and the ten per-class PR curves. Each test saves a screenshot of its tab under its temporary
directory.

Without Chromium or Playwright the tests skip, unless FMNIST_REQUIRE_BROWSER=1 (`.ci/run` sets
it), which makes them fail instead (conftest's `chromium`, `browser` and `page` fixtures).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SMOKE, TINY_CNN, run_script, stop_server
from omegaconf import OmegaConf

from fmnist import data
from fmnist.config import compose_train
from fmnist.report.training import EMBEDDED, METRICS, hparams

with contextlib.suppress(ImportError):  # conftest's `chromium` fixture skips (or fails) first
    from playwright.sync_api import Locator, Page, expect

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("chromium")]

LOSSES = ("scratch", "torch")
RUNS = ("0_loss-scratch", "1_loss-torch")  # the sweep's jobs, named by what varies: the runs
PR_TAGS = sorted(f"test/pr/{name.replace('/', '-')}" for name in data.CLASSES)


@pytest.fixture(scope="module")
def logdir(data_root, tmp_path_factory) -> Path:
    """A fresh logdir holding a sweep of two short runs (2 steps each), one per loss."""
    logdir = tmp_path_factory.mktemp("logdir")
    result = run_script(
        "scripts/train.py",
        "-m",
        f"loss={','.join(LOSSES)}",
        SMOKE,
        TINY_CNN,
        "data.subset=256",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={logdir}",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == list(RUNS)
    return logdir


@pytest.fixture(scope="module")
def board(logdir, tmp_path_factory) -> Iterator[str]:
    """`tensorboard --logdir` on a free port of 127.0.0.1, once it has loaded both runs; its URL.
    Stopped at the end, whatever happens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"]
    log_path = tmp_path_factory.mktemp("tensorboard") / "tensorboard.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_loaded(url, server, log_path)
            yield url
        finally:
            stop_server(server)


def wait_until_loaded(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until both runs' last scalar (written as each run ends) is served and the projector,
    which looks for its files in the background, is among the active plugins."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"tensorboard exited with {server.returncode}:\n{log.read_text()}")
        try:
            tags = get_json(f"{url}/data/plugin/scalars/tags")
            plugins = get_json(f"{url}/data/plugins_listing")
        except OSError:  # not listening yet
            tags, plugins = {}, {}
        loaded = all("train/images_per_second" in tags.get(run, {}) for run in RUNS)
        if loaded and plugins.get("projector", {}).get("enabled"):
            return
        time.sleep(0.5)
    pytest.fail(f"tensorboard did not load both runs in {timeout:.0f} s:\n{log.read_text()}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def screenshot(page: Page, path: Path) -> None:
    """What the tab looks like once its data has come in and been drawn."""
    page.wait_for_load_state("networkidle")
    page.screenshot(path=path, full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_series_draws_train_loss_for_both_runs(board: str, page: Page, tmp_path: Path):
    page.goto(f"{board}/#timeseries")
    page.get_by_role("combobox", name="Filter tags (regex)").fill("train/loss")
    page.keyboard.press("Escape")  # close the tag suggestions over the cards
    card = page.locator("scalar-card").filter(has=page.get_by_text("train/loss", exact=True))
    expect(card).to_have_count(1)
    expect(card.locator("canvas")).to_be_visible()
    legend = card.locator("tb-data-table-content-row")  # run, smoothed, value, step, relative
    expect(legend).to_have_count(len(RUNS))
    expect(legend).to_contain_text(list(RUNS))  # in the legend's order: by run name
    screenshot(page, tmp_path / "timeseries.png")


def test_hparams_table_shows_each_runs_metrics(board: str, page: Page, tmp_path: Path):
    page.goto(f"{board}/#hparams")
    table = page.locator("tf-hparams-table-view").get_by_role("grid")
    expect(table.get_by_role("gridcell", name=RUNS[-1], exact=True)).to_be_visible()
    # What the sweep varies is the first setting column, shown without ticking anything.
    expect(page.get_by_role("checkbox", name="loss", exact=True)).to_be_checked()
    header, _ = read_grid(table)
    settings = hparams(OmegaConf.to_container(compose_train([SMOKE]), resolve=True))
    assert next(column for column in header if column in settings) == "loss", header
    # Not every column shows by default: tick every metric in the side panel.
    for column in METRICS:
        page.get_by_role("checkbox", name=column, exact=True).check()
    last_column = table.get_by_role("columnheader", name=METRICS[-1], exact=True)
    expect(last_column).to_be_visible()
    last_column.scroll_into_view_if_needed()  # the table scrolls sideways: show the metrics
    header, rows = read_grid(table)
    assert sorted(rows) == sorted(RUNS), rows
    for run, cells in rows.items():
        shown = dict(zip(header, cells, strict=True))
        assert shown["loss"] == dict(zip(RUNS, LOSSES, strict=True))[run]
        for metric in METRICS:
            assert math.isfinite(float(shown[metric])), (run, metric, shown[metric])
        assert 0 < float(shown["test/acc"]) <= 1 and float(shown["test/loss"]) > 0
    screenshot(page, tmp_path / "hparams.png")


def read_grid(grid: Locator) -> tuple[list[str], dict[str, list[str]]]:
    """A table as a screen reader reads it (its cells' text sits in slots, out of reach of
    inner_text): the column headers, and each row's cells by its first cell."""
    snapshot = grid.aria_snapshot()
    header = re.findall(r'- columnheader "(.*)"', snapshot)
    rows = {}
    for row in re.split(r"- row\b", snapshot)[1:]:
        cells = re.findall(r'- gridcell(?: "(.*)")?', row)  # a checkbox cell has no name: ""
        if cells:
            rows[cells[0]] = cells
    return header, rows


def test_projector_lists_the_embedding(board: str, page: Page, tmp_path: Path):
    page.goto(f"{board}/#projector")
    projector = page.frame_locator("iframe").frame_locator("iframe")  # the plugin's own page
    tensors = projector.get_by_label("1 tensor found")
    expect(tensors).to_have_value(re.compile(r"^test_features:\d+$"))
    expect(projector.get_by_text(re.compile(rf"Points:\s*{EMBEDDED}\b"))).to_be_visible()
    tensors.click()
    expect(projector.get_by_role("option", name=re.compile(r"^test_features:"))).to_be_visible()
    screenshot(page, tmp_path / "projector.png")


def test_pr_curves_list_the_ten_classes(board: str, page: Page, tmp_path: Path):
    page.goto(f"{board}/#pr_curves")
    titles = page.locator("tf-pr-curve-card tf-card-heading .heading-label.name")
    expect(titles).to_have_count(len(PR_TAGS))
    assert sorted(titles.all_inner_texts()) == PR_TAGS
    screenshot(page, tmp_path / "pr_curves.png")
