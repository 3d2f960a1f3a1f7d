"""Tensor-parallel CPU artifacts of the tiny checkpoint (2 layers, hidden 64, 4 query heads,
2 KV heads), compiled once per session at -O2 with 8-token pages: TP=1 (the reference),
TP=2 (one KV head per device) and TP=4 (each KV head replicated on two devices)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmirc.compiler import CompileOptions, compile_checkpoint

PAGE = 8


def compile_tp(checkpoint: Path, out: Path, tp: int, **kw) -> Path:
    compile_checkpoint(CompileOptions(checkpoint, out, opt_level=2, page_size=PAGE, tp=tp, **kw), progress=None)
    return out


@pytest.fixture(scope="session")
def tp_artifacts(tiny_checkpoint, tmp_path_factory):
    """tp -> artifact directory, compiled on first use."""
    root = tmp_path_factory.mktemp("tp")
    built: dict[int, Path] = {}

    def get(tp: int) -> Path:
        if tp not in built:
            built[tp] = compile_tp(tiny_checkpoint, root / f"tp{tp}", tp)
        return built[tp]

    return get
