"""Errors before work, in one format: a bad output path is refused before the import (no stage
line printed), and option values click rejects end in one `error:` line with exit 1 too."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from llmirc.errors import LlmircError
from llmirc.runtime.sampling import SamplingParams
from tests.cli import assert_one_error, run_cli


def _compile(checkpoint, out, *extra):
    """Not quiet: had any work started, its "[1/N] import ..." line would be on stderr."""
    res = run_cli("compile", checkpoint, "-o", out, *extra)
    assert "[1/" not in res.stderr, res.stderr  # refused before the import stage line
    return res


def test_output_is_an_existing_file(tiny_checkpoint, tmp_path):
    (tmp_path / "out").write_text("mine")
    assert_one_error(_compile(tiny_checkpoint, tmp_path / "out"), "exists and is not a directory")
    assert (tmp_path / "out").read_text() == "mine"


def test_output_is_a_directory_that_is_not_an_artifact(tiny_checkpoint, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    assert_one_error(_compile(tiny_checkpoint, tmp_path / "out"), "is not an llmirc artifact")
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("emit", ["vmfb", "llm"])
def test_output_inside_a_file(tiny_checkpoint, tmp_path, emit):
    (tmp_path / "f").write_text("x")
    assert_one_error(_compile(tiny_checkpoint, tmp_path / "f" / "sub" / "out", "--emit", emit),
                     f"{tmp_path / 'f'} is a file, not a directory")


@pytest.mark.parametrize("emit", ["llm", "llm-opt", "iree-input"])
def test_emit_file_onto_an_existing_directory(tiny_checkpoint, tmp_path, emit):
    (tmp_path / "d").mkdir()
    assert_one_error(_compile(tiny_checkpoint, tmp_path / "d", "--emit", emit), "is a directory",
                     "give a file path")


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: chmod 555 for a normal user; root
    ignores modes, so for root a read-only system directory (/sys) when it really is one."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(probe)
    pytest.skip("running as root and /sys is writable: no unwritable directory to test with")


@pytest.mark.parametrize("emit", ["vmfb", "llm"])
def test_output_in_a_read_only_directory(tiny_checkpoint, tmp_path, emit):
    d = _unwritable_dir(tmp_path)
    try:
        assert_one_error(_compile(tiny_checkpoint, d / "new" / "out", "--emit", emit), "not writable", str(d))
    finally:
        if d.is_relative_to(tmp_path):
            d.chmod(0o755)


@pytest.mark.parametrize("args,needle", [
    (["run", "ART", "--prompt", "x", "--top-p", "0"], "Invalid value for '--top-p': 0.0 is not in the range 0<x<=1"),
    (["run", "ART", "--prompt", "x", "--repetition-penalty", "0"], "'--repetition-penalty'"),
    (["run", "ART", "--prompt", "x", "--max-tokens", "0"], "'--max-tokens'"),
    (["bench", "ART", "--batch", "0"], "--batch takes comma-separated positive integers"),
    (["bench", "ART", "--batch=-1"], "--batch takes comma-separated positive integers, e.g. 1,2,4; got '-1'"),
    (["bench", "ART", "--batch", "1,x"], "--batch takes comma-separated positive integers"),
    (["compile", "--bogus"], "No such option '--bogus'"),
    (["compile", "-O", "7", "-o", "x"], "Invalid value for '-O'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["run"], "Missing argument 'ARTIFACT'"),
])
def test_bad_values_are_one_error_line(args, needle, tmp_path):
    res = run_cli(*[str(tmp_path / "art") if a == "ART" else a for a in args])
    assert_one_error(res, needle)
    assert "Traceback" not in res.output and "Usage:" not in res.stderr


def test_usage_errors_point_at_the_commands_help():
    assert_one_error(run_cli("run", "x", "--top-p", "2"), "(see `llmirc run --help`)")


def test_help_and_version_still_exit_0():
    assert run_cli("--help").exit_code == 0
    for bare in ([], ["testing"]):  # a group alone prints its help, as click does, but exits 0
        res = run_cli(*bare)
        assert res.exit_code == 0 and res.stdout.startswith("Usage: llmirc") and not res.stderr
    assert run_cli("run", "--help").exit_code == 0 and "0<x<=1" in run_cli("run", "--help").output
    assert run_cli("--version").exit_code == 0


def test_sampling_errors_are_llmirc_errors_and_value_errors():
    for bad in (dict(top_p=0.0), dict(top_k=-1), dict(max_tokens=0), dict(repetition_penalty=0.0), dict(stop=("",))):
        with pytest.raises(LlmircError):
            SamplingParams(**bad)
        with pytest.raises(ValueError):
            SamplingParams(**bad)
