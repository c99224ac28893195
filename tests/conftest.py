"""Shared fixtures: the real dataset (skipped only when absent and FMNIST_REQUIRE_DATA is unset),
one tiny trained run per session (`experiment=smoke`) and its exports (ONNX, TorchScript), a
sturdier run for the slow tests that judge preparation and the OOD flag, the app's server on the
tiny run (`app_server`), headless Chromium for the browser tests, and two ways to run a script: as
a real subprocess (`run_script`: exit codes, signals, start-up) or in this process
(`run_in_process`: the same Hydra entry point and error handling, without the seconds of
start-up)."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import runpy
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmnist import data, runs

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the `chromium` fixture skips (or fails) before anything needs it
    sync_playwright = None

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "scripts" / "train.py")
SMOKE = "experiment=smoke"  # 2 epochs of 8 steps of the default CNN (configs/experiment/smoke.yaml)
SMOKE_RUN = [SMOKE, "trainer.tta=flip"]  # `trained_run`'s overrides: what continues a copy of it
# The default CNN cut to 4k parameters (widths 8, 16): for a test that needs a CNN trained, not a
# good one, it trains and evaluates in a fraction of the time (the runs' fixed costs remain).
TINY_CNN = "model.widths=[8,16]"


class RunsCode:
    """A pickle that would create a marker file if anything ever unpickled it unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


TRAINED_RUNS = {"trained_run", "sturdier_run"}  # a session fixture that trains: 30 s or more


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a trained run (directly or through another fixture) is slow: the fast
    tier (`make test-fast`) never trains one, whoever forgets the mark."""
    for item in items:
        if TRAINED_RUNS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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


def run_in_process(script: str, *args: str, cwd: Path | None = None):
    """Run `scripts/NAME.py args...` here, as `python` would: its Hydra main, its exit code."""
    argv, before = sys.argv, Path.cwd()
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [str(ROOT / script), *args]
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(before)
        _exit_as_a_process_would()
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def _exit_as_a_process_would() -> None:
    """What the end of a process undoes, so that no test leans on, or trips over, an earlier
    in-process command:
    - the loggers that Hydra's `disabled` logging switched off (explain, app) are on again;
    - `fmnist.runs`' locks are released (their files closed) and its record of the directories it
      chose is forgotten (else the next command finds its own run "in use by another process");
    - Hydra's global state (the config directory, the run's HydraConfig) is gone."""
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.disabled = False
    for fd in runs._held.values():
        os.close(fd)
    runs._held.clear()
    runs._before.clear()
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
_torchrun_logs = itertools.count()


@dataclass
class Torchrun:
    """A torchrun agent started by a test, with every rank's output kept in files (`--log-dir`,
    `--tee 3`: on the console too), so a failure shows what each rank printed."""

    process: subprocess.Popen
    command: list[str]
    log_dir: Path
    stdout: str = ""
    stderr: str = ""

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def wait(self, timeout: float = 300) -> Torchrun:
        self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        return self

    def report(self) -> str:
        """What went wrong, for an assertion message: the command, its exit status, torchrun's
        own stderr, then each attempt's and rank's stdout and stderr (their last 4000
        characters)."""
        parts = [
            f"$ {shlex.join(self.command)}",
            f"exit status {self.returncode}",
            "--- torchrun's stderr ---",
            self.stderr[-4000:],
        ]
        for log in sorted(self.log_dir.rglob("*.log")):
            text = log.read_text(errors="replace")
            parts += [f"--- {log.relative_to(self.log_dir)} ---", text[-4000:] or "(empty)"]
        return "\n".join(parts)


def start_torchrun(
    cwd: Path, *args: str, options: tuple[str, ...] = ("--standalone", "--nproc_per_node=2")
) -> Torchrun:
    """`torchrun options scripts/train.py args...` (or another script: args[0] ending in .py) in
    `cwd`, running on while the test watches it; its ranks' logs under `cwd`/torchrun-logs-N."""
    script, args = (args[0], args[1:]) if args and args[0].endswith(".py") else (TRAIN, args)
    log_dir = cwd / f"torchrun-logs-{next(_torchrun_logs)}"
    command = [*TORCHRUN, *options, f"--log-dir={log_dir}", "--tee=3", script, *args]
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return Torchrun(process, command, log_dir)


def torchrun(cwd: Path, *args: str, **options: tuple[str, ...]) -> Torchrun:
    """`start_torchrun`, waited for."""
    return start_torchrun(cwd, *args, **options).wait()


def start_training(cwd: Path, *overrides: str) -> subprocess.Popen:
    """scripts/train.py as a real process in `cwd`, running on while the test watches it."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(
    cwd: Path, process: subprocess.Popen, step: int = 1, pattern: str = "outputs/runs/*"
) -> Path:
    """The last.pt of the run (`pattern` under `cwd`) as soon as it records `step` or more."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        for path in cwd.glob(f"{pattern}/checkpoints/last.pt"):
            try:
                if torch.load(path, weights_only=True)["step"] >= step:
                    return path
            except Exception:  # being replaced right now
                pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step}: {process.poll()=}")


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """`make(path)` once per session, however many pytest-xdist workers ask for it: the first to
    ask makes it while the others wait on a file lock, and all read the same directory (under the
    workers' common base directory). A failed `make` fails each asker in turn."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # basetemp is popen-gwN/ inside the session's own directory
    path, made = root / name, root / f"{name}.made"
    with FileLock(root / f"{name}.lock"):
        if not made.exists():
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            made.touch()
    return path


def train_into(*overrides: str, timeout: float = 300) -> Callable[[Path], None]:
    """A `made_once` maker: scripts/train.py with `overrides`, the run in path/run."""

    def make(path: Path) -> None:
        result = run_script(
            "scripts/train.py", *overrides, f"hydra.run.dir={path / 'run'}", timeout=timeout
        )
        assert result.returncode == 0, result.stderr

    return make


@pytest.fixture(scope="session")
def trained_run(data_root, tmp_path_factory) -> Path:
    """One `experiment=smoke` run through the real script, shared by every test that reads a
    trained run or its checkpoints (never modify it: copy what you damage). With flip TTA, the
    default (the smoke preset turns it off), so that what reads the run sees a TTA carried on."""
    return made_once(tmp_path_factory, "smoke", train_into(*SMOKE_RUN)) / "run"


@pytest.fixture(scope="session")
def sturdier_run(data_root, tmp_path_factory) -> Path:
    """A run that judges preparation and the model's own flag: `experiment=photos` (the fast
    recipe with a random zoom, for photos) on 10000 images (about 90% test accuracy). The smoke
    run (16 steps, 63%) is too unsettled for either: enlarging a picture 4x and shrinking it back
    alone moves it by 2 to 3 points, and its energies barely spread (uniform noise lands inside
    the test images' range)."""
    make = train_into("experiment=photos", "data.subset=10000", timeout=900)
    return made_once(tmp_path_factory, "sturdier", make) / "run"


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> dict[str, Path]:
    """`trained_run`'s best.pt exported by scripts/export.py, as ONNX and as TorchScript."""
    files = {}
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        out = tmp_path_factory.mktemp(fmt) / "out"
        result = run_in_process(
            "scripts/export.py", f"ckpt_path={trained_run}", f"format={fmt}", f"hydra.run.dir={out}"
        )
        assert result.returncode == 0, result.stderr
        files[fmt] = out / name
    return files


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: Pillow checks the size on opening."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def events(run_dir: Path) -> EventAccumulator:
    """The run's one events file, read back with every scalar and image."""
    files = list(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    accumulator = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "images": 0})
    return accumulator.Reload()


def scalars(run_dir: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of one scalar tag, over all events files of the run directory."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def contents(directory: Path) -> dict[str, bytes | None]:
    """Everything under `directory`, by relative path: each file's bytes (None for a folder)."""
    return {
        str(path.relative_to(directory)): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


def copy_run(run_dir: Path, to: Path, finished: bool = True) -> Path:
    """A copy of a trained run to damage or resume; `finished=False`: as if it had been stopped
    before its end (no metrics.json)."""
    shutil.copytree(run_dir, to)
    if not finished:
        (to / "metrics.json").unlink()
    return to


def continue_command(stderr: str) -> list[str]:
    """The command a stopped run's last line says continues it, as it would run in a shell
    (`python` being this interpreter)."""
    command = shlex.split(stderr.strip().splitlines()[-1].split("continue with: ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def hparams_experiment(run_dir: Path) -> list[tuple[str, bool]]:
    """The HPARAMS experiment a run wrote: its settings in order, each with whether it is marked
    as differing between runs (the tab shows those first)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    (path,) = run_dir.glob("events.out.tfevents.*")
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content
                )
                if data.HasField("experiment"):
                    return [(info.name, info.differs) for info in data.experiment.hparam_infos]
    raise AssertionError(f"no HPARAMS experiment in {path}")


def hparams_sessions(run_dir: Path) -> list[dict]:
    """Every HPARAMS session start written in the run directory's events files (raw events, not
    merged), as {hparam: value}, plus the metric tags its experiment names under "metrics"."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions, metrics = [], []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content
                )
                if data.HasField("experiment"):
                    metrics = [info.name.tag for info in data.experiment.metric_infos]
                if data.HasField("session_start_info"):
                    hparams = data.session_start_info.hparams
                    sessions.append(
                        {
                            key: hparams[key].WhichOneof("kind") and _value(hparams[key])
                            for key in hparams
                        }
                    )
    return [{**session, "metrics": metrics} for session in sessions]


def _value(value) -> object:
    return getattr(value, value.WhichOneof("kind"))


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class AppServer:
    """`scripts/app.py` serving `run`, a real process; the runs it lists are under cwd/outputs."""

    url: str
    run: Path
    no_validation: Path  # a run trained with data.val_size=0, listed by the page
    cwd: Path


@pytest.fixture(scope="session")
def app_server(trained_run, tmp_path_factory) -> Iterator[AppServer]:
    """The page on a free port of 127.0.0.1, serving the session's trained run; beside it, under
    outputs/runs/, a run trained without a validation split. Stopped at the end."""
    cwd = tmp_path_factory.mktemp("app")
    no_validation = cwd / "outputs" / "runs" / "no-validation"
    result = run_script(
        "scripts/train.py",
        SMOKE,
        "data.subset=128",
        "data.val_size=0",
        "trainer.max_epochs=1",
        f"hydra.run.dir={no_validation}",
    )
    assert result.returncode == 0, result.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(ROOT / "scripts" / "app.py"), f"ckpt_path={trained_run}"]
    command.append(f"server.port={port}")
    log_path = cwd / "app.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cwd / "gradio")}
    with log_path.open("w") as log:
        server = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_serving(url, server, log_path)
            yield AppServer(url, trained_run, no_validation, cwd)
        finally:
            stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 10 s."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until `url` answers (the app imports torch and Gradio first: tens of seconds on a busy
    machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the app exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    pytest.fail(f"the app did not answer in {timeout:.0f} s:\n{log.read_text()}")


# --------------------------------------------------------------------------------------------
# Headless Chromium, for the browser tests
# --------------------------------------------------------------------------------------------

TIMEOUT_MS = 30_000  # for anything a page has to fetch and draw
# As root, Chromium needs --no-sandbox; the others keep it off the (closed) network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, with Playwright to drive it: else a skip, or a failure when
    FMNIST_REQUIRE_BROWSER is set. A browser test module uses it first (`usefixtures`), so a
    module without a browser skips before its fixtures train or serve anything."""
    path = shutil.which("chromium")
    problem = None
    if sync_playwright is None:
        problem = "Playwright is not installed (pip install -e '.[dev]')"
    elif path is None:
        problem = "Chromium is not installed (apt-get install chromium)"
    if problem and os.environ.get("FMNIST_REQUIRE_BROWSER"):
        pytest.fail(f"FMNIST_REQUIRE_BROWSER is set but {problem}")
    if problem:
        pytest.skip(problem)
    return path


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Browser]:
    """Headless Chromium, the system's own, for the whole session."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (its own context: no state carried over from another test)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    yield page
    context.close()
