"""`python scripts/app.py` (configs/app.yaml, fmnist.script_configs.AppConfig): check the command
line, load the model, serve the page.

A mistake on the command line (a missing or broken checkpoint, a port in use, a host that is not
this machine's) is found before Gradio is even imported, and is one line. The server binds to
127.0.0.1 unless `server.host` says otherwise, never phones home (Gradio's analytics are off), and
serves no file of this machine: Gradio's `allowed_paths` is empty, so only its own upload and
cache folder is served; the page reads the checkpoint's run and the runs under outputs/, by the
names the server listed. Uploads are capped (`MAX_UPLOAD`).
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fmnist import runs
from fmnist.app.learning import find_runs
from fmnist.app.picture import Pictures
from fmnist.errors import UserError, reports_user_errors
from fmnist.predict import Predictor, from_checkpoint, from_onnx
from fmnist.script_configs import AppConfig, ExampleConfig, ServerConfig, validate_app

MAX_UPLOAD = "20mb"  # Gradio refuses larger uploads, with a message in the page
OUTPUTS = Path("outputs")  # where training writes its runs (relative, as configs/train.yaml)


@reports_user_errors
def main(cfg: DictConfig) -> None:
    """Check everything, then serve until Ctrl-C."""
    settings = validate_app(cfg)
    predictor, own_run = model(settings)
    check_free(settings.server)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before Gradio is imported: no phoning home
    from fmnist.app import page

    contents = page.Contents(
        logits=explain_example(),
        probs=[[settings.lesson.target, *settings.lesson.probs]],
        pictures=None if predictor is None else Pictures(predictor, settings.data.root),
        model="none" if predictor is None else predictor.description,
        runs={name(run): run for run in find_runs(OUTPUTS, own_run)},
        max_upload=MAX_UPLOAD,
    )
    print(f"Model: {contents.model}" if predictor else page.no_model("en"))
    serve(page.build(contents), settings.server, page.CSS)


def model(settings: AppConfig) -> tuple[Predictor | None, Path | None]:
    """The model the page predicts with, and its run directory (None: not a run's checkpoint).
    Without `ckpt_path`, the newest finished run under outputs/runs/, if there is one."""
    path = settings.ckpt_path
    if path is None:
        finished = [run for run in (OUTPUTS / "runs").glob("*") if runs.finished(run)]
        if not finished:
            return None, None
        path = str(max(finished, key=lambda run: (run / "metrics.json").stat().st_mtime))
    if path.lower().endswith(".onnx"):
        return from_onnx(path), None
    predictor = from_checkpoint(path, settings.device)
    checkpoint = Path(predictor.details["path"])
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    return predictor, run_dir


def explain_example() -> list[list[float]]:
    """The worked example `scripts/explain.py` explains by default, as rows of
    [target, x_1, ..., x_C]."""
    example = ExampleConfig()
    return [[t, *x] for x, t in zip(example.logits, example.targets, strict=True)]


def name(run: Path) -> str:
    """A run as the page names it: relative to here when it is below, else in full."""
    resolved = run.resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(resolved)


def check_free(server: ServerConfig) -> None:
    """Whether the page can listen on server.host:server.port; else one line saying why."""
    where = f"server.host={server.host} server.port={server.port}"
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            server.host, server.port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as e:
        raise UserError(
            f"server.host={server.host} is not a host name or address ({e.strerror}): "
            "leave it at 127.0.0.1, or give an address of this machine"
        ) from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(_bind_problem(e, server, where)) from None


def _bind_problem(error: OSError, server: ServerConfig, where: str) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {server.port} is in use on {server.host} (another server, or this page "
            f"already running?): stop it, or choose another port: server.port={server.port + 1}"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"server.host={server.host} is not an address of this machine: leave it at "
            "127.0.0.1 (this machine only) or give one of its addresses (0.0.0.0: all of them)"
        )
    if error.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need root): choose one above 1024"
    return f"cannot listen on {where} ({error.strerror})"


def serve(page: Any, server: ServerConfig, css: str) -> None:
    """Serve `page` until Ctrl-C. Gradio's own start-up lines are left out (they offer a share
    link, which this page never makes); one line says where the page is once it answers."""
    try:
        page.launch(
            server_name=server.host,
            server_port=server.port,
            share=False,
            max_file_size=MAX_UPLOAD,
            allowed_paths=[],
            footer_links=["api"],
            show_error=False,
            css=css,
            quiet=True,
            prevent_thread_lock=True,
        )
    except OSError as e:  # taken between the check and now
        raise UserError(f"cannot listen on {server.host}:{server.port} ({e})") from None
    print(f"Serving the page on http://{server.host}:{server.port} (Ctrl-C stops it)", flush=True)
    page.block_thread()
