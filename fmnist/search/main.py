"""`python scripts/tune.py hparams_search=NAME [training overrides] [search.key=value]`: check the
search, open its study, run trials until the study has `search.n_trials`, write the summary.

Start the same command again, or at the same time in other processes or on other machines
sharing `search.storage`, and each worker takes the study's next trial; a stopped search goes on
where it stopped. Everything is checked before the first trial: the space's every end and choice
composes into a valid training config, the study (if it exists) is this search, and the storage
can be reached; a mistake is one line, and a failed start leaves nothing behind.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from fmnist import runs
from fmnist.cli import command_line_error, options
from fmnist.config import compose_train
from fmnist.errors import SettingsError, UserError, reports_user_errors
from fmnist.search import space, study, summary
from fmnist.search.config import SearchConfig, validate_tune
from fmnist.search.trials import NOT_TESTED, Objective
from fmnist.sweeps import key_of, sweep_overrides

log = logging.getLogger("fmnist")


@reports_user_errors
def main(cfg: DictConfig) -> None:
    """Search; print and write the summary (also when stopped)."""
    hydra = HydraConfig.get()
    multirun = hydra.mode == RunMode.MULTIRUN
    search_dir = Path(hydra.sweep.dir if multirun else hydra.run.dir)
    with runs.removed_if_unused(runs.output_dir()):
        settings = validate_tune(cfg).search
        if not settings.space:
            raise UserError(f"choose a search: hparams_search=NAME ({options('hparams_search')})")
        dimensions = space.read(settings.space)
        base = base_overrides(settings, list(hydra.overrides.task), dimensions)
        max_epochs = check_trials(base, dimensions)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # fmnist prints each trial's line
        storage = study.open_storage(settings, search_dir)
        definition = {  # what makes it this search (not how it is started or shown)
            "space": settings.space,
            "objectives": settings.objectives,
            "base": sweep_overrides(base),
        }
        found = study.open_study(storage, settings, definition, dimensions, max_epochs)
    for number in study.requeue_interrupted(found):
        print(f"trial {number} was interrupted: queued again, to continue from its checkpoint")
    objective = Objective(
        search_dir,
        dimensions,
        base,
        settings.objectives,
        prunes=len(settings.objectives) == 1 and settings.pruner != "none",
        continue_command=shlex.join(["python", sys.argv[0], *hydra.overrides.task]),
    )
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    try:
        remaining = settings.n_trials - study.done(found)
        if remaining > 0:  # each worker stops once the study has n_trials (or it ran as many)
            found.optimize(
                objective,
                n_trials=remaining,
                callbacks=[optuna.study.MaxTrialsCallback(settings.n_trials, states=counted)],
                catch=(SettingsError,),
            )
    finally:
        path, best = summary.write(found, search_dir, base)
        print(f"Search summary: {path}" + (f"\nThe best trial's settings: {best}" if best else ""))


def base_overrides(
    settings: SearchConfig, task: list[str], dimensions: list[space.Dimension]
) -> list[str]:
    """The training overrides every trial starts from: the space's own, then the command line's
    (which replace the space's for the same setting). A setting both given and searched is
    refused: the search would overrule it."""
    searched = {d.key for d in dimensions}
    given = [
        item
        for item in task
        if not key_of(item).startswith(("search.", "hydra.")) and key_of(item) != "hparams_search"
    ]
    for item in given:
        if key_of(item) in searched:
            raise UserError(
                f"{item}: {key_of(item)} is searched by this hparams_search (search.space): leave "
                "it out, or choose a search that does not vary it"
            )
    mine = {key_of(item) for item in given}
    return [item for item in settings.overrides if key_of(item) not in mine] + given


def check_trials(base: list[str], dimensions: list[space.Dimension]) -> int:
    """Every end of every range and every choice must make a valid training config, with a
    validation split to judge it on; the most epochs a trial may train."""
    epochs = 0
    for dimension in dimensions:
        for value in dimension.ends():
            chosen = space.override(dimension.key, value)
            try:
                cfg = compose_train([*base, chosen, NOT_TESTED])
            except HydraException as e:
                raise UserError(f"search.space: {command_line_error(e, [chosen])}") from None
            except UserError as e:
                raise UserError(f"search.space: {e}") from None
            if not cfg.data.val_size:
                raise UserError(
                    "a search judges its trials on the validation split, and this config has "
                    "none (data.val_size=0): give data.val_size=5000"
                )
            epochs = max(epochs, cfg.trainer.max_epochs)
    return epochs
