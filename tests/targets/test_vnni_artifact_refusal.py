"""An artifact compiled for a CPU with AVX512-VNNI (manifest target.vnni) is refused at load, with
one error line, on a CPU without it, instead of dying on its first VNNI instruction (SIGILL).

The artifact is cross-compiled for cpu:sapphirerapids, so this runs on any machine; the CPU's
flags are what the test gives the engine."""

from __future__ import annotations

import pytest

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.errors import LlmircError
from llmirc.runtime import Engine
from llmirc.targets import cpu
from llmirc.artifacts.manifest import read_manifest


def test_vnni_artifact_error_reads_the_flags():
    assert cpu.vnni_artifact_error("A", "cpu:x", frozenset({"avx2", "avx512f", "avx512_vnni"})) is None
    assert cpu.vnni_artifact_error("A", "cpu:x", None) is None  # flags unknown: let it load
    why = cpu.vnni_artifact_error("A", "cpu:x", frozenset({"avx2", "fma"}))
    assert why.startswith("artifact A was compiled for a CPU with AVX512-VNNI") and "recompile it here" in why


def test_engine_refuses_a_vnni_artifact_on_a_cpu_without_it(tiny_checkpoint, tmp_path, monkeypatch):
    art = tmp_path / "spr"
    compile_checkpoint(CompileOptions(tiny_checkpoint, art, target="cpu:sapphirerapids", opt_level=1), progress=None)
    assert read_manifest(art, verify_checksums=False).target.extra.get("vnni") is True
    monkeypatch.setattr(cpu, "host_flags", lambda: frozenset({"sse4_2", "avx2", "fma"}))
    with pytest.raises(LlmircError, match=f"artifact {art} was compiled for a CPU with AVX512-VNNI .* has no "
                                          "avx512_vnni"):
        Engine(art, verify_checksums=False)
