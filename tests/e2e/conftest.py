"""A compiled CPU artifact of the tiny checkpoint, built once per session (-O2, the default).
`default_artifact` (the embedded default model) is in tests/conftest.py: tests/serving uses it too."""

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

