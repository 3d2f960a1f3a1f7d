"""The frontend's IR, run by the numpy interpreter, against transformers' LlamaForCausalLM."""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.dialect.interpreter import empty_kv_cache, run_function
from llmirc.frontend import cache_type, import_checkpoint
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint
from tests.reference import hf_last_logits, hf_model, padded_batch


def _prefill_then_decode(model, prompts: list[list[int]], steps: int):
    """Batched prefill (padded) then `steps` greedy decode steps; yields logits per step."""
    w = model.weights()
    tokens, lens = padded_batch(prompts)
    cache = empty_kv_cache(cache_type(model.config), len(prompts))
    logits, cache = run_function(model.module, "prefill", [tokens, lens, cache], w)
    seqs = [list(p) for p in prompts]
    yield seqs, logits
    for _ in range(steps):
        nxt = logits.argmax(-1).astype(np.int64)
        positions = np.array([len(s) for s in seqs], np.int64)
        for s, n in zip(seqs, nxt):
            s.append(int(n))
        logits, cache = run_function(model.module, "decode", [nxt, positions, cache], w)
        yield seqs, logits


def _check_against_hf(ckpt, prompts, steps=8, tol=1e-4):
    model = import_checkpoint(ckpt)
    hf = hf_model(ckpt)
    for seqs, logits in _prefill_then_decode(model, prompts, steps):
        for s, row in zip(seqs, logits):
            ref = hf_last_logits(hf, s)
            np.testing.assert_allclose(row, ref, atol=tol, rtol=0)
            assert int(row.argmax()) == int(ref.argmax())


def test_prefill_and_8_decode_steps_match_transformers(tiny_checkpoint):
    _check_against_hf(tiny_checkpoint, [[5, 7, 9, 11, 13, 17], [3, 4, 6], [42]], steps=8)


@pytest.mark.parametrize("variant", [
    dict(tie_embeddings=True, shards=3),
    dict(dtype="bfloat16", kv_heads=1),
    dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 16}, rope_theta=500000.0),
    dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, attention_bias=True),
], ids=["tied-sharded", "bf16-mqa", "llama3-rope", "linear-rope-bias"])
def test_llama_variants_match_transformers(tmp_path, variant):
    spec = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=variant.pop("kv_heads", 2), vocab=300, seed=3,
                          **variant)
    _check_against_hf(make_checkpoint(tmp_path / "ckpt", spec), [[1, 2, 3, 4, 5], [9, 8]], steps=3)
