"""The README and docs/: every relative link leads somewhere, the README stays a front page, every
command they show parses, and they read as reference, not as a history."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, run_in_process
from hydra.core.override_parser.overrides_parser import OverridesParser

DOCS = sorted((ROOT / "docs").glob("*.md"))
# The front page, its Simplified Chinese edition, and the reference
PAGES = [ROOT / "README.md", ROOT / "README.zh.md", *DOCS]
# Chinese characters (CJK Unified Ideographs)
CJK = re.compile(r"[\u4e00-\u9fff]")
# [text](target) and ![alt](target), outside code: the target up to a space or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no {resolved.relative_to(ROOT.resolve())})")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment})")
    assert not broken, f"{page.name}: " + ", ".join(broken)


def test_the_checker_finds_a_broken_link(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n[ok](#a-page) [bad](missing.md) `[code](no.md)` [web](https://x.y)\n"
    )
    assert relative_links(page) == ["#a-page", "missing.md"]
    assert anchors(page) == {"a-page"}


def test_the_readme_is_a_front_page_and_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = {Path(t.partition("#")[0]).name for t in relative_links(ROOT / "README.md")}
    assert {p.name for p in DOCS} <= linked


def test_the_chinese_readme_is_a_front_page_linked_both_ways():
    readme, chinese = ROOT / "README.md", ROOT / "README.zh.md"
    assert "README.zh.md" in relative_links(readme)
    assert "README.md" in relative_links(chinese)
    text = chinese.read_text()
    assert len(text.splitlines()) <= 120
    assert "0.9185" in text and "2.4361" in text  # the two worked examples
    assert len(CJK.findall(text)) >= 200


# --------------------------------------------------------------------------------------------
# Every command a page shows parses: its settings exist, its values have the right types
# --------------------------------------------------------------------------------------------

# A fenced block: its language, its lines. One of SHELL holds shell commands (a block of Python,
# YAML or program output does not: mark output ```text).
BLOCK = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = ("", "bash", "sh", "shell", "console")
# A line that may run one of the project's commands: python (or .venv/bin/python) or torchrun
RUNS_PYTHON = re.compile(r"^(\S*/)?(python3?|torchrun)\s")
SCRIPT = re.compile(r"^(\S*/)?scripts/(\w+)\.py$")
# The pages' placeholders, replaced by a harmless value of the same kind before a command is
# parsed (Hydra's override grammar refuses `<` and `>`): a run's or a sweep's time-stamped
# directory name and a sweep's job. RUN, DIR, HOST and the like are plain words already.
PLACEHOLDERS = {"<time>": "2026-01-01_00-00-00", "<job>": "0_loss-scratch"}
# Options that make a Hydra script print and exit instead of running: a command with one of
# them is parsed as it is, any other gets `--cfg job` (compose the config and print it).
PRINTS_ONLY = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i")


@dataclass(frozen=True)
class Command:
    page: str  # README.md, docs/runs.md
    line: int  # where the command starts
    shown: str  # as the page shows it: continuation lines joined, placeholders replaced
    program: str  # scripts/train.py, or fmnist.data for `python -m fmnist.data`
    args: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line} {Path(self.program).name}"


def shown_commands(page: Path) -> list[Command]:
    """The commands in `page`'s shell blocks that run a script of this project
    (`python scripts/NAME.py ...`, `torchrun ... scripts/train.py ...`) or one of its modules
    (`python -m fmnist.NAME ...`), placeholders replaced. Continuation lines (a `\\` at the end)
    are joined and `# comments` dropped; shell-only lines (cd, make, pip, export, ...) are not
    commands of the project and are skipped."""
    text = page.read_text()
    name = str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name
    commands = []
    for block in BLOCK.finditer(text):
        if block.group(1) not in SHELL:
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        lines = block.group(2).splitlines()
        i = 0
        while i < len(lines):
            start, joined = i, lines[i]
            while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            if not RUNS_PYTHON.match(joined.strip()):
                continue
            for placeholder, value in PLACEHOLDERS.items():
                joined = joined.replace(placeholder, value)
            words = shlex.split(joined, comments=True)
            shown = shlex.join(words)
            scripts = [k for k, word in enumerate(words) if SCRIPT.match(word)]
            if scripts:
                k = scripts[0]
                program = "scripts/" + Path(words[k]).name
                commands.append(Command(name, first + start, shown, program, tuple(words[k + 1 :])))
            elif len(words) > 2 and words[1] == "-m" and words[2].startswith("fmnist."):
                commands.append(Command(name, first + start, shown, words[2], tuple(words[3:])))
    return commands


def first_of_each_sweep(args: tuple[str, ...]) -> list[str]:
    """A sweep's command line as one of its jobs: Hydra cannot print a sweep's job config
    (`--cfg` and `-m` exclude each other), so `-m` goes and each swept setting keeps its first
    value (`loss=scratch,torch` -> `loss=scratch`); a list value (`[a,b]`) is no sweep."""
    parser = OverridesParser.create()
    kept = []
    for arg in args:
        if arg in ("-m", "--multirun"):
            continue
        if not arg.startswith("-"):
            try:
                override = parser.parse_overrides([arg])[0]
            except Exception:  # the script names what it cannot read
                kept.append(arg)
                continue
            if override.is_sweep_override():
                arg = f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
        kept.append(arg)
    return kept


class _Parsed(BaseException):
    """Raised by a module's argparse parser once it has read its arguments: stop there."""


def parse(command: Command, monkeypatch: pytest.MonkeyPatch, capsys) -> str | None:
    """Parse `command` by the program itself without running it; None, or its error line."""
    if command.program.startswith("scripts/"):
        args = first_of_each_sweep(command.args)
        if not set(args) & set(PRINTS_ONLY):
            args += ["--cfg", "job"]  # compose and print the config: nothing trains or serves
        ran = run_in_process(command.program, *args)
        if ran.returncode == 0:
            return None
        said = [line for line in (ran.stderr + ran.stdout).splitlines() if line.strip()]
        return said[-1] if said else f"exit status {ran.returncode}"
    module = importlib.import_module(command.program)
    if not hasattr(module, "main"):
        return f"{command.program} is not a command (it has no main)"
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        parse_args(self, args, namespace)  # a mistake: usage, the error, exit status 2
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    capsys.readouterr()
    try:
        module.main(list(command.args))
    except _Parsed:
        return None
    except SystemExit as e:
        if not e.code:
            return None  # --help
        said = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        return said[-1] if said else f"exit status {e.code}"
    finally:
        monkeypatch.undo()
    return f"{command.program} ran without parsing its arguments with argparse"


COMMANDS = [command for page in PAGES for command in shown_commands(page)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.id)
def test_every_command_shown_parses(command: Command, monkeypatch, capsys):
    error = parse(command, monkeypatch, capsys)
    assert error is None, f"{command.page}:{command.line}: `{command.shown}`: {error}"


def test_the_checker_finds_a_setting_that_does_not_exist(tmp_path: Path, monkeypatch, capsys):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```bash\ncd somewhere   # a shell line\nmake test\n"
        "python scripts/train.py optimizer.lrr=0.1   # a misspelt key\n"
        "python scripts/evaluate.py ckpt_path=outputs/runs/<time> \\\n    split=val\n"
        "torchrun --standalone --nproc_per_node=2 scripts/train.py -m loss=scratch,torch seed=0,1\n"
        "python scripts/train.py model=resnet\n"
        "python -m fmnist.data --source-dir DIR\n"
        "python -m fmnist.data --sourcedir DIR\n```\n\n"
        "```text\npython scripts/train.py this is output, not a command\n```\n"
        "```python\nprint('not a command')\n```\n"
    )
    commands = shown_commands(page)
    assert [(c.line, c.program, c.args) for c in commands] == [
        (6, "scripts/train.py", ("optimizer.lrr=0.1",)),
        (7, "scripts/evaluate.py", ("ckpt_path=outputs/runs/2026-01-01_00-00-00", "split=val")),
        (9, "scripts/train.py", ("-m", "loss=scratch,torch", "seed=0,1")),
        (10, "scripts/train.py", ("model=resnet",)),
        (11, "fmnist.data", ("--source-dir", "DIR")),
        (12, "fmnist.data", ("--sourcedir", "DIR")),
    ]
    assert first_of_each_sweep(commands[2].args) == ["loss=scratch", "seed=0"]
    errors = [parse(command, monkeypatch, capsys) for command in commands]
    assert "optimizer.lrr is not a setting" in errors[0]
    assert errors[1:3] == [None, None]
    assert "model=resnet is not an option of model" in errors[3]
    assert errors[4] is None
    assert "unrecognized arguments: --sourcedir" in errors[5]


# --------------------------------------------------------------------------------------------
# Reference, not a history
# --------------------------------------------------------------------------------------------

# Words that tell the story of the project's development instead of what is: issue numbers,
# working sessions and rounds, and CPU family numbers (name the CPU by what it has instead:
# "an AMD EPYC with AVX-512-BF16").
HISTORY = re.compile(
    r"\bissues? #?\d+|\bthis round\b|\bearlier rounds?\b|\bthis session\b|\bearlier sessions?\b"
    r"|\blast session\b|\bprevious sessions?\b|\bfamily \d+",
    re.IGNORECASE,
)


def history_terms(page: Path) -> list[str]:
    """`line: term` for each history term in `page`, outside its fenced code."""
    text = FENCE.sub(lambda m: "\n" * m.group().count("\n"), page.read_text())
    return [
        f"{number}: {found.group()!r}"
        for number, line in enumerate(text.splitlines(), start=1)
        for found in HISTORY.finditer(line)
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pages_state_what_is_not_how_it_came_about(page: Path):
    found = history_terms(page)
    assert not found, f"{page.relative_to(ROOT)} reads as a history: " + ", ".join(found)


def test_the_checker_finds_history_terms(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\nIssue 26's disguise, issue #3, and issues 3 and 4.\n"
        "Measured this round, as in an earlier session (and the last session),\n"
        "on an AMD EPYC of family 25 model 17.\n"
        "```bash\ngit log --grep 'issue 26'   # code is not prose\n```\n"
        "An issue of the magazine, the tissue 26 times, a family of models: all fine.\n"
    )
    assert history_terms(page) == [
        "2: 'Issue 26'",
        "2: 'issue #3'",
        "2: 'issues 3'",
        "3: 'this round'",
        "3: 'earlier session'",
        "3: 'last session'",
        "4: 'family 25'",
    ]
