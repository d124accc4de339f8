"""The README's examples are true: every `taskvec` command line in it parses, and every example block
not marked otherwise runs as written, in order, in a fresh directory (the integration test).

A block is skipped only when the line before it says why: ``<!-- readme-test: skip (reason) -->``
(installs, GPUs, SLURM, the hub, full-size runs that the CI's time cannot hold).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskvec import cli

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
    r"(?:<!--\s*readme-test:\s*(?P<directive>[^\n]*?)\s*-->\s*\n)?^```(?P<lang>bash|python)\n(?P<code>.*?)^```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Example:
    line: int
    lang: str
    code: str
    skip: str | None  # the reason, when the README says the block is not run

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def examples() -> list[Example]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        directive = (match.group("directive") or "").strip()
        skip = None
        if directive:
            assert directive.startswith("skip"), f"unknown readme-test directive {directive!r}"
            skip = directive.removeprefix("skip").strip(" ():—-")
        line = text.count("\n", 0, match.start("code"))
        found.append(Example(line, match.group("lang"), match.group("code"), skip))
    return found


def taskvec_command_lines(code: str) -> list[list[str]]:
    """argv of each `taskvec ...` command in a shell block (after `&&` too), comments and continuations removed."""
    joined = code.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        for part in re.split(r"&&|;", line):
            words = shlex.split(part, comments=True)
            if words and words[0] == "taskvec":
                commands.append(words[1:])
    return commands


def test_readme_has_examples_and_every_skip_says_why():
    found = examples()
    assert len([e for e in found if e.skip is None]) >= 5, "the README should have runnable examples"
    for example in found:
        assert example.skip is None or len(example.skip) >= 5, f"{example}: a skipped block must say why"


@pytest.mark.parametrize("example", [e for e in examples() if e.lang == "bash"], ids=str)
def test_every_taskvec_command_in_the_readme_parses(example, monkeypatch):
    """Option names and values that argparse checks are right, in run and skipped blocks alike."""
    ran: list[str] = []
    modules = cli._command_modules()
    for module in modules:
        monkeypatch.setattr(module, "run", lambda args, name=module.NAME: ran.append(name))
    monkeypatch.setattr(cli, "configure_threads", lambda value: 1)
    for argv in taskvec_command_lines(example.code):
        assert cli.main(argv) == 0, f"{example}: `taskvec {' '.join(argv)}` does not parse"
    assert len(ran) == len(taskvec_command_lines(example.code))


@pytest.mark.integration
def test_readme_examples_run_as_written(tmp_path):
    """Every runnable block, in README order, in one fresh directory, as a new user would paste them."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("TASKVEC_THREADS", "auto")
    for example in examples():
        if example.skip is not None:
            continue
        if example.lang == "bash":
            argv = ["bash", "-euo", "pipefail", "-c", example.code]
        else:
            argv = [sys.executable, "-c", example.code]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        output = f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        assert done.returncode == 0, f"{example} failed:\n{example.code}\n{output}"


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = next(e.code.strip() for e in examples() if "pytest" in e.code and "pip install" in e.code)
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines(), "the README's test command and .ci/run differ"
    assert "-c constraints.txt" in test_command
