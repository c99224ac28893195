"""The settings a search varies (`search.space` in configs/hparams_search/<name>.yaml), each a
range or a list of choices, as Optuna samples them and as training overrides.

A setting is any key of the training config (`optimizer.lr`, `model.widths`) or a config group
(`scheduler`, `model`): its values become overrides (`optimizer.lr=0.0412`, `scheduler=constant`),
so a trial is composed exactly as `scripts/train.py` would compose that command line.

    optimizer.lr: {low: 0.02, high: 0.5, log: true}   a float, sampled on a log scale
    trainer.max_epochs: {low: 2, high: 6}             an integer (both ends whole numbers)
    data.batch_size: {choices: [64, 128, 256]}        one of these
    model.widths: {choices: ["[16,64,128]", "[32,64,128]"]}   a list, written as its override
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import optuna

from fmnist.errors import UserError

Value = bool | int | float | str


@dataclass(frozen=True)
class Dimension:
    """One setting searched: a range (`low`..`high`, maybe on a log scale, maybe in steps) or a
    list of choices."""

    key: str
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple[Value, ...] | None = None

    @property
    def whole(self) -> bool:
        """Whether the range is of integers (both of its ends are)."""
        return isinstance(self.low, int) and isinstance(self.high, int)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The values this setting may take, as Optuna describes them."""
        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        assert self.low is not None and self.high is not None  # `read` makes sure
        if self.whole:
            step = int(self.step or 1)
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=step
            )
        return optuna.distributions.FloatDistribution(
            self.low, self.high, log=self.log, step=self.step
        )

    def suggest(self, trial: optuna.Trial) -> Value:
        """This setting's value for `trial` (Optuna's sampler chooses it, or it was queued)."""
        if self.choices is not None:
            return cast(Value, trial.suggest_categorical(self.key, list(self.choices)))
        assert self.low is not None and self.high is not None  # `read` makes sure
        if self.whole:
            step = int(self.step or 1)
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=step, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def ends(self) -> tuple[Value, ...]:
        """The range's two ends, or every choice: what a check of the space composes."""
        if self.choices is not None:
            return self.choices
        assert self.low is not None and self.high is not None  # `read` makes sure
        return (self.low, self.high)


def override(key: str, value: Value) -> str:
    """`optimizer.lr=0.0412`: a setting and its value as a training override."""
    shown = (
        str(value).lower()
        if isinstance(value, bool)
        else repr(value)
        if isinstance(value, float)
        else str(value)
    )
    return f"{key}={shown}"


def short(value: Value) -> str:
    """A value as a run directory's name shows it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


FIELDS = {"low", "high", "log", "step", "choices"}


def read(space: dict[str, Any]) -> list[Dimension]:
    """The space as dimensions, in the order written; a mistake is one line naming the setting
    and the fix."""
    return [_dimension(str(key), spec) for key, spec in space.items()]


def _dimension(key: str, spec: Any) -> Dimension:
    where = f"search.space.{key}"
    if not isinstance(spec, dict) or not spec or set(spec) - FIELDS:
        raise UserError(
            f"{where}: give a range {{low: L, high: H}} (with log: true or step: S if wanted) or "
            f"{{choices: [a, b]}}, got {spec!r}"
        )
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list, alone, got {spec!r}")
        if not all(isinstance(c, Value) for c in choices) or len(set(choices)) < len(choices):
            raise UserError(
                f"{where}: each choice must be a number, a word or a list written in quotes "
                f'("[16,64,128]"), once; got {choices!r}'
            )
        return Dimension(key, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    log, step = spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if low is None or high is None or not all(_number(v) for v in numbers):
        raise UserError(f"{where}: a range needs numbers low and high, got {spec!r}")
    if not low < high:
        raise UserError(f"{where}: the range {low}..{high} is empty: give low below high")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise UserError(
            f"{where}: a log range must stay above zero, got low={low}: give low > 0 (or "
            "log: false)"
        )
    if step is not None and (step <= 0 or log):
        raise UserError(f"{where}: step must be > 0, and cannot go with log: true")
    if isinstance(low, int) != isinstance(high, int):
        low, high = float(low), float(high)  # a float range with a whole end
    return Dimension(key, low, high, log, step)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
