"""Artifacts of the tiny checkpoint per target profile, compiled once per session (on demand)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.targets import resolve

COMPILE_SECONDS: dict[str, float] = {}  # spec -> wall time of the compile (printed in the summary)


@pytest.fixture(scope="session")
def target_artifact(tiny_checkpoint, tmp_path_factory):
    """target_artifact("vulkan:generic", dtype="bf16", buckets=...) -> artifact dir (cached per arguments)."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("targets")

    def build(target: str, **kw) -> Path:
        target = resolve(target).full_name  # "tpu-like" and "tpu-like:host" are one artifact
        key = (target,) + tuple(sorted(kw.items()))
        if key not in cache:
            out = root / "_".join([target.replace(":", "-")] + [f"{k}-{v}" for k, v in sorted(kw.items())])
            t = time.perf_counter()
            compile_checkpoint(CompileOptions(tiny_checkpoint, out, target=target, **kw), progress=None)
            COMPILE_SECONDS[" ".join([target] + [f"{k}={v}" for k, v in sorted(kw.items())])] = \
                time.perf_counter() - t
            cache[key] = out
        return cache[key]

    return build


def pytest_terminal_summary(terminalreporter):
    if COMPILE_SECONDS:
        terminalreporter.write_sep("-", "target compile times (tiny checkpoint)")
        for spec, s in COMPILE_SECONDS.items():
            terminalreporter.write_line(f"{spec:40} {s:6.1f} s")

