"""The compiled CPU artifact against Hugging Face transformers on the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

import llmirc
from llmirc.runtime import Engine, PagePool
from tests.reference import greedy_with_engine, hf_greedy, hf_model

PROMPTS = [[1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8], [1, 250, 3], [1, 44, 45, 46, 47, 48]]


@pytest.fixture(scope="module")
def hf(tiny_checkpoint):
    return hf_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def hf_runs(hf):
    return [hf_greedy(hf, p, 64) for p in PROMPTS]


def test_greedy_64_tokens_batch_of_3_match_transformers(cpu_artifact, hf_runs):
    model = llmirc.load(cpu_artifact)
    got = model.generate(PROMPTS, max_tokens=64, stop_token_ids=())
    for completion, (ref_tokens, _) in zip(got, hf_runs):
        assert completion.token_ids == ref_tokens


def test_last_step_logits_within_1e3(cpu_artifact, hf_runs):
    engine = Engine(cpu_artifact, num_pages=64)
    pages_per_seq = -(-(max(map(len, PROMPTS)) + 64) // engine.page_size)
    tables = np.arange(1, 1 + len(PROMPTS) * pages_per_seq, dtype=np.int64).reshape(len(PROMPTS), -1)
    tokens, logits = greedy_with_engine(engine, PROMPTS, 63, tables)
    for row, toks, (ref_tokens, ref_logits) in zip(logits, tokens, hf_runs):
        assert toks == ref_tokens[:63]
        np.testing.assert_allclose(row, ref_logits, atol=1e-3, rtol=0)


def test_interleaved_pages_do_not_leak_between_sequences(cpu_artifact):
    """Two sequences whose pages interleave in the pool give the same tokens as each alone."""
    engine = Engine(cpu_artifact, num_pages=32)
    a, b = PROMPTS[0], PROMPTS[2]
    interleaved = np.array([[1, 3, 5, 7, 9, 11, 13, 15, 17, 19], [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]], np.int64)
    together, _ = greedy_with_engine(engine, [a, b], 30, interleaved)
    alone_a, _ = greedy_with_engine(Engine(cpu_artifact, num_pages=32), [a], 30, interleaved[:1] + 10)
    alone_b, _ = greedy_with_engine(Engine(cpu_artifact, num_pages=32), [b], 30, interleaved[1:] + 10)
    assert together == [alone_a[0], alone_b[0]]


def test_pool_is_updated_in_place(cpu_artifact):
    engine = Engine(cpu_artifact, num_pages=8)
    pool_before = engine.pool
    assert not engine.read_pool().any()
    engine.prefill(np.array([[1, 2, 3]], np.int64), np.array([3], np.int64), np.array([[5, 0]], np.int64))
    assert engine.pool is pool_before
    pool = engine.read_pool()
    assert pool[5, :, :, :3].any() and not pool[5, :, :, 3:].any()
    others = np.delete(pool, 5, axis=0)
    assert not others.any(), "prefill wrote outside the sequence's page"


def test_padding_writes_only_reach_scratch_page(cpu_artifact):
    engine = Engine(cpu_artifact, num_pages=8)
    tokens = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int64)
    engine.prefill(tokens, np.array([12, 2], np.int64), np.array([[3, 4], [6, 0]], np.int64))
    pool = engine.read_pool()
    assert pool[3].any() and pool[4, :, :, :4].any()
    assert pool[6, :, :, :2].any() and not pool[6, :, :, 2:].any()
    assert not pool[[1, 2, 5, 7]].any()
