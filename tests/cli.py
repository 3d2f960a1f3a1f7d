"""Running the `llmirc` command in-process, and the one-line error contract every command keeps."""

from __future__ import annotations

from click.testing import CliRunner, Result

from llmirc.cli import main


def run_cli(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="llmirc")


def assert_one_error(res: Result, *needles: str) -> None:
    """Exit code 1 and exactly one stderr line, `error: ...`, containing every needle."""
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
