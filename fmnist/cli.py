"""How every script runs its Hydra main: Hydra's own errors as one line, like fmnist's.

Hydra composes the config before any of our code runs, and prints what goes wrong there in
several lines (an unknown key, an unknown option, an override it cannot parse). `run` lets
Hydra raise instead (HYDRA_FULL_ERROR) and prints that mistake as one `error: ...` line naming
the fix: the keys a section has, the options a group has. Anything else is raised as it is.

It also registers `${fmnist.options:GROUP}`, the options of a config group, for the scripts'
`--help` texts (configs/*.yaml, `hydra.help.template`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import is_dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from fmnist import runs
from fmnist.config import CONFIGS, OPTIONS, unknown_key
from fmnist.errors import EXIT_USER_ERROR


def options(group: str) -> str:
    """A config group's options: its dataclasses (fmnist.config), else its files in configs/."""
    names = OPTIONS.get(group) or sorted(path.stem for path in (CONFIGS / group).glob("*.yaml"))
    return ", ".join(names)


if not OmegaConf.has_resolver("fmnist.options"):
    OmegaConf.register_new_resolver("fmnist.options", options)


def run(main: Callable[[], object]) -> None:
    """Call a script's `@hydra.main` function; a mistake on its command line is one line."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises, instead of printing several lines
    try:
        main()
    except (ConfigCompositionException, OverrideParseException) as e:
        runs.put_back_all()  # a sweep's directory, made before Hydra composed its jobs
        print(f"error: {command_line_error(e, sys.argv[1:])}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        if before is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def command_line_error(error: Exception, arguments: list[str]) -> str:
    """Hydra's error about the command line, as one line naming the fix."""
    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options is not None:
        found = re.search(r"Could not find '([^']+)/([^']+)'", str(error))
        if found:
            group, name = found.groups()
            return (
                f"{group}={name} is not an option of {group}: choose one of "
                f"{', '.join(error.options)}"
            )
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and is_dataclass(cause.object_type):
        return str(unknown_key(str(cause.full_key), cause.object_type))
    not_a_group = re.search(r"Could not override '([^']+)'. No match in the defaults", str(error))
    if not_a_group:  # `model=linear` to a script without a model group
        key, script = not_a_group[1], _script()
        given = next((item for item in arguments if item.lstrip("+~").startswith(key)), key)
        return (
            f"{key} is not a setting of {script}: leave out {given} "
            f"(`python {script} --help` lists its settings)"
        )
    if isinstance(cause, ValidationError):
        given = re.search(r"override (\S+)", str(error))
        setting = given.group(1) if given else cause.full_key
        return f"{setting} is invalid: {str(cause).splitlines()[0]}"
    if isinstance(error, OverrideParseException):
        bad = next((item for item in arguments if not _parses(item)), None)
        reason = str(error).splitlines()[0]
        return (
            f"cannot read {bad!r}: {reason} (a value with =, a comma, brackets or spaces needs "
            """quotes: 'key="value"')"""
            if bad
            else f"cannot read the command line: {reason}"
        )
    return " ".join(str(error).split())


def _script() -> str:
    """The script being run, as the user would type it (scripts/app.py)."""
    path = Path(sys.argv[0])
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _parses(argument: str) -> bool:
    if argument.startswith("-"):
        return True
    try:
        OverridesParser.create().parse_overrides([argument])
    except OverrideParseException:
        return False
    return True
