"""A compiled CPU artifact of the tiny checkpoint, built once per session (-O2, the default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmirc.compiler import CompileOptions, compile_checkpoint


def compile_artifact(checkpoint: Path, out: Path, **kw) -> Path:
    compile_checkpoint(CompileOptions(checkpoint, out, **kw), progress=None)
    return out


@pytest.fixture(scope="session")
def cpu_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    return compile_artifact(tiny_checkpoint, tmp_path_factory.mktemp("art") / "tiny-cpu", opt_level=2,
                            page_size=8)


@pytest.fixture(scope="session")
def default_artifact(tmp_path_factory) -> Path:
    """The embedded default model (README command 1), compiled once per session at -O3."""
    from llmirc.cli import DEFAULT_MODEL

    return compile_artifact(DEFAULT_MODEL, tmp_path_factory.mktemp("default") / "art")
