"""Tensor-parallel CPU artifacts end to end: TP=2 and TP=4 (KV heads fewer than devices)
compiled, run on 2 or 4 local-task devices, against the TP=1 artifact (logits within 1e-5)
and against transformers (greedy tokens identical)."""

from __future__ import annotations

import numpy as np
import pytest

import llmirc
from llmirc.errors import RuntimeDeviceError
from llmirc.runtime import Engine
from tests.reference import greedy_with_engine, hf_greedy, hf_model, padded_batch

PROMPTS = [[1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8], [1, 250, 3], [1, 44, 45, 46, 47, 48]]
STEPS = 12


def _run(artifact, tables: np.ndarray):
    """Prefill of PROMPTS, then STEPS greedy decodes: (prefill logits, logits of every decode step, engine)."""
    engine = Engine(artifact, num_pages=32)
    tokens, lens = padded_batch(PROMPTS)
    first = engine.prefill(tokens, lens, tables)
    steps, logits, positions = [], first, lens.copy()
    for _ in range(STEPS):
        logits = engine.decode(logits.argmax(-1).astype(np.int64), positions, tables)
        steps.append(logits)
        positions += 1
    return first, steps, engine


TABLES = np.array([[3, 9, 4, 0], [7, 10, 0, 0], [12, 2, 11, 0]], np.int64)  # scattered pages, scratch-padded


@pytest.fixture(scope="module")
def reference(tp_artifacts):
    first, steps, _ = _run(tp_artifacts(1), TABLES)
    return first, steps


@pytest.mark.parametrize("tp", [2, 4])
def test_prefill_and_decode_logits_equal_tp1(tp_artifacts, reference, tp):
    first, steps, engine = _run(tp_artifacts(tp), TABLES)
    assert len(engine.devices) == tp and len(engine.pools) == tp
    np.testing.assert_allclose(first, reference[0], atol=1e-5, rtol=0)
    for got, ref in zip(steps, reference[1]):
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tp", [2, 4])
def test_each_device_pool_holds_its_kv_heads_in_place(tp_artifacts, tp):
    """One pool per device, KV heads kv/N each (one, replicated, at kv=2 N=4), written in place
    in the sequence's pages only; replicas of a KV head hold the same values."""
    engine = Engine(tp_artifacts(tp), num_pages=8)
    pools_before = list(engine.pools)
    assert engine.pool_shape[4] == max(1, 2 // tp)
    engine.prefill(np.array([[1, 2, 3, 4, 5]], np.int64), np.array([5], np.int64), np.array([[5, 0]], np.int64))
    assert all(a is b for a, b in zip(engine.pools, pools_before))  # updated through the tied results
    pools = [engine.read_pool(d) for d in range(tp)]
    for p in pools:
        assert p[5, :, :, :5].any() and not p[5, :, :, 5:].any()
        assert not np.delete(p, 5, axis=0).any(), "prefill wrote outside the sequence's page"
    replicas = tp // 2  # devices per KV head
    for d in range(tp):
        same = d // replicas * replicas
        np.testing.assert_array_equal(pools[d], pools[same])
    assert not np.array_equal(pools[0], pools[-1])  # different KV heads


@pytest.mark.parametrize("tp", [2, 4])
def test_greedy_tokens_match_transformers(tiny_checkpoint, tp_artifacts, tp):
    """Through llmirc.load (scheduler, one PagePool for all pools) and through the raw Engine."""
    hf = hf_model(tiny_checkpoint)
    refs = [hf_greedy(hf, p, 24) for p in PROMPTS]
    got = llmirc.load(tp_artifacts(tp)).generate(PROMPTS, max_tokens=24, stop_token_ids=())
    assert [c.token_ids for c in got] == [t for t, _ in refs]
    tokens, logits = greedy_with_engine(Engine(tp_artifacts(tp), num_pages=64), PROMPTS, 23)
    for row, toks, (ref_tokens, ref_logits) in zip(logits, tokens, refs):
        assert toks == ref_tokens[:23]
        np.testing.assert_allclose(row, ref_logits, atol=1e-3, rtol=0)


def test_device_list(tp_artifacts):
    art = tp_artifacts(2)
    engine = Engine(art, num_pages=4, device="local-task, local-task")
    assert engine.device_uris == ["local-task", "local-task"] and engine.devices[0] is not engine.devices[1]
    with pytest.raises(RuntimeDeviceError, match="compiled for 2 devices .* names 1"):
        Engine(art, num_pages=4, device="local-task")
    with pytest.raises(RuntimeDeviceError, match="names 3"):
        Engine(art, num_pages=4, device="local-task,local-task,local-task")
    with pytest.raises(RuntimeDeviceError, match="cannot run on driver 'cuda'"):
        Engine(art, num_pages=4, device="local-task,cuda://0")


def test_tp2_of_a_transformers_saved_checkpoint(tmp_path):
    """A Llama saved by transformers' own save_pretrained, norms and biases perturbed, with q/k/v,
    o_proj and MLP biases (split with their weight, or added once after the all-reduce): TP=2
    greedy tokens and logits against transformers."""
    from tests.hf_checkpoints import save_hf_model
    from tests.parallel.conftest import compile_tp

    ckpt = save_hf_model(tmp_path / "ckpt", "llama", seed=5, attention_bias=True, mlp_bias=True)
    hf = hf_model(ckpt)
    refs = [hf_greedy(hf, p, 16) for p in PROMPTS]
    tokens, logits = greedy_with_engine(Engine(compile_tp(ckpt, tmp_path / "tp2", 2), num_pages=64), PROMPTS, 15)
    for row, toks, (ref_tokens, ref_logits) in zip(logits, tokens, refs):
        assert toks == ref_tokens[:15]
        np.testing.assert_allclose(row, ref_logits, atol=1e-3, rtol=0)
