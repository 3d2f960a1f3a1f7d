"""Shared fixtures: small random-weight Llama checkpoints made offline, once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

# The runtime remembers modules it has test-run (llmirc/runtime/probe.py) in the user's cache;
# tests keep those markers to themselves (subprocesses inherit this).
os.environ["LLMIRC_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmirc-test-cache-")

# Two layers, grouped-query attention (4 query heads share 2 KV heads).
TINY = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=300, max_seq_len=128,
                      seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", TINY)


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    import shutil

    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


@pytest.fixture(scope="session")
def default_artifact(tmp_path_factory) -> Path:
    """The embedded default model (README command 1), compiled once per session at -O3; here so
    that tests/e2e and tests/serving share one compile."""
    from llmirc.cli import DEFAULT_MODEL
    from llmirc.compiler import CompileOptions, compile_checkpoint

    out = tmp_path_factory.mktemp("default") / "art"
    compile_checkpoint(CompileOptions(DEFAULT_MODEL, out), progress=None)
    return out
