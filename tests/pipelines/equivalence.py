"""Interpreter-based equivalence: a pass must not change what prefill/decode compute."""

from __future__ import annotations

import numpy as np

from llmirc.dialect import parse_module, print_module
from llmirc.dialect.context import functions
from llmirc.dialect.interpreter import empty_kv_cache, empty_page_pool, run_function
from llmirc.dialect.types import KVCacheT, PagedKVCacheT, from_mlir
from llmirc.pipelines import PassManager, WeightStore, parse_pipeline


def _caches(module) -> list:
    """Types of decode's trailing cache arguments: one, or one per device after shard-tp."""
    args = functions(module)["decode"].regions[0].blocks[0].arguments
    types = [from_mlir(a.type) for a in args]
    first = next(i for i, t in enumerate(types) if isinstance(t, (KVCacheT, PagedKVCacheT)))
    return types[first:]


def _state(module, batch: int, rng):
    """Initial caches / pools + block tables for the module's signature (the tables are shared
    by every device's pool)."""
    caches = _caches(module)
    if isinstance(caches[0], KVCacheT):
        return [empty_kv_cache(t, batch) for t in caches]
    assert all(isinstance(t, PagedKVCacheT) for t in caches)
    per_row = -(-64 // caches[0].block_size)
    bt = rng.permutation(np.arange(1, batch * per_row + 1)).reshape(batch, per_row)
    return [bt.astype(np.int64)] + [empty_page_pool(t, batch * per_row + 1) for t in caches]


def run_model(module, weights, tokens, lens, steps: int = 3, seed: int = 0):
    """Logits of prefill then `steps` greedy decode steps."""
    rng = np.random.default_rng(seed)
    state = _state(module, len(lens), rng)
    k = len(_caches(module))
    out, *rest = run_function(module, "prefill", [tokens, lens, *state], weights)
    state[-k:] = rest[-k:]
    logits, positions = [out], lens.copy()
    for _ in range(steps):
        nxt = out.argmax(-1).astype(np.int64)
        out, *rest = run_function(module, "decode", [nxt, positions, *state], weights)
        state[-k:] = rest[-k:]
        logits.append(out)
        positions = positions + 1
    return logits


def assert_pipeline_preserves(module, weights, pipeline: str, shapes=((2, 5), (3, 7)), atol=1e-5):
    """Run `pipeline` on a copy of `module`; outputs before == after on random inputs of several shapes."""
    weights = weights if isinstance(weights, WeightStore) else WeightStore.from_arrays(weights)
    after = parse_module(print_module(module))
    PassManager(parse_pipeline(pipeline), weights=weights).run(after)
    rng = np.random.default_rng(1)
    for b, t in shapes:
        tokens = rng.integers(3, 250, size=(b, t)).astype(np.int64)
        lens = rng.integers(1, t + 1, size=b).astype(np.int64)
        lens[0] = t
        ref = run_model(module, weights, tokens, lens)
        got = run_model(after, weights, tokens, lens)
        for r, g in zip(ref, got):
            np.testing.assert_allclose(g, r, atol=atol, rtol=0)
    return after
