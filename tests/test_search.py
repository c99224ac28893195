"""The search (scripts/tune.py, fmnist.search): trials ranked on validation alone, pruning, a
stopped or killed worker's trial continued bit for bit from its checkpoint, workers sharing a
real PostgreSQL study, and the space's rules.

The searches are tiny: configs/hparams_search/smoke.yaml (a 4k-parameter CNN on 1024 images) or
spaces written here into a config directory of the test's own (`hydra.searchpath`), as a user
keeps theirs outside the project."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    continue_command,
    free_port,
    hparams_experiment,
    run_in_process,
    scalars,
    stop_server,
    wait_for_checkpoint,
    wait_until_serving,
)

from fmnist import checkpoint
from fmnist.config import compose_train
from fmnist.errors import UserError
from fmnist.search import space

optuna = pytest.importorskip("optuna")  # the `tune` extra

TUNE = "scripts/tune.py"
SMOKE = ["hparams_search=smoke"]
# Bit for bit, and stopped in the middle of a trial: deterministic, many small steps.
EXACT = [
    *SMOKE,
    "trainer.deterministic=true",
    "trainer.checkpoint_every_steps=1",
    "data.batch_size=32",
    "search.n_trials=2",
]


def study_of(search_dir: Path, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{search_dir / 'study.db'}")


def trial_dirs(search_dir: Path) -> list[Path]:
    return sorted(p for p in search_dir.iterdir() if p.is_dir() and p.name[0].isdigit())


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def same_weights(a: Path, b: Path) -> bool:
    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def spaces(tmp_path: Path, **files: str) -> str:
    """Search spaces of the test's own, as hparams_search options: the override that adds their
    directory to Hydra's config search path."""
    folder = tmp_path / "my-configs" / "hparams_search"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(f"# @package _global_\n{text}")
    return f"hydra.searchpath=[file://{folder.parent}]"


# --------------------------------------------------------------------------------------------
# The space
# --------------------------------------------------------------------------------------------


def test_a_space_reads_as_ranges_and_choices_and_overrides():
    dimensions = space.read(
        {
            "optimizer.lr": {"low": 0.01, "high": 0.3, "log": True},
            "trainer.max_epochs": {"low": 2, "high": 6},
            "model.widths": {"choices": ["[8,16]", "[16,32]"]},
            "data.flip": {"choices": [True, False]},
        }
    )
    assert [d.whole for d in dimensions] == [False, True, False, False]
    assert dimensions[1].ends() == (2, 6) and dimensions[2].ends() == ("[8,16]", "[16,32]")
    assert space.override("optimizer.lr", 0.1) == "optimizer.lr=0.1"
    assert space.override("data.flip", False) == "data.flip=false"
    assert space.short(0.0412345) == "0.04123"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"low": 0.5, "high": 0.1}, "the range 0.5..0.1 is empty: give low below high"),
        ({"low": 0, "high": 0.1, "log": True}, "a log range must stay above zero, got low=0"),
        ({"choices": []}, "choices must be a non-empty list"),
        ({"low": 0.1}, "a range needs numbers low and high"),
        ({"low": 0.1, "high": 1, "size": 3}, "give a range {low: L, high: H}"),
        ({"choices": [[8, 16]]}, "or a list written in quotes"),
        ({"low": 0.1, "high": 1, "step": 0.1, "log": True}, "cannot go with log: true"),
    ],
)
def test_a_bad_range_is_one_line_naming_the_setting(spec, message):
    with pytest.raises(UserError) as caught:
        space.read({"optimizer.lr": spec})
    assert str(caught.value).startswith("search.space.optimizer.lr: ") and message in str(
        caught.value
    )


# --------------------------------------------------------------------------------------------
# A search
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_search_ranks_its_trials_on_validation_alone(data_root, tmp_path):
    """Four trials, each an ordinary run named by what it varies, judged on the validation split
    (nothing of the test split in its metrics or events), ranked in summary.md and .csv, with
    the best one's paste-ready command; the same command again runs nothing more."""
    result = run_in_process(TUNE, *SMOKE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    search_dir = tmp_path / "outputs" / "search" / "smoke"
    study = study_of(search_dir)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} <= {
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    }
    dirs = trial_dirs(search_dir)
    assert [d.name.split("_", 1)[0] for d in dirs] == ["0", "1", "2", "3"]
    for trial, run_dir in zip(sorted(trials, key=lambda t: t.number), dirs, strict=True):
        assert trial.user_attrs["run_dir"] == str(run_dir.relative_to(tmp_path))
        lr = space.short(trial.params["optimizer.lr"])
        assert (
            run_dir.name
            == f"{trial.number}_optimizer.lr-{lr}_scheduler-{trial.params['scheduler']}"
        )
        assert (run_dir / ".hydra" / "config.yaml").is_file()
        assert not any(tag.startswith("test/") for tag in tags(run_dir))
        hparams = dict(hparams_experiment(run_dir))
        assert hparams["optimizer.lr"] and hparams["scheduler"]  # what varies, marked so
        if trial.state == optuna.trial.TrialState.COMPLETE:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            assert "test_acc" not in metrics and trial.value == metrics["val_acc"]
    best = max(
        (t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value
    )
    summary = (search_dir / "summary.md").read_text()
    assert "| 1 | " + str(best.number) + " | " in summary
    command = shlex.split(result.stdout.split("The best trial's settings: ", 1)[1].strip())
    assert command[:4] == ["python", "scripts/train.py", "experiment=smoke", "model.widths=[8,16]"]
    assert compose_train(command[2:]).optimizer.lr == best.params["optimizer.lr"]
    rows = (search_dir / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("rank,trial,settings,state,val_acc") and len(rows) == 5

    again = run_in_process(TUNE, *SMOKE, cwd=tmp_path)
    assert again.returncode == 0 and "trial " not in again.stdout
    assert len(study_of(search_dir).get_trials()) == 4


def tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir)).Reload().Tags()["scalars"]


@pytest.mark.slow
def test_hopeless_trials_are_pruned_after_an_epoch(data_root, tmp_path):
    """A space from learning rates that cannot learn in 3 epochs to ones that can: the median
    pruner stops the hopeless ones after an epoch; their directories and the summary say so."""
    searchpath = spaces(
        tmp_path,
        prunable=(
            "search:\n  study: prunable\n  n_trials: 6\n  startup_trials: 2\n"
            "  overrides: [experiment=smoke, 'model.widths=[8,16]', trainer.max_epochs=3]\n"
            "  space:\n    optimizer.lr: {low: 1.0e-06, high: 0.2, log: true}\n"
        ),
    )
    result = run_in_process(TUNE, "hparams_search=prunable", searchpath, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    search_dir = tmp_path / "outputs" / "search" / "prunable"
    pruned = [t for t in study_of(search_dir, "prunable").get_trials() if t.state.name == "PRUNED"]
    assert pruned, result.stdout
    for trial in pruned:
        run_dir = tmp_path / trial.user_attrs["run_dir"]
        assert (run_dir / "pruned.txt").read_text().startswith("pruned after epoch ")
        assert not (run_dir / "metrics.json").exists()
        assert len(scalars(run_dir, "val/acc")) < 3
    assert f"{len(pruned)} pruned" in (search_dir / "summary.md").read_text()


@pytest.mark.slow
def test_two_objectives_give_the_pareto_front(data_root, tmp_path):
    """Validation accuracy and training seconds: no pruning, and summary.md's front is Optuna's
    own (study.best_trials)."""
    two = ["search.objectives=[val_acc,train_seconds]", "search.pruner=none", "search.n_trials=3"]
    result = run_in_process(TUNE, *SMOKE, *two, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    search_dir = tmp_path / "outputs" / "search" / "smoke"
    study = study_of(search_dir)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
    summary = (search_dir / "summary.md").read_text()
    front = summary.split("Pareto front", 1)[1]
    listed = sorted(
        int(line.split("|")[1])
        for line in front.splitlines()
        if line[:2] == "| " and line[2].isdigit()
    )
    assert listed == sorted(t.number for t in study.best_trials)


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> Path:
    """The deterministic two-trial search, run through: the weights a stopped one must reach."""
    cwd = tmp_path_factory.mktemp("whole")
    result = subprocess.run(
        [sys.executable, str(ROOT / TUNE), *EXACT], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return cwd / "outputs" / "search" / "smoke"


def start(cwd: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / TUNE), *EXACT, *overrides],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_stopped_search_continues_where_it_stopped(uninterrupted, tmp_path):
    """SIGTERM in the middle of the second trial: the search stops in one line naming the
    command that continues it; that command queues the trial again, which continues from its
    checkpoint in its own directory, and every trial ends with the uninterrupted search's
    weights."""
    process = start(tmp_path)
    wait_for_checkpoint(tmp_path, process, step=3, pattern="outputs/search/smoke/1_*")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped: SIGTERM at step ")
    again = subprocess.run(
        continue_command(stderr), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "trial 1 was interrupted: queued again" in again.stdout
    assert "Resuming " in again.stdout
    search_dir = tmp_path / "outputs" / "search" / "smoke"
    assert [d.name for d in trial_dirs(search_dir)] == [d.name for d in trial_dirs(uninterrupted)]
    for mine, theirs in zip(trial_dirs(search_dir), trial_dirs(uninterrupted), strict=True):
        assert same_weights(mine, theirs), mine.name
    assert "interrupted (queued again)" in (search_dir / "summary.md").read_text()


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_from_its_checkpoint(uninterrupted, tmp_path):
    """SIGKILL in the middle of the second trial: no signal handler runs, the trial stays
    "running" in the study. Its heartbeats stop; the next worker, once the grace period has
    passed, fails it, queues it again (Optuna's RetryHeartbeatStaleTrialCallback) and continues
    it from its checkpoint in its own directory: the uninterrupted search's weights."""
    fast_heartbeat = ["search.heartbeat=1", "search.grace=3"]
    process = start(tmp_path, *fast_heartbeat)
    wait_for_checkpoint(tmp_path, process, step=3, pattern="outputs/search/smoke/1_*")
    process.kill()
    process.communicate(timeout=60)
    time.sleep(4)  # the grace period
    worker = start(tmp_path, *fast_heartbeat)
    stdout, stderr = worker.communicate(timeout=300)
    assert worker.returncode == 0, stderr
    search_dir = tmp_path / "outputs" / "search" / "smoke"
    trials = {t.number: t for t in study_of(search_dir).get_trials()}
    assert trials[1].state.name == "FAIL" and trials[2].state.name == "COMPLETE"
    assert trials[2].system_attrs["failed_trial"] == 1
    assert trials[2].user_attrs["run_dir"] == trials[1].user_attrs["run_dir"]
    assert "Resuming " in stdout
    for mine, theirs in zip(trial_dirs(search_dir), trial_dirs(uninterrupted), strict=True):
        assert same_weights(mine, theirs), mine.name


@pytest.mark.slow
def test_workers_launched_by_hydra_share_the_study(data_root, tmp_path):
    """-m search.worker=range(2) with submitit's local launcher: two worker processes at once on
    the study's SQLite file; each trial runs once, and no two with the same settings (the first
    ones are queued once, the workers' samplers are seeded apart)."""
    result = run_in_process(
        TUNE, "-m", *SMOKE, "search.worker=range(2)", "hydra/launcher=submitit_local", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    search_dir = tmp_path / "outputs" / "search" / "smoke"
    trials = study_of(search_dir).get_trials()
    assert 4 <= len(trials) <= 5  # a worker stops once the study has 4: the other may finish one
    settings = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(settings)) == len(settings)
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)
    assert sorted(p.name for p in (search_dir / "workers").iterdir()) == ["0", "1"]
    assert f"{len(trials)} trials: " in (search_dir / "summary.md").read_text()


# --------------------------------------------------------------------------------------------
# Several workers on a real PostgreSQL server
# --------------------------------------------------------------------------------------------

PASSWORD = "fmnist-test"


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of this module's own, in a temporary directory, on a free port of
    127.0.0.1 with password authentication; its URL without a database. As root, it runs as
    `nobody` (the server refuses root). Skipped without Debian's postgresql package, unless
    FMNIST_REQUIRE_POSTGRES is set (CI)."""
    binaries = postgres_bin()
    if binaries is None:
        if os.environ.get("FMNIST_REQUIRE_POSTGRES"):
            pytest.fail("FMNIST_REQUIRE_POSTGRES is set but PostgreSQL is not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    home = Path(tempfile.mkdtemp(prefix="fmnist-postgres-"))
    as_user: list[str] = []
    if os.getuid() == 0:
        shutil.chown(home, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    (home / "password").write_text(PASSWORD)
    port = free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, cwd=home)

    run(
        str(binaries / "initdb"),
        "-D",
        str(home / "data"),
        "-U",
        "fmnist",
        "--auth=scram-sha-256",
        f"--pwfile={home / 'password'}",
    )
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
    run(
        str(binaries / "pg_ctl"),
        "-D",
        str(home / "data"),
        "-o",
        options,
        "-l",
        str(home / "log"),
        "-w",
        "start",
    )
    try:
        yield f"postgresql://fmnist:{PASSWORD}@127.0.0.1:{port}"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(home / "data"), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def new_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


RACE = """
import sys
from pathlib import Path
from fmnist.search.config import SearchConfig
from fmnist.search.study import open_storage
print("ready", flush=True)
sys.stdin.readline()  # go: both at the same instant
open_storage(SearchConfig(storage=sys.argv[1]), Path("."))
print("ok")
"""


def test_workers_racing_to_create_the_tables_both_get_the_storage(postgres, tmp_path):
    """Two workers opening an empty database at the same instant race to create Optuna's tables;
    without a retry one of them fails with a UniqueViolation most times (optuna/optuna#1092):
    three such starts, every worker gets its storage."""
    for round_ in range(3):
        url = new_database(postgres, f"race{round_}")
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(2)
        ]
        assert all(racer.stdout.readline() == "ready\n" for racer in racers)
        for racer in racers:
            racer.stdin.write("go\n")
            racer.stdin.flush()
        for racer in racers:
            out, err = racer.communicate(timeout=120)
            assert racer.returncode == 0 and out.strip() == "ok", err


@pytest.mark.slow
def test_two_workers_started_together_share_a_postgresql_study(data_root, postgres, tmp_path):
    """The same command started twice at once on an empty database (both race to create
    Optuna's tables): each takes the study's next trial, no trial runs twice, all are recorded,
    and each worker's summary lists them all."""
    url = new_database(postgres, "together")
    command = [sys.executable, str(ROOT / TUNE), *SMOKE, f"search.storage={url}"]
    workers = [
        subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
    ran = [
        line.split()[1]
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("trial ")
    ]
    assert len(ran) == len(set(ran)) >= 4, ran  # none twice
    study = optuna.load_study(
        study_name="smoke", storage=url.replace("postgresql://", "postgresql+psycopg://")
    )
    numbers = sorted(t.number for t in study.get_trials())
    assert numbers == list(range(len(numbers))) and len(numbers) == len(ran)
    dirs = {t.user_attrs["run_dir"] for t in study.get_trials()}
    assert len(dirs) == len(numbers) and all((tmp_path / d).is_dir() for d in dirs)
    summary = (tmp_path / "outputs" / "search" / "smoke" / "summary.md").read_text()
    assert f"{len(numbers)} trials: " in summary


@pytest.mark.slow
def test_a_study_of_another_search_or_a_wrong_password_is_one_line(data_root, postgres, tmp_path):
    url = new_database(postgres, "other")
    first = run_in_process(TUNE, *SMOKE, f"search.storage={url}", "search.n_trials=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    storage = url.replace("postgresql://", "postgresql+psycopg://")
    before = [t.number for t in optuna.load_study(study_name="smoke", storage=storage).get_trials()]
    other = run_in_process(
        TUNE,
        *SMOKE,
        f"search.storage={url}",
        "search.objectives=[val_acc,train_seconds]",
        "search.pruner=none",
        cwd=tmp_path,
    )
    assert other.returncode == 2
    assert other.stderr.startswith("error: the study 'smoke' in postgresql+psycopg://fmnist:***@")
    assert (
        "is another search (objectives ['val_acc'] there, ['val_acc', 'train_seconds'] here)"
        in other.stderr
    )
    assert "give search.study=NAME for a new study" in other.stderr
    after = [t.number for t in optuna.load_study(study_name="smoke", storage=storage).get_trials()]
    assert after == before  # nothing of the study lost
    wrong = url.replace(PASSWORD, "wrong")
    refused = run_in_process(TUNE, *SMOKE, f"search.storage={wrong}", cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "password authentication failed" in refused.stderr and "wrong" not in refused.stderr


# --------------------------------------------------------------------------------------------
# Optuna's dashboard (make dashboard), in a real browser
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("chromium")
def test_the_dashboard_shows_the_studys_trials_and_history(data_root, tmp_path, page):
    """optuna-dashboard on a search's study.db, opened in Chromium with every request to
    anywhere but the dashboard refused (and failing the test): the study, its history plot and
    its best trial render."""
    from playwright.sync_api import expect

    assert run_in_process(TUNE, *SMOKE, "search.n_trials=3", cwd=tmp_path).returncode == 0
    search_dir = tmp_path / "outputs" / "search" / "smoke"
    best = study_of(search_dir).best_trial
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dashboard = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "optuna-dashboard"),
            "--port",
            str(port),
            "--quiet",
            f"sqlite:///{search_dir / 'study.db'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    outside: list[str] = []

    def only_the_dashboard(route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    try:
        wait_until_serving(url, dashboard, tmp_path / "no-log")
        page.route("**/*", only_the_dashboard)
        page.goto(f"{url}/dashboard")
        page.get_by_text("smoke").first.click()
        expect(page.get_by_role("heading", name="History")).to_be_visible()
        expect(page.get_by_text(f"Best Trial (number={best.number})")).to_be_visible()
        expect(page.get_by_text(str(best.value)).first).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        expect(page.get_by_text("val_acc").first).to_be_visible()  # the objective's name
    finally:
        stop_server(dashboard)
    assert outside == [], "the dashboard reached beyond this machine"
