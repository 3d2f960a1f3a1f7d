"""`llmirc compile --quantize/--dtype` and `llmirc testing make-checkpoint --prequantized` from the shell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from llmirc.frontend.decoder import ENTRY_FUNCTIONS

LLMIRC = [str(Path(sys.executable).parent / "llmirc")]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(LLMIRC + list(args), capture_output=True, text=True)


@pytest.mark.parametrize("args,message", [
    (["--quantize", "int3"], "error: --quantize must be one of int8, int4, w8a8, w4a8, w4a16, got 'int3'"),
    (["--quantize", "int8", "--group-size", "0"],
     "error: Invalid value for '--group-size': 0 is not in the range x>=1."),
    (["--dtype", "f64"], "error: Invalid value for '--dtype': 'f64' is not one of 'auto', 'f32', 'f16', 'bf16'"),
    (["--group-size", "64"], "error: --group-size 64 does nothing without --quantize int8|int4"),
    (["--lm-head", "int8"], "error: --lm-head int8 quantizes lm_head beside the other linears; add --quantize"),
    (["--quantize", "int4", "--lm-head", "int2"],
     "error: Invalid value for '--lm-head': 'int2' is not one of 'float', 'int8', 'int4'"),
])
def test_bad_precision_options(tiny_checkpoint, tmp_path, args, message):
    r = _run("compile", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--emit", "llm-opt", *args)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr
    assert not (tmp_path / "out").exists()


def test_quantize_emit_llm_opt(tiny_checkpoint, tmp_path):
    out = tmp_path / "q.mlir"
    r = _run("compile", str(tiny_checkpoint), "-o", str(out), "--emit", "llm-opt", "--quantize", "int4",
             "--group-size", "32", "--asymmetric", "--keep-float", "lm_head,down_proj", "--dtype", "bf16", "-q")
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert 'int4_g32_asym.qweight"} : () -> tensor<256x64xi4>' in text  # fused gate/up: [2 * 128, 64]
    assert "down_proj.weight.bf16" in text and "lm_head.weight.bf16" in text and "embed_tokens.weight.bf16" in text


def test_lm_head_option_in_ir_and_manifest(tiny_checkpoint, tmp_path):
    """--lm-head int8 on int4: lm_head's own int8 weight, one scale per output channel (the
    tiny model's 64 in-features), recorded in the manifest and shown by inspect."""
    out = tmp_path / "q.mlir"
    r = _run("compile", str(tiny_checkpoint), "-o", str(out), "--emit", "llm-opt", "--quantize", "int4",
             "--lm-head", "int8", "-q")
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert '"llm.linear"' not in text and 'lm_head.weight.int8_g64_sym.qweight"' in text


def test_make_prequantized_checkpoint_then_compile_llm(tmp_path):
    ckpt = tmp_path / "gptq"
    r = _run("testing", "make-checkpoint", str(ckpt), "--prequantized", "gptq", "--vocab", "320")
    assert r.returncode == 0, r.stderr
    assert json.loads((ckpt / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    r = _run("compile", str(ckpt), "-o", str(tmp_path / "m.mlir"), "--emit", "llm", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.mlir").read_text().count('"llm.quantized_matmul"') == len(ENTRY_FUNCTIONS) * 7 * 2
