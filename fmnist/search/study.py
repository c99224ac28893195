"""The study: where Optuna keeps it (its storage), how it samples and prunes, and which search it
is, so that a worker joins only the study it belongs to.

The storage is an RDB storage with heartbeats: a worker records one for its running trial every
`search.heartbeat` seconds, and a trial whose heartbeats stopped for `search.grace` seconds (its
worker was killed, its machine lost) is failed by the next worker that starts a trial and
queued again with the same settings (Optuna's RetryHeartbeatStaleTrialCallback): fmnist.search.
trials then continues it from its last checkpoint. A trial interrupted by a stop signal saved
its checkpoint and failed at once; `requeue_interrupted` queues it again the same way, so the
same command continues a stopped search where it stopped.
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from fmnist.errors import UserError
from fmnist.search.config import SearchConfig
from fmnist.search.space import Dimension

with warnings.catch_warnings():  # "experimental" to Optuna
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
SCHEMA_ATTEMPTS = 5  # workers starting together on an empty database race to create its tables


def storage_url(search: SearchConfig, search_dir: Path) -> str:
    """`search.storage`, or SQLite in the search's directory. postgresql:// without a driver
    is given psycopg's (version 3, the `tune` extra's), as SQLAlchemy would otherwise look for
    psycopg2."""
    url = search.storage or f"sqlite:///{(search_dir / 'study.db').resolve()}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def shown(url: str) -> str:
    """A storage URL as it may be printed: its password as ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: nothing in it to hide
        return url


def open_storage(search: SearchConfig, search_dir: Path) -> RDBStorage:
    """The storage, with heartbeats and the retry of stale trials; one line if it cannot be
    reached. Creating its tables is retried: workers started at the same moment on an empty
    PostgreSQL database race there (one gets a unique-key error; optuna/optuna#1092)."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    url = storage_url(search, search_dir)
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" to Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=_engine_options(url),
                    heartbeat_interval=search.heartbeat,
                    grace_period=search.grace,
                    heartbeat_stale_trial_callback=RETRY,
                )
        except (IntegrityError, ProgrammingError):  # another worker created them meanwhile
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.2, 1.0))
        except OperationalError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e).splitlines()[0]
            raise UserError(
                f"search.storage: cannot use {shown(url)} ({reason}): check the host, port, "
                "user, password and database name, and that the server is running"
            ) from None
        except ModuleNotFoundError as e:
            raise UserError(
                f"search.storage: {shown(url)} needs the Python package {e.name}: "
                "pip install -e '.[tune]'"
            ) from None
    raise AssertionError("unreachable")


def _engine_options(url: str) -> dict[str, Any]:
    """SQLite: wait for another worker's write instead of failing at once."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    """TPE (each setting on its own, `constant_liar` so that workers running at once spread out;
    not `multivariate` with it: optuna/optuna#6626), or random. Seeded by `search.seed` and the
    worker's label, so that workers started together draw differently (and differently from the
    queued first trials, `startup_settings`)."""
    seed = int(np.random.SeedSequence([search.seed, search.worker, 1]).generate_state(1)[0])
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            n_startup_trials=search.startup_trials, seed=seed, constant_liar=True
        )


def startup_settings(dimensions: list[Dimension], search: SearchConfig) -> list[dict[str, Any]]:
    """The first `startup_trials` trials' settings, drawn at random (seeded by `search.seed`
    alone) by whoever creates the study, and queued in it: every worker takes the next, so no two
    run the same, and a search gets the same ones however many workers run it."""
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=search.seed))
    distributions = {d.key: d.distribution() for d in dimensions}
    return [scratch.ask(distributions).params for _ in range(search.startup_trials)]


def pruner(search: SearchConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """A trial reports its validation accuracy after every epoch. median: stop it when that is
    below the median of the trials' at the same epoch (after `startup_trials` trials and its
    first epoch); hyperband: Optuna's successive halving over 1..max_epochs epochs."""
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=1)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    return optuna.pruners.NopPruner()


def open_study(
    storage: RDBStorage,
    search: SearchConfig,
    definition: dict[str, Any],
    dimensions: list[Dimension],
    max_epochs: int,
) -> optuna.Study:
    """The study named `search.study`: created (its first trials queued: `startup_settings`), or
    joined when it is the same search (its space, objectives and training overrides, as
    `definition` says); another search of that name is one line, and the study is left as it
    was. Exactly one of the workers that start together creates it (the storage's unique name)."""
    options: dict[str, Any] = {
        "storage": storage,
        "study_name": search.study,
        "sampler": sampler(search),
        "pruner": pruner(search, max_epochs),
    }
    try:
        directions = cast(list[Literal["minimize", "maximize"]], search.directions)
        study = optuna.create_study(**options, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**options)
    else:
        study.set_user_attr("search", definition)
        with warnings.catch_warnings():  # the dashboard names the objectives by these
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(search.objectives)
        for settings in startup_settings(dimensions, search):
            study.enqueue_trial(settings)
        return study
    stored = study.user_attrs.get("search")
    if stored is not None and stored != definition:  # None: its creator is setting it now
        differences = [
            f"{key} {stored.get(key)!r} there, {definition.get(key)!r} here"
            for key in sorted(definition.keys() | stored.keys())
            if stored.get(key) != definition.get(key)
        ]
        raise UserError(
            f"the study {search.study!r} in {shown(storage.url)} is another search "
            f"({'; '.join(differences)}): give search.study=NAME for a new study, or the same "
            "settings to continue it"
        )
    return study


def done(study: optuna.Study) -> int:
    """Trials that count towards `search.n_trials`: complete or pruned."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue again, with the same settings, every trial that a stop signal interrupted and no
    trial has retried yet (as Optuna queues a heartbeat-stale one); their numbers."""
    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {n for t in trials for n in RETRY.retry_history(t)}
    requeued = []
    for trial in trials:
        interrupted = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
        if interrupted and trial.number not in retried:
            RETRY(study, trial)
            requeued.append(trial.number)
    return requeued


def original(trial: FrozenTrial) -> int | None:
    """The number of the trial `trial` retries (the first of its series), if it is a retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RETRY.retried_trial_number(trial)
