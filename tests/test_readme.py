"""The README's two set-up commands: CI runs exactly command 2, and command 1 uses only
options `llmirc` has and the default -O level in the first usage line."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Set-up: two commands"):]
    one = re.search(r"^# 1\..*\n(.+)$", block, re.M).group(1)
    two = re.search(r"^# 2\..*\n(.+)$", block, re.M).group(1)
    return one, two


def test_ci_runs_exactly_readme_command_2():
    _, two = readme_commands()
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[-1] == two
    assert "-rs" in two.split("pytest -q", 1)[1].split("&&")[0]  # skip reasons in the default output


def test_readme_command_1_runs_llmirc_run_after_the_prompt_with_real_options():
    from tests.cli import run_cli

    one, _ = readme_commands()
    run = one.split("llmirc run ", 1)[1].split()
    help_text = run_cli("run", "--help").output
    for opt in (a for a in run if a.startswith("--")):
        assert opt in help_text, opt
    assert "--repetition-penalty" in run


def test_first_usage_line_uses_the_default_level():
    text = (ROOT / "README.md").read_text()
    usage = text[text.index("## Usage"):].splitlines()
    first = next(ln for ln in usage if ln.startswith("llmirc compile"))
    assert " -O" not in first.split("#")[0]
