"""The code in README.md and docs/*.md is code that works.

* every ``docs/examples/*.py`` runs as a script;
* every ```` ```python ```` block of the pages runs standalone (after the ``--8<--`` snippet includes
  that mkdocs' ``pymdownx.snippets`` expands), in a fresh namespace; a block preceded by
  ``<!-- not-run: REASON -->`` is only compiled, and the reason must be given;
* in every ```` ```bash ```` / ```` ```console ```` block, each ``bnref ...`` command's arguments parse
  with that subcommand's own parser (the job itself does not run: the parse is intercepted), each
  ``python -m bnref...`` module exists, each ``pip install ".[extra]"`` names extras of pyproject.toml
  and each ``tox -e ENV`` an environment of tox.ini;
* a fence has one of the languages above, or ``text`` (program output, listings: not code).
"""
from __future__ import annotations

import argparse
import configparser
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bnref.cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))

LANGUAGES = {"python", "bash", "console", "text"}
SHELL = {"bash", "console"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"<!--\s*not-run:(?P<reason>(?:(?!-->).)*)-->\s*\Z", re.DOTALL)
INCLUDE = re.compile(r'^(?P<indent>[ \t]*)--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"[ \t]*$', re.MULTILINE)
SECTION_MARK = re.compile(r"--8<-- \[(?:start|end):[\w-]+\]")


def expand_snippets(text: str) -> str:
    """Expand ``--8<-- "path"`` and ``--8<-- "path:section"`` lines as pymdownx.snippets does (base path: the root)."""
    def include(match: re.Match) -> str:
        path = ROOT / match["path"]
        assert path.is_file(), f"snippet include of a missing file: {match['path']}"
        lines = path.read_text(encoding="utf-8").splitlines()
        if match["section"]:
            start = next((i for i, line in enumerate(lines) if f"--8<-- [start:{match['section']}]" in line), None)
            end = next((i for i, line in enumerate(lines) if f"--8<-- [end:{match['section']}]" in line), None)
            assert start is not None and end is not None and start < end, \
                f"{match['path']} has no section {match['section']!r}"
            lines = lines[start + 1:end]
        lines = [line for line in lines if not SECTION_MARK.search(line)]
        return "\n".join(match["indent"] + line if line else line for line in lines)

    return INCLUDE.sub(include, text)


def fenced_blocks(page: Path):
    """(language, code, not-run reason or None, line number) of every fenced block of the expanded page."""
    text = expand_snippets(page.read_text(encoding="utf-8"))
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        code = "\n".join(line[indent:] for line in match["body"].splitlines())
        reason = NOT_RUN.search(text[:match.start()])
        line = text.count("\n", 0, match.start()) + 1
        yield match["lang"], code, (reason["reason"].strip() if reason else None), line


def _blocks(languages):
    for page in PAGES:
        for lang, code, reason, line in fenced_blocks(page):
            if lang in languages:
                yield pytest.param(page, code, reason, line, id=f"{page.relative_to(ROOT)}:{line}")


# --------------------------------------------------------------------------- the examples and python blocks

@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_script_runs(example):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, str(example)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(("page", "code", "reason", "line"), list(_blocks({"python"})))
def test_python_block_runs(page, code, reason, line):
    compiled = compile(code, f"<{page.relative_to(ROOT)}, the block at line {line}>", "exec")
    if reason is not None:
        assert reason, f"a not-run block of {page.name} gives no reason"
        return
    exec(compiled, {"__name__": "__main__"})


def test_every_fence_has_a_known_language():
    unknown = [f"{page.relative_to(ROOT)}:{line} ```{lang}" for page in PAGES
               for lang, _, _, line in fenced_blocks(page) if lang not in LANGUAGES]
    assert not unknown, f"fences without a checked language ({sorted(LANGUAGES)}): {unknown}"


def test_not_run_marks_only_python_blocks():
    misplaced = [f"{page.relative_to(ROOT)}:{line}" for page in PAGES
                 for lang, _, reason, line in fenced_blocks(page) if reason is not None and lang != "python"]
    assert not misplaced, f"not-run marks before blocks that are never run: {misplaced}"


# --------------------------------------------------------------------------- shell blocks

class _Parsed(BaseException):
    """Raised in place of running a subcommand once its parser accepted the arguments."""


OPERATORS = {"&&", "||", "|", ";", "&", "(", ")"}


def shell_commands(code: str, lang: str):
    """Token lists of the simple commands of a shell block (a console block's ``$ `` lines only)."""
    text = code.replace("\\\n", " ")
    lines = text.splitlines()
    if lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in lexer:
            if token in OPERATORS or set(token) <= set("&|;()"):
                if command:
                    yield command
                command = []
            else:
                command.append(token)
        if command:
            yield command


def _bnref_arguments(command: list[str]):
    for i, token in enumerate(command):
        if os.path.basename(token) == "bnref":
            return command[i + 1:]
    return None


def _project_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    tox_envs = {s.removeprefix("testenv:") for s in tox.sections() if s.startswith("testenv:")} | {"py"}
    return set(project["optional-dependencies"]), tox_envs


def command_problems(command: list[str]) -> list[str]:
    """What is wrong with one shell command of the docs (empty: nothing found)."""
    extras, tox_envs = _project_names()
    line = shlex.join(command)
    problems = []
    args = _bnref_arguments(command)
    if args is not None:
        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(self, args=None, namespace=None):
            raise _Parsed(original(self, args, namespace))

        argparse.ArgumentParser.parse_args = parse_then_stop
        try:
            status = bnref.cli.main(args)
        except _Parsed:
            status = None
        except SystemExit as exc:  # argparse's exit on bad usage or --help
            status = exc.code
        finally:
            argparse.ArgumentParser.parse_args = original
        if status is not None and not (args in (["--help"], ["--version"]) and status == 0):
            problems.append(f"{line!r}: its arguments do not parse (exit {status})")
    for flag, value in zip(command, command[1:]):
        if flag == "-m" and value.split(".")[0] == "bnref" and importlib.util.find_spec(value) is None:
            problems.append(f"{line!r}: no module {value}")
        if flag == "-e" and command[0] == "tox":
            problems += [f"{line!r}: no tox env {env}" for env in value.split(",") if env not in tox_envs]
    if command[0].endswith("pip"):
        for token in command:
            extra = re.fullmatch(r"\.\[([\w,-]+)\]", token)
            if extra:
                problems += [f"{line!r}: no extra {e}" for e in extra[1].split(",") if e not in extras]
    return problems


@pytest.mark.parametrize(("page", "code", "lang"),
                         [pytest.param(p.values[0], p.values[1], lang, id=p.id)
                          for lang in sorted(SHELL) for p in _blocks({lang})])
def test_shell_commands_are_valid(page, code, lang):
    problems = [problem for command in shell_commands(code, lang) for problem in command_problems(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line", [
    "bnref mnist --preset imagenet",            # not a preset
    "bnref bench --passes --threadz 2",         # no such flag
    "bnref check",                              # TARGET missing
    "bnref selfcheck --seed x",                 # not an int
    "bnref nosuchcommand",
    "python -m bnref.no_such_module",
    'pip install -e ".[nosuchextra]"',
    "tox -e nosuchenv",
])
def test_a_wrong_command_is_reported(line):
    (command,) = shell_commands(line, "bash")
    assert command_problems(command)


def test_not_run_mark_applies_to_the_next_block_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- not-run: needs MPI -->\n```python\nraise SystemExit\n```\n\n<!-- a note -->\n"
                    "```python\nx = 1\n```\n")
    assert [reason for _, _, reason, _ in fenced_blocks(page)] == ["needs MPI", None]


def test_snippet_sections_expand_without_their_marks():
    text = expand_snippets('```python\n--8<-- "docs/examples/sync_shards.py:shards"\n```\n')
    assert "import numpy as np" in text and "forward_train_sharded" in text and "[start:" not in text


def test_shell_command_parsing_sees_chained_commands():
    code = 'python3 -m venv .venv && .venv/bin/pip install -e ".[mnist]" && .venv/bin/bnref mnist --epochs 1  # x\n'
    commands = list(shell_commands(code, "bash"))
    assert commands[-1] == [".venv/bin/bnref", "mnist", "--epochs", "1"]
    assert _bnref_arguments(commands[-1]) == ["mnist", "--epochs", "1"]
    assert list(shell_commands("$ bnref selfcheck\noutput line\n", "console")) == [["bnref", "selfcheck"]]
