"""blockify-kv-cache: the paged IR computes what the contiguous IR computes (interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.dialect import print_module, verify_module
from llmirc.dialect.context import functions
from llmirc.dialect.interpreter import empty_kv_cache, empty_page_pool, run_function
from llmirc.dialect.types import PagedKVCacheT, from_mlir
from llmirc.frontend import cache_type, import_checkpoint
from llmirc.pipelines import PassManager, parse_pipeline
from llmirc.frontend.decoder import ENTRY_FUNCTIONS


def _pool_type(module) -> PagedKVCacheT:
    return from_mlir(functions(module)["decode"].regions[0].blocks[0].arguments[-1].type)


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_paged_equals_contiguous(tiny_checkpoint, block_size):
    ref = import_checkpoint(tiny_checkpoint)
    paged = import_checkpoint(tiny_checkpoint)
    PassManager(parse_pipeline(f"blockify-kv-cache{{block_size={block_size}}}")).run(paged.module)
    w = ref.weights()
    rng = np.random.default_rng(block_size)
    lens = np.array([7, 3, 5], np.int64)
    tokens = rng.integers(3, 300, size=(3, 7)).astype(np.int64)
    # Block tables: shuffled, interleaved pages across rows; page 0 (scratch) only as padding.
    pages_per_row = -(-12 // block_size)
    perm = rng.permutation(np.arange(1, 3 * pages_per_row + 1))
    bt = perm.reshape(pages_per_row, 3).T.copy()
    pool = empty_page_pool(_pool_type(paged.module), 3 * pages_per_row + 1)
    cache = empty_kv_cache(cache_type(ref.config), 3)

    l_ref, cache = run_function(ref.module, "prefill", [tokens, lens, cache], w)
    l_pag, pool = run_function(paged.module, "prefill", [tokens, lens, bt, pool], w)
    np.testing.assert_allclose(l_pag, l_ref, atol=1e-6)
    positions = lens.copy()
    for _ in range(4):
        nxt = l_ref.argmax(-1).astype(np.int64)
        l_ref, cache = run_function(ref.module, "decode", [nxt, positions, cache], w)
        l_pag, pool = run_function(paged.module, "decode", [nxt, positions, bt, pool], w)
        np.testing.assert_allclose(l_pag, l_ref, atol=1e-6)
        positions += 1
    # The pages hold exactly the contiguous cache's valid positions, and page 0 stays clean.
    for b in range(3):
        for p in range(int(positions[b])):
            np.testing.assert_allclose(pool[bt[b, p // block_size], :, :, p % block_size], cache[:, :, b, p],
                                       atol=1e-6)
    assert not pool[0].any()


def test_blockify_signature_and_ops(tiny_checkpoint):
    m = import_checkpoint(tiny_checkpoint)
    PassManager(parse_pipeline("blockify-kv-cache{block_size=8}")).run(m.module)
    verify_module(m.module)
    text = print_module(m.module)
    assert '"llm.append_kv"' not in text and '"llm.attention"' not in text
    assert text.count('"llm.paged_append_kv"') == 2 * len(ENTRY_FUNCTIONS)  # 2 layers x each function
    decl = [line for line in text.splitlines() if "func.func @decode" in line][0]
    pool_t = "!llm.paged_kv_cache<2 : i64, 2 : i64, 16 : i64, 8 : i64, f32>"
    assert f"%arg2: tensor<?x?xi64>, %arg3: {pool_t}) -> (tensor<?x300xf32>, {pool_t})" in decl


def test_unknown_pass_and_option():
    from llmirc.pipelines import PassError

    with pytest.raises(PassError, match="unknown pass 'fuse-everything'"):
        parse_pipeline("blockify-kv-cache,fuse-everything")
    with pytest.raises(PassError, match="pass 'blockify-kv-cache' has no option 'page'"):
        parse_pipeline("blockify-kv-cache{page=4}")


def test_broken_pass_is_named_by_verifier(tiny_checkpoint):
    from llmirc.dialect import VerificationError
    from llmirc.pipelines import register_pass
    from llmirc.pipelines.pass_manager import PASSES
    from llmirc.pipelines.rewrite import functions as funcs, llm_ops

    @register_pass("test-break-eps", "Deletes an attribute (test only).")
    def _break(module):
        op = next(llm_ops(funcs(module)["prefill"], "rms_norm"))
        del op.attributes["eps"]

    try:
        m = import_checkpoint(tiny_checkpoint)
        with pytest.raises(VerificationError, match=r"'llm.rms_norm' at model.layers.0.input_layernorm: "
                                                    r"missing attribute 'eps'.*after pass 'test-break-eps'"):
            PassManager(parse_pipeline("test-break-eps")).run(m.module)
    finally:
        PASSES.pop("test-break-eps")
