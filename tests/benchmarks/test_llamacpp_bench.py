"""The pure helpers of benchmarks/llamacpp.py: llama-bench JSON, GGUF decode bytes, the docs section.
Fast: nothing is built or downloaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import llamacpp  # noqa: E402

# Trimmed from a real `llama-bench -p 128 -n 32 -r 1 -o json` run.
BENCH_JSON = json.dumps([
    {"build_commit": "unknown", "build_number": 0, "model_type": "llama ?B F16", "n_prompt": 128, "n_gen": 0,
     "n_depth": 0, "avg_ns": 900000000, "stddev_ns": 0, "avg_ts": 142.25, "stddev_ts": 0.0, "samples_ts": [142.25]},
    {"build_commit": "unknown", "build_number": 0, "model_type": "llama ?B F16", "n_prompt": 0, "n_gen": 32,
     "n_depth": 0, "avg_ns": 700000000, "stddev_ns": 0, "avg_ts": 45.5, "stddev_ts": 0.0, "samples_ts": [45.5]},
])


def test_parse_llama_bench():
    assert llamacpp.parse_llama_bench(BENCH_JSON) == {"prefill": 142.25, "decode": 45.5}


def test_parse_llama_bench_refuses_missing_or_doubled_tests():
    tests = json.loads(BENCH_JSON)
    with pytest.raises(ValueError, match="expected prefill and decode"):
        llamacpp.parse_llama_bench(json.dumps(tests[:1]))
    with pytest.raises(ValueError, match="two prefill"):
        llamacpp.parse_llama_bench(json.dumps([tests[0], tests[0], tests[1]]))
    # a combined prompt+generation test (-pg) is neither, and is skipped
    pg = dict(tests[0], n_gen=32)
    assert llamacpp.parse_llama_bench(json.dumps(tests + [pg])) == {"prefill": 142.25, "decode": 45.5}


def test_ggml_bytes_per_quant_type():
    assert llamacpp.ggml_bytes("F32", 64) == 256
    assert llamacpp.ggml_bytes("f16", 64) == 128
    assert llamacpp.ggml_bytes("Q8_0", 64) == 68  # 34 bytes per 32: 32 int8 + one f16 scale
    assert llamacpp.ggml_bytes("Q4_0", 64) == 36  # 18 bytes per 32: 16 bytes of nibbles + one f16 scale
    with pytest.raises(ValueError, match="whole Q4_0 blocks"):
        llamacpp.ggml_bytes("Q4_0", 48)


def test_decode_bytes_skip_the_token_embedding():
    tensors = [("token_embd.weight", "F32", 8192 * 768), ("blk.0.attn_q.weight", "Q4_0", 768 * 768),
               ("blk.0.attn_norm.weight", "F32", 768), ("output.weight", "F32", 8192 * 768)]
    assert llamacpp.decode_bytes_of(tensors) == 768 * 768 * 18 // 32 + 768 * 4 + 8192 * 768 * 4


def test_gguf_tensors_read_a_written_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((16, 32), np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((8, 32), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tensors = llamacpp.gguf_tensors(llamacpp.LlamaCpp(tmp_path), tmp_path / "m.gguf")
    assert sorted(tensors) == [("blk.0.ffn_up.weight", "F16", 256), ("token_embd.weight", "F32", 512)]
    assert llamacpp.decode_bytes_of(tensors) == 512


def test_every_llmirc_variant_has_a_gguf_partner():
    assert set(llamacpp.PAIRS) == set(llamacpp.LLMIRC)
    assert set(llamacpp.PAIRS.values()) == set(llamacpp.GGUF)


def test_other_types_lists_matrices_llama_quantize_did_not_convert():
    tensors = [("token_embd.weight", "F32", 64), ("output.weight", "F32", 64), ("blk.0.attn_norm.weight", "F32", 8),
               ("blk.0.attn_q.weight", "Q4_0", 64), ("blk.0.ffn_down.weight", "F16", 88),
               ("blk.1.ffn_down.weight", "F16", 88)]
    assert llamacpp.other_types(tensors, "Q4_0") == {"F16": 2}
    assert llamacpp.other_types(tensors[:4], "Q4_0") == {}
