"""Each op of the numpy interpreter against an independent formula (torch, transformers or loops).

Ops are built with the Builder in a one-op function and run through `run_function`, so
the attribute/operand plumbing and the inferred result types are exercised too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from iree.compiler import ir
from iree.compiler.dialects import func

from llmirc.dialect import Builder, KVCacheT, PagedKVCacheT, TensorT, make_context, verify_module
from llmirc.dialect.interpreter import empty_kv_cache, empty_page_pool, run_function
from llmirc.dialect.types import from_mlir

DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.int64): "i64", np.dtype(np.int8): "i8"}


def run_op(op: str, *inputs, **attrs):
    """Run `llm.<op>` on numpy inputs (None: absent optional operand; (array, type): a cache).

    Returns the result array (or tuple); checks result shapes against the inferred types.
    """
    arrays, types = [], []
    for x in inputs:
        if x is None:
            continue
        arr, t = x if isinstance(x, tuple) else (x, TensorT(x.shape, DTYPES[x.dtype]))
        arrays.append(arr)
        types.append(t)
    with make_context(), ir.Location.unknown():
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            f = func.FuncOp("f", ([ir.Type.parse(str(t)) for t in types], []))
            block = f.add_entry_block()
        with ir.InsertionPoint(block):
            it = iter(block.arguments)
            operands = [None if x is None else next(it) for x in inputs]
            out = getattr(Builder(), op)(*operands, loc=op, **attrs)
            outs = list(out) if isinstance(out, tuple) else [out]
            result_types = [from_mlir(v.type) for v in outs]
            func.ReturnOp(outs)
        f.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(
            [ir.Type.parse(str(t)) for t in types], [v.type for v in outs]))
        verify_module(module)
        results = run_function(module, "f", arrays, weights={})
    for r, t in zip(results, result_types):
        if isinstance(t, TensorT):
            assert r.shape == tuple(t.shape), (op, r.shape, t)
            assert np.dtype(r.dtype) == np.dtype({"f32": np.float32, "i64": np.int64, "i8": np.int8}[t.dtype]), (op, r.dtype, t)
    return tuple(results) if len(results) > 1 else results[0]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def close(actual, expected, atol=1e-5, rtol=1e-5):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


# ---- elementwise, norms, matmuls -------------------------------------------------------------

@pytest.mark.parametrize("eps, size", [(1e-5, 1.0), (0.25, 0.3)])  # the second makes eps matter
def test_rms_norm_vs_transformers(rng, eps, size):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x, w = size * randn(rng, 2, 3, 16), randn(rng, 16)
    ref = LlamaRMSNorm(16, eps=eps)
    with torch.no_grad():
        ref.weight.copy_(t(w))
        close(run_op("rms_norm", x, w, eps=eps), ref(t(x)))


@pytest.mark.parametrize("bias", [False, True])
def test_layer_norm_vs_torch(rng, bias):
    x, w, b = randn(rng, 2, 3, 16), randn(rng, 16), randn(rng, 16)
    got = run_op("layer_norm", x, w, b if bias else None, eps=1e-3)
    close(got, F.layer_norm(t(x), (16,), t(w), t(b) if bias else None, eps=1e-3))


@pytest.mark.parametrize("bias", [False, True])
def test_linear_vs_torch(rng, bias):
    x, w, b = randn(rng, 2, 3, 8), randn(rng, 5, 8), randn(rng, 5)
    close(run_op("linear", x, w, b if bias else None), F.linear(t(x), t(w), t(b) if bias else None))


@pytest.mark.parametrize("lhs, rhs", [((2, 3, 4), (4, 5)), ((2, 3, 4, 6), (2, 3, 6, 5))])
def test_matmul_vs_torch(rng, lhs, rhs):
    a, b = randn(rng, *lhs), randn(rng, *rhs)
    close(run_op("matmul", a, b), torch.matmul(t(a), t(b)))


@pytest.mark.parametrize("op, ref", [("add", torch.add), ("mul", torch.mul)])
@pytest.mark.parametrize("rhs_shape", [(2, 3, 8), (8,), (3, 1)])
def test_broadcasting_binary_vs_torch(rng, op, ref, rhs_shape):
    a, b = randn(rng, 2, 3, 8), randn(rng, *rhs_shape)
    close(run_op(op, a, b), ref(t(a), t(b)))


def test_activations_vs_torch(rng):
    x = 3 * randn(rng, 2, 3, 8)
    close(run_op("silu", x), F.silu(t(x)))
    close(run_op("gelu", x), F.gelu(t(x)))
    close(run_op("gelu", x, approximate="tanh"), F.gelu(t(x), approximate="tanh"))
    close(run_op("softmax", x), torch.softmax(t(x), -1))


def test_embedding_vs_torch(rng):
    ids, table = rng.integers(0, 10, (2, 5)), randn(rng, 10, 4)
    close(run_op("embedding", ids, table), F.embedding(t(ids), t(table)))


def test_reshape_copies_dims_for_zero(rng):
    x = randn(rng, 2, 3, 8)
    y = run_op("reshape", x, shape=[0, 0, 2, 4])
    assert y.shape == (2, 3, 2, 4)
    close(y, t(x).view(2, 3, 2, 4))
    close(run_op("reshape", x, shape=[6, 8]), t(x).reshape(6, 8))


# ---- rope and attention --------------------------------------------------------------------

def test_rope_vs_transformers(rng):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    b, s, heads, kv_heads, d = 2, 5, 4, 2, 16
    cfg = LlamaConfig(hidden_size=heads * d, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_dim=d, rope_theta=500.0, max_position_embeddings=64)
    rotary = LlamaRotaryEmbedding(cfg)
    pos = np.stack([np.arange(3, 3 + s), rng.permutation(40)[:s]]).astype(np.int64)  # any positions
    q, k = randn(rng, b, s, heads, d), randn(rng, b, s, kv_heads, d)
    with torch.no_grad():
        cos, sin = rotary(t(q), t(pos))
        # transformers rotates [batch, heads, seq, head_dim]; llm.rope takes [batch, seq, heads, head_dim].
        q_ref, k_ref = apply_rotary_pos_emb(t(q).transpose(1, 2), t(k).transpose(1, 2), cos, sin)
    inv_freq = rotary.inv_freq.numpy().tolist()
    close(run_op("rope", q, pos, inv_freq=inv_freq), q_ref.transpose(1, 2), atol=1e-4)
    close(run_op("rope", k, pos, inv_freq=inv_freq), k_ref.transpose(1, 2), atol=1e-4)


def _sdpa_reference(q, k, v, pos, scale):
    """torch SDPA with GQA expansion and the causal-by-position mask; padded rows (pos < 0) are 0."""
    n_rep = q.shape[2] // k.shape[2]
    qt = t(q).transpose(1, 2)                                   # [B, NH, T, D]
    kt = t(k).transpose(1, 2).repeat_interleave(n_rep, dim=1)  # [B, NH, S, D]
    vt = t(v).transpose(1, 2).repeat_interleave(n_rep, dim=1)
    mask = torch.arange(k.shape[1])[None, None, :] <= t(pos)[:, :, None]  # [B, T, S]
    live = t(pos) >= 0
    mask = mask | ~live[:, :, None]  # keep padded rows finite; they are zeroed below
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None], scale=scale)
    out = out.transpose(1, 2) * live[:, :, None, None]
    return out.numpy()


def _contiguous_cache(k_all, v_all, layer, layers):
    """Interpreter cache value [layers, 2, B, S, KH, D] holding k_all/v_all in `layer`."""
    b, s, kh, d = k_all.shape
    ctype = KVCacheT(layers=layers, kv_heads=kh, head_dim=d, max_seq_len=s)
    cache = empty_kv_cache(ctype, b)
    cache[layer, 0], cache[layer, 1] = k_all, v_all
    cache[1 - layer] = 100.0  # the other layer must not be read
    return cache, ctype


ATTN = dict(num_heads=4, num_kv_heads=2, head_dim=8, scale=0.3)


@pytest.mark.parametrize("kind", ["prefill_with_padding", "decode"])
def test_attention_vs_torch_sdpa(rng, kind):
    b, s_max = 2, 12
    if kind == "prefill_with_padding":
        pos = np.array([[0, 1, 2, 3, 4], [0, 1, 2, -1, -1]], np.int64)
    else:
        pos = np.array([[7], [3]], np.int64)
    q = randn(rng, b, pos.shape[1], 4, 8)
    k_all, v_all = randn(rng, b, s_max, 2, 8), randn(rng, b, s_max, 2, 8)  # keys past pos are masked
    cache, ctype = _contiguous_cache(k_all, v_all, layer=1, layers=2)
    got = run_op("attention", q, (cache, ctype), pos, layer=1, **ATTN)
    close(got, _sdpa_reference(q, k_all, v_all, pos, ATTN["scale"]), atol=1e-5)
    assert np.all(got[pos < 0] == 0)


@pytest.mark.parametrize("window,softcap", [(3, 0.0), (0, 2.5), (4, 1.5)])
def test_attention_window_and_softcap_vs_torch(rng, window, softcap):
    """Sliding window (key s visible iff p - W < s <= p) and Gemma 2's soft-capping
    (C * tanh(score / C) before the mask), against an eager torch computation."""
    pos = np.array([[5, 6, 7, 8, 9], [0, 1, 2, -1, -1]], np.int64)
    q = randn(rng, 2, 5, 4, 8)
    k_all, v_all = randn(rng, 2, 12, 2, 8), randn(rng, 2, 12, 2, 8)
    cache, ctype = _contiguous_cache(k_all, v_all, layer=0, layers=2)
    got = run_op("attention", q, (cache, ctype), pos, layer=0, window=window, softcap=softcap, **ATTN)
    qt = t(q).transpose(1, 2)
    kt, vt = (t(x).transpose(1, 2).repeat_interleave(2, dim=1) for x in (k_all, v_all))
    scores = qt @ kt.transpose(-1, -2) * ATTN["scale"]
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    keys, p = torch.arange(12)[None, None, :], t(pos)[:, :, None]
    visible = (keys <= p) & ((keys > p - window) if window else True)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    live = t(pos) >= 0
    ref = torch.nan_to_num(torch.softmax(scores, -1)) @ vt
    ref = ref.transpose(1, 2) * live[:, :, None, None]
    close(got, ref.numpy(), atol=1e-5)


def test_scale_and_softcap(rng):
    x = randn(rng, 3, 5) * 40
    close(run_op("scale", x, factor=8.0), t(x) * 8.0)
    close(run_op("softcap", x, cap=30.0), torch.tanh(t(x) / 30.0) * 30.0, atol=1e-5)


def test_attention_ignores_keys_after_position(rng):
    pos = np.array([[2, 3]], np.int64)
    q = randn(rng, 1, 2, 4, 8)
    k_all, v_all = randn(rng, 1, 8, 2, 8), randn(rng, 1, 8, 2, 8)
    cache, ctype = _contiguous_cache(k_all, v_all, layer=0, layers=2)
    before = run_op("attention", q, (cache, ctype), pos, layer=0, **ATTN)
    cache[0, :, :, 4:] = rng.standard_normal(cache[0, :, :, 4:].shape)
    close(run_op("attention", q, (cache, ctype), pos, layer=0, **ATTN), before, atol=0, rtol=0)


def test_append_kv_vs_loop(rng):
    ctype = KVCacheT(layers=2, kv_heads=2, head_dim=4, max_seq_len=8)
    cache = rng.standard_normal((2, 2, 2, 8, 2, 4)).astype(np.float32)
    pos = np.array([[5, 6, 7], [0, -1, -1]], np.int64)
    k, v = randn(rng, 2, 3, 2, 4), randn(rng, 2, 3, 2, 4)
    got = run_op("append_kv", (cache, ctype), k, v, pos, layer=1)
    want = cache.copy()
    for bi in range(2):
        for ti in range(3):
            if pos[bi, ti] >= 0:
                want[1, 0, bi, pos[bi, ti]] = k[bi, ti]
                want[1, 1, bi, pos[bi, ti]] = v[bi, ti]
    close(got, want, atol=0, rtol=0)


def _paged_copy(cache, ctype, block_size, rng):
    """The same K/V as `cache` in a page pool, pages assigned through a shuffled block table."""
    layers, _, b, s, kh, d = cache.shape
    per_seq = s // block_size
    ptype = PagedKVCacheT(layers=layers, kv_heads=kh, head_dim=d, block_size=block_size)
    pool = empty_page_pool(ptype, 1 + b * per_seq)
    pool[0] = 1e4  # the scratch page is never read for live keys
    bt = (1 + rng.permutation(b * per_seq)).reshape(b, per_seq).astype(np.int64)
    for bi in range(b):
        for p in range(per_seq):
            for layer in range(layers):
                for kv in range(2):
                    pool[bt[bi, p], layer, kv] = cache[layer, kv, bi, p * block_size:(p + 1) * block_size]
    return pool, ptype, bt


def test_paged_attention_equals_attention(rng):
    pos = np.array([[8, 9, 10], [2, 3, -1]], np.int64)
    q = randn(rng, 2, 3, 4, 8)
    k_all, v_all = randn(rng, 2, 12, 2, 8), randn(rng, 2, 12, 2, 8)
    cache, ctype = _contiguous_cache(k_all, v_all, layer=1, layers=2)
    pool, ptype, bt = _paged_copy(cache, ctype, block_size=4, rng=rng)
    assert not np.array_equal(bt.ravel(), np.arange(1, bt.size + 1))  # really shuffled
    want = run_op("attention", q, (cache, ctype), pos, layer=1, **ATTN)
    close(run_op("paged_attention", q, (pool, ptype), bt, pos, layer=1, **ATTN), want, atol=1e-6)
    close(want, _sdpa_reference(q, k_all, v_all, pos, ATTN["scale"]), atol=1e-5)


def test_paged_append_kv_equals_append_kv(rng):
    ctype = KVCacheT(layers=2, kv_heads=2, head_dim=4, max_seq_len=8)
    cache = randn(rng, 2, 2, 2, 8, 2, 4)
    pool, ptype, bt = _paged_copy(cache, ctype, block_size=2, rng=rng)
    pos = np.array([[3, 4, 5], [6, 7, -1]], np.int64)
    k, v = randn(rng, 2, 3, 2, 4), randn(rng, 2, 3, 2, 4)
    new_cache = run_op("append_kv", (cache, ctype), k, v, pos, layer=0)
    new_pool = run_op("paged_append_kv", (pool, ptype), bt, k, v, pos, layer=0)
    # Every page holds what the contiguous cache holds at the same positions.
    for bi in range(2):
        for p in range(4):
            for layer in range(2):
                for kv in range(2):
                    close(new_pool[bt[bi, p], layer, kv], new_cache[layer, kv, bi, 2 * p:2 * p + 2], atol=0, rtol=0)
    assert np.all(new_pool[0] == pool[0])  # the scratch page is untouched (padding is not written)


# ---- positions, last_token, argmax -----------------------------------------------------------

def test_positions_last_token_argmax(rng):
    tokens, lens = rng.integers(0, 9, (3, 4)), np.array([4, 1, 2], np.int64)
    pos = run_op("positions", tokens, lens)
    assert pos.tolist() == [[0, 1, 2, 3], [0, -1, -1, -1], [0, 1, -1, -1]]
    start = np.array([5, 0, 9], np.int64)
    assert run_op("extend_positions", tokens, start, lens).tolist() == [[5, 6, 7, 8], [0, -1, -1, -1], [9, 10, -1, -1]]
    x = randn(rng, 3, 4, 5)
    close(run_op("last_token", x, lens), np.stack([x[i, n - 1] for i, n in enumerate(lens)]), atol=0, rtol=0)
    x = rng.integers(-3, 3, (3, 6)).astype(np.float32)  # many ties: the first maximum wins
    assert run_op("argmax", x).tolist() == torch.argmax(t(x), -1).tolist() == \
        [row.tolist().index(max(row)) for row in x]


# ---- quantization --------------------------------------------------------------------------

@pytest.mark.parametrize("bits, symmetric", [(8, True), (8, False), (4, True), (4, False)])
def test_quantize_dequantize_round_trip(rng, bits, symmetric):
    g = 16
    w = randn(rng, 6, 64)
    w[1, :16] = 0.0          # an all-zero group
    w[2, 16:32] = np.abs(w[2, 16:32]) + 0.5  # an all-positive group (asymmetric zero point at the edge)
    q, scales, zeros = run_op("quantize", w, bits=bits, group_size=g, symmetric=symmetric)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if (symmetric or bits == 8) else (0, (1 << bits) - 1)
    assert q.min() >= lo and q.max() <= hi
    if symmetric:
        assert np.all(zeros == 0)
    back = run_op("dequantize", q, scales, zeros, bits=bits, group_size=g)
    # Independent dequantization and the error bound: half a step per group.
    step = np.repeat(scales, g, axis=1)
    manual = (q.astype(np.float32) - np.repeat(zeros, g, axis=1)) * step
    close(back, manual, atol=1e-6)
    assert np.all(np.abs(back - w) <= step / 2 * (1 + 1e-5) + 1e-7)
    assert np.all(back[1, :16] == 0)
    # A real quantizer: the error is well below the weights' size.
    assert np.abs(back - w).max() < (0.02 if bits == 8 else 0.3) * np.abs(w).max()


def test_quantized_matmul_vs_torch(rng):
    w, x = randn(rng, 6, 32), randn(rng, 2, 3, 32)
    q, scales, zeros = run_op("quantize", w, bits=4, group_size=8, symmetric=False)
    got = run_op("quantized_matmul", x, q, scales, zeros, bits=4, group_size=8)
    deq = (t(q).float() - t(zeros).float().repeat_interleave(8, 1)) * t(scales).repeat_interleave(8, 1)
    close(got, F.linear(t(x), deq), atol=1e-5)
    exact = F.linear(t(x), t(w)).numpy()  # and near the unquantized product (int4: ~10% off)
    assert np.linalg.norm(got - exact) < 0.2 * np.linalg.norm(exact)
    q, scales, zeros = run_op("quantize", w, bits=8, group_size=8, symmetric=True)
    close(run_op("quantized_matmul", x, q, scales, None, bits=8, group_size=8),
          F.linear(t(x), t(q).float() * t(scales).repeat_interleave(8, 1)), atol=1e-5)


# ---- tensor parallelism --------------------------------------------------------------------

@pytest.mark.parametrize("shard_dim", [0, 1])
def test_sharded_linear_equals_linear(rng, shard_dim):
    x, w = randn(rng, 2, 3, 8), randn(rng, 6, 8)
    got = run_op("sharded_linear", x, w, shard_dim=shard_dim, num_shards=2)
    close(got, run_op("linear", x, w), atol=1e-5)
    close(got, F.linear(t(x), t(w)), atol=1e-5)


def test_all_gather_and_all_reduce_vs_torch(rng):
    shards = randn(rng, 3, 2, 4)
    for dim in (0, 1):
        close(run_op("all_gather", shards, dim=dim, num_shards=3), torch.cat(t(shards).unbind(0), dim), atol=0, rtol=0)
    close(run_op("all_reduce", shards, num_shards=3), shards[0] + shards[1] + shards[2], atol=1e-6)
    close(run_op("all_reduce", shards, num_shards=3, reduction="max"), torch.amax(t(shards), 0), atol=0, rtol=0)


# ---- mixture of experts -------------------------------------------------------------------------

def _mixtral_block(rng, experts: int, top_k: int, hidden: int = 16, inter: int = 8):
    """transformers' own MixtralSparseMoeBlock with random weights (the reference)."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts,
                        num_experts_per_tok=top_k)
    block = MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        block.gate.weight.copy_(t(randn(rng, experts, hidden)))
        block.experts.gate_up_proj.copy_(t(randn(rng, experts, 2 * inter, hidden) * 0.3))
        block.experts.down_proj.copy_(t(randn(rng, experts, hidden, inter) * 0.3))
    return block


@pytest.mark.parametrize("experts,top_k", [(4, 2), (8, 2), (5, 3), (3, 1)])
def test_moe_router_and_ffn_vs_transformers_mixtral_block(rng, experts, top_k):
    block = _mixtral_block(rng, experts, top_k)
    x = randn(rng, 3, 7, 16)
    router = block.gate.weight.detach().numpy()
    weights, indices = run_op("moe_router", x, router, top_k=top_k)
    with torch.no_grad():
        _, ref_w, ref_i = block.gate(t(x).reshape(-1, 16))
        ref = block(t(x))
    np.testing.assert_array_equal(indices.reshape(-1, top_k), ref_i.numpy())
    close(weights.reshape(-1, top_k), ref_w, atol=1e-6)
    out = run_op("moe_ffn", x, weights, indices, block.experts.gate_up_proj.detach().numpy(),
                 block.experts.down_proj.detach().numpy())
    close(out, ref, atol=1e-5)


def test_moe_router_without_normalize_and_ties(rng):
    """normalize=False keeps the softmax probabilities; equal logits go to the lower experts."""
    x, w = randn(rng, 2, 5, 8), randn(rng, 6, 8)
    weights, indices = run_op("moe_router", x, w, top_k=2, normalize=False)
    p = torch.softmax(t(x) @ t(w).T, -1)
    ref = torch.topk(p, 2, dim=-1)
    close(weights, ref.values, atol=1e-6)
    np.testing.assert_array_equal(indices, ref.indices.numpy())
    tied = np.zeros((1, 1, 8), np.float32)  # every logit 0: probabilities all 1/6
    weights, indices = run_op("moe_router", tied, w, top_k=3)
    np.testing.assert_array_equal(indices[0, 0], [0, 1, 2])
    close(weights[0, 0], np.full(3, 1 / 3, np.float32), atol=1e-7)


def test_moe_ffn_is_a_loop_over_tokens_and_slots(rng):
    """An independent formula: for each token, sum over its slots of weight x down(act(gate) * up), gelu."""
    e, h, n = 3, 8, 4
    x, gu, down = randn(rng, 2, 3, h), randn(rng, e, 2 * n, h), randn(rng, e, h, n)
    idx = rng.integers(0, e, (2, 3, 2)).astype(np.int64)
    w = randn(rng, 2, 3, 2)
    out = run_op("moe_ffn", x, w, idx, gu, down, activation="gelu")
    ref = np.zeros_like(x)
    for b in range(2):
        for s in range(3):
            for j in range(2):
                g = gu[idx[b, s, j]] @ x[b, s]
                hid = F.gelu(t(g[:n])).numpy() * g[n:]
                ref[b, s] += w[b, s, j] * (down[idx[b, s, j]] @ hid)
    close(out, ref, atol=1e-5)


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, False)])
def test_quantized_moe_ffn_is_moe_ffn_on_dequantized_experts(rng, bits, symmetric):
    e, h, n = 3, 16, 8
    x, gu, down = randn(rng, 2, 3, h), randn(rng, e, 2 * n, h), randn(rng, e, h, n)
    weights, indices = run_op("moe_router", x, randn(rng, e, h), top_k=2)

    def quant(m, g):
        q, s, z = (np.stack(p) for p in zip(*[run_op("quantize", r, bits=bits, group_size=g, symmetric=symmetric)
                                               for r in m]))
        deq = np.stack([run_op("dequantize", *a, bits=bits, group_size=g) for a in zip(q, s, z)])
        return (q, s, z), deq

    (gq, gs, gz), gdeq = quant(gu, 8)
    (dq, ds, dz), ddeq = quant(down, 4)
    zeros = (gz, dz) if not symmetric else (None, None)
    got = run_op("quantized_moe_ffn", x, weights, indices, gq, gs, dq, ds, *zeros, bits=bits,
                 gate_up_group_size=8, down_group_size=4)
    np.testing.assert_array_equal(got, run_op("moe_ffn", x, weights, indices, gdeq, ddeq))
