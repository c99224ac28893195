"""A search's summary (summary.md, summary.csv in its directory), written from the study itself, so
every worker's trials are in it wherever they ran: the trials ranked by the objective, how many
were complete, pruned or failed, the epochs trained, the best trial's settings as a paste-ready
`scripts/train.py` command, and the Pareto front of validation accuracy against training time.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from fmnist.files import write_text_atomically
from fmnist.search.space import override


@dataclass
class Row:
    """One trial as the summary shows it."""

    trial: FrozenTrial
    settings: list[str]  # its overrides of the searched settings
    val_acc: float | None
    seconds: float | None
    epochs: int | None  # epochs it trained (a pruned trial's fewer)

    @property
    def state(self) -> str:
        if self.trial.user_attrs.get("interrupted"):
            return "interrupted (queued again)"
        if self.trial.user_attrs.get("failed"):
            return f"failed: {self.trial.user_attrs['failed']}"
        return self.trial.state.name.lower()


def rows(study: optuna.Study) -> list[Row]:
    """Every trial, best first: complete trials by validation accuracy (then time), then the
    pruned by the accuracy they had reached, then the others by number."""
    found = []
    for trial in study.get_trials(deepcopy=False):
        settings = [override(key, value) for key, value in trial.params.items()]
        metrics = trial.user_attrs.get("metrics", {})
        val = metrics.get("val_acc")
        if val is None and trial.intermediate_values:  # pruned: where it stood
            val = trial.intermediate_values[max(trial.intermediate_values)]
        found.append(
            Row(trial, settings, val, metrics.get("train_seconds"), trial.user_attrs.get("epochs"))
        )
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}
    return sorted(
        found,
        key=lambda r: (
            order.get(r.trial.state, 2),
            -(r.val_acc or 0) if r.trial.state in order else r.trial.number,
            r.seconds or 0,
        ),
    )


def pareto(ranked: list[Row]) -> list[tuple[Row, float, float]]:
    """The complete trials that no other beats on both validation accuracy and training time,
    quickest first, with those two figures."""
    points = [
        (r, r.val_acc, r.seconds)
        for r in ranked
        if r.trial.state == TrialState.COMPLETE and r.val_acc is not None and r.seconds is not None
    ]
    front = [
        (r, acc, seconds)
        for r, acc, seconds in points
        if not any(a >= acc and s <= seconds and (a, s) != (acc, seconds) for _, a, s in points)
    ]
    return sorted(front, key=lambda point: point[2])


def _value(value: float | None, digits: int) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def render_markdown(study: optuna.Study, ranked: list[Row], best_command: str | None) -> str:
    states = [r.trial.state for r in ranked]
    counts = {
        name: states.count(state)
        for name, state in (
            ("complete", TrialState.COMPLETE),
            ("pruned", TrialState.PRUNED),
            ("failed", TrialState.FAIL),
            ("running", TrialState.RUNNING),
            ("waiting", TrialState.WAITING),
        )
    }
    epochs = sum(r.epochs or 0 for r in ranked)
    lines = [
        f"# Search {study.study_name}",
        "",
        f"{len(ranked)} trials: "
        + ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        + f". Epochs trained in all: {epochs}.",
        "",
        "Objective: validation accuracy (the best epoch's; the test split was never read)"
        + (", and training seconds." if len(study.directions) > 1 else "."),
        "",
    ]
    if best_command:
        lines += [
            "The best trial's settings, to train with (and test):",
            "",
            f"    {best_command}",
            "",
        ]
    header = ["rank", "trial", "settings", "state", "val acc", "train s", "epochs", "run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, r in enumerate(ranked, start=1):
        cells = [
            str(rank),
            str(r.trial.number),
            f"`{' '.join(r.settings)}`",
            r.state.replace("|", "\\|"),
            _value(r.val_acc, 4),
            _value(r.seconds, 1),
            "" if r.epochs is None else str(r.epochs),
            r.trial.user_attrs.get("run_dir", ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    front = pareto(ranked)
    if front:
        lines += [
            "",
            "Pareto front, validation accuracy against training seconds (no other trial is both "
            "more accurate and quicker):",
            "",
            "| trial | settings | val acc | train s |",
            "|---|---|---|---|",
        ]
        for r, acc, seconds in front:
            cells = [f"`{' '.join(r.settings)}`", _value(acc, 4), _value(seconds, 1)]
            lines.append(f"| {r.trial.number} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def render_csv(ranked: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["rank", "trial", "settings", "state", "val_acc", "train_seconds", "epochs", "run_dir"]
    )
    for rank, r in enumerate(ranked, start=1):
        writer.writerow(
            [
                rank,
                r.trial.number,
                " ".join(r.settings),
                r.state,
                r.val_acc,
                r.seconds,
                r.epochs,
                r.trial.user_attrs.get("run_dir", ""),
            ]
        )
    return out.getvalue()


def write(study: optuna.Study, search_dir: Path, base: list[str]) -> tuple[Path, str | None]:
    """summary.md and summary.csv in `search_dir`; summary.md's path and the best trial's
    command (None before a trial completes)."""
    ranked = rows(study)
    best = next((r for r in ranked if r.trial.state == TrialState.COMPLETE), None)
    command = None
    if best is not None:
        command = shlex.join(["python", "scripts/train.py", *base, *best.settings])
    write_text_atomically(search_dir / "summary.csv", render_csv(ranked))
    write_text_atomically(search_dir / "summary.md", render_markdown(study, ranked, command))
    return search_dir / "summary.md", command
