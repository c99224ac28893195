"""The page's API under load (`scripts/benchmark_app.py`, configs/benchmark_app.yaml): the real
server, started as `scripts/app.py` would be, answers `calls` /predict requests sent by `clients`
clients at once.

A client is a thread with its own HTTP connection speaking Gradio's documented HTTP API (upload,
queue the call, read its result from the event stream), as any program calling the page would.
It is kept small on purpose: on a 2-core machine the load generator shares the CPU with the
server, and gradio_client, which makes a new connection per request and follows each call's
progress, spends about twice the server's CPU time doing so.

Each call uploads a different test image (test-<index>.png) and must come back with that file's
prediction (its name, 10 probabilities summing to 1): an answer lost, failed or mixed up with
another client's is counted, not hidden. The latency of a call is what its client waits, from
sending to the answer (upload, queue, preparation, model, reply; output files are not
downloaded). Figures: p50, p95 and the largest latency, and calls per second over the whole run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
from omegaconf import DictConfig

from fmnist import data, runs
from fmnist.app.picture_tab import UNKNOWN
from fmnist.app.server import model
from fmnist.benchmark import machine
from fmnist.errors import UserError, reports_user_errors
from fmnist.files import write_text_atomically
from fmnist.i18n import say
from fmnist.prepare import image_of
from fmnist.script_configs import AppConfig, validate_app_benchmark

APP = data.PROJECT_ROOT / "scripts" / "app.py"
START_TIMEOUT = 600  # seconds for the server to answer (imports torch and Gradio first)
CALL_TIMEOUT = 120  # seconds for one request


@reports_user_errors
def main(cfg: DictConfig) -> dict[str, Any]:
    """Serve, load, report: print the figures and write benchmark_app.json."""
    with runs.removed_if_unused(runs.output_dir()) as out:  # Hydra's log is in it already
        settings = validate_app_benchmark(cfg)
        # The model the page will serve, checked here first: a mistake is the app's own line.
        predictor, _ = model(AppConfig(ckpt_path=settings.ckpt_path, device="cpu"))
        if predictor is None:
            raise UserError(
                f"no model to serve: {say('en', 'page.no_model_fix')}, or give ckpt_path="
            )
        with tempfile.TemporaryDirectory() as tmp:
            pictures = test_pictures(Path(tmp), settings.calls, settings.data.root)
            with served(settings.ckpt_path, Path(tmp)) as url:
                results = load(url, pictures, settings.clients)
        results["machine"] = machine()
        write_text_atomically(out / "benchmark_app.json", json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"wrote {out / 'benchmark_app.json'}")
    if results["failed"]:
        raise UserError(f"{results['failed']} of {results['calls']} calls failed (above)", 1)
    return results


def test_pictures(directory: Path, count: int, root: str | None) -> list[Path]:
    """The first `count` test images as PNG files (test-<index>.png)."""
    images, _ = data.load_split("test", root)
    paths = []
    for index in range(count):
        path = directory / f"test-{index}.png"
        image_of(images[index % len(images)]).save(path)
        paths.append(path)
    return paths


class served:
    """`scripts/app.py` on a free port of 127.0.0.1 while the block runs; its URL."""

    def __init__(self, ckpt_path: str | None, directory: Path) -> None:
        self.ckpt_path, self.log = ckpt_path, directory / "app.log"

    def __enter__(self) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, str(APP), f"server.port={port}"]
        if self.ckpt_path is not None:
            command.append(f"ckpt_path={self.ckpt_path}")
        env = {**os.environ, "GRADIO_TEMP_DIR": str(self.log.parent / "gradio")}
        with self.log.open("w") as log:
            self.server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                last = self.log.read_text().strip().splitlines() or ["no output"]
                raise UserError(f"the app did not start: {last[-1]}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    return url
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise UserError(f"the app did not answer in {START_TIMEOUT} s")

    def __exit__(self, *exc: object) -> None:
        self.server.terminate()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


def load(url: str, pictures: list[Path], clients: int) -> dict[str, Any]:
    """Every picture predicted once through /predict, by `clients` clients at once (client k
    takes pictures k, k + clients, ...); the latencies, and the calls that failed."""
    # httpx logs every request at INFO, and Hydra's logging prints INFO: thousands of lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with httpx.Client(base_url=f"{url}/gradio_api", timeout=CALL_TIMEOUT) as http:
            ready.wait()
            for path in pictures[k::clients]:
                start = time.perf_counter()
                try:
                    problem = _check(predicted(http, path), path)
                except Exception as e:  # counted and named, whatever it is
                    problem = f"{path.name}: {type(e).__name__}: {e}"
                seconds = time.perf_counter() - start
                with lock:
                    if problem:
                        failures.append(problem)
                    else:
                        latencies.append(seconds)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()  # every client connected: the clock starts
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    for problem in failures:
        print(f"error: {problem}", file=sys.stderr)
    return summary(latencies, len(failures), clients, wall)


def predicted(http: httpx.Client, path: Path) -> dict[str, Any]:
    """/predict's numbers for the picture at `path`, through Gradio's HTTP API: the file
    uploaded, the call queued (the true class unknown, invert auto, crop on, in English), then
    its result read from the event stream."""
    with path.open("rb") as file:
        uploaded = http.post("/upload", files={"files": (path.name, file, "image/png")})
    uploaded.raise_for_status()
    picture = {
        "path": uploaded.json()[0],
        "orig_name": path.name,
        "meta": {"_type": "gradio.FileData"},
    }
    queued = http.post("/call/predict", json={"data": [picture, UNKNOWN, "auto", True, "en"]})
    queued.raise_for_status()
    events = http.get(f"/call/predict/{queued.json()['event_id']}")
    events.raise_for_status()
    event = None
    for line in events.text.splitlines():  # "event: <kind>" then "data: <json>"
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event in ("complete", "error"):
            answer = json.loads(line.removeprefix("data: "))
            if event == "error":
                raise RuntimeError(f"the server failed: {answer}")
            return dict(answer[-2])  # the outputs end with the numbers and the page's state
    raise RuntimeError("the event stream ended without a result")


def _check(answer: dict[str, Any], path: Path) -> str | None:
    """Why an answer is not the prediction of `path`, or None."""
    if answer.get("file") != path.name:
        return f"{path.name}: the answer is for {answer.get('file')!r}"
    q = answer.get("q")
    if not isinstance(q, list) or len(q) != len(data.CLASSES) or abs(math.fsum(q) - 1) > 1e-6:
        return f"{path.name}: the answer holds no distribution over the 10 classes"
    return None


def summary(latencies: list[float], failed: int, clients: int, wall: float) -> dict[str, Any]:
    """The figures benchmark_app.json holds; latencies in milliseconds."""
    ordered = sorted(latencies)
    ms = [1000 * v for v in ordered]

    def percentile(p: float) -> float | None:
        if not ms:
            return None
        return round(ms[min(len(ms) - 1, math.ceil(p / 100 * len(ms)) - 1)], 1)

    return {
        "calls": len(latencies) + failed,
        "answered": len(latencies),
        "failed": failed,
        "clients": clients,
        "latency_ms": {
            "p50": percentile(50),
            "p95": percentile(95),
            "max": round(ms[-1], 1) if ms else None,
            "mean": round(statistics.fmean(ms), 1) if ms else None,
        },
        "wall_seconds": round(wall, 2),
        "calls_per_second": round(len(latencies) / wall, 2) if wall else None,
    }


def report(results: dict[str, Any]) -> str:
    latency = results["latency_ms"]
    return "\n".join(
        [
            f"/predict: {results['calls']} calls from {results['clients']} clients at once: "
            f"{results['answered']} answered, {results['failed']} failed",
            f"latency p50 {latency['p50']} ms, p95 {latency['p95']} ms, max {latency['max']} ms"
            f" (mean {latency['mean']} ms)",
            f"{results['calls_per_second']} calls/s over {results['wall_seconds']} s",
            f"machine: {results['machine']}",
        ]
    )
