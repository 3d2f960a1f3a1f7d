"""Every op of the llm dialect, declared as an OpSpec.

Conventions (the numpy interpreter is the normative semantics):
- Activations are [batch, seq, ...]; `linear` weights are [out, in] as in Hugging Face.
- A position of -1 marks a padding token: `append_kv` does not write it and
  `attention` rows for it are zero.
- Key s is visible to a query at position p iff s <= p (causal, by position).
- Sharded values (inputs of collectives) carry the shard index as their leading dim.
"""

from __future__ import annotations

from typing import Any, Sequence

from .spec import REQUIRED, Attr, Operand, OpSpec, SpecError, dims_match, expect, register, tensor
from .types import KVCacheT, LlmType, PagedKVCacheT, TensorT, is_float, is_int

Types = Sequence[LlmType | None]
Attrs = dict[str, Any]


def _same_as_first(ts: Types, attrs: Attrs) -> tuple[LlmType, ...]:
    return (tensor(ts[0], "operand 0"),)


def _broadcast_to_first(ts: Types, attrs: Attrs) -> tuple[LlmType, ...]:
    a, b = tensor(ts[0], "lhs"), tensor(ts[1], "rhs")
    expect(a.dtype == b.dtype, f"lhs and rhs dtypes differ: {a.dtype} vs {b.dtype}")
    expect(b.rank <= a.rank, f"rhs rank {b.rank} exceeds lhs rank {a.rank}")
    for da, db in zip(reversed(a.shape), reversed(b.shape)):
        expect(db == 1 or dims_match(da, db), f"rhs shape {b.shape} does not broadcast to {a.shape}")
    return (a,)


def _float(t: LlmType | None, what: str) -> TensorT:
    expect(is_float(t), f"{what} must be a float tensor, got {t}")
    return t  # type: ignore[return-value]


def _int(t: LlmType | None, what: str) -> TensorT:
    expect(is_int(t), f"{what} must be an integer tensor, got {t}")
    return t  # type: ignore[return-value]


def _last_dim(x: TensorT, n: int | None, what: str) -> None:
    expect(dims_match(x.shape[-1], n), f"{what}: last dim {x.shape[-1]} != {n}")


# ---- model building blocks -----------------------------------------------------------

def _weight(ts: Types, attrs: Attrs) -> tuple[LlmType, ...]:
    raise SpecError("llm.weight needs its result type given explicitly")


register(OpSpec(
    "weight", "A model parameter, referenced by its checkpoint name (never inlined).",
    operands=(), attrs=(Attr("name", "str"),), infer=None))


def _embedding(ts: Types, attrs: Attrs):
    ids, table = _int(ts[0], "ids"), _float(ts[1], "table")
    return (TensorT(ids.shape + (table.shape[1],), table.dtype),)


register(OpSpec(
    "embedding", "Rows of `table` [vocab, hidden] selected by integer `ids`; an id outside [0, vocab) "
    "reads the nearest row (clamped), so a padding position of -1 in a learned position table reads row 0.",
    operands=(Operand("ids", "int"), Operand("table", "float", 2)), infer=_embedding))


def _norm(ts: Types, attrs: Attrs):
    x = _float(ts[0], "input")
    for i, t in enumerate(ts[1:], 1):
        if t is not None:
            w = _float(t, f"operand {i}")
            _last_dim(x, w.shape[0], f"operand {i} size")
    return (x,)


register(OpSpec(
    "rms_norm", "x / sqrt(mean(x^2, -1) + eps) * weight, computed in f32.",
    operands=(Operand("input", "float"), Operand("weight", "float", 1)),
    attrs=(Attr("eps", "f32", 1e-6),), infer=_norm))

register(OpSpec(
    "layer_norm", "(x - mean) / sqrt(var + eps) * weight + bias over the last dim.",
    operands=(Operand("input", "float"), Operand("weight", "float", 1),
              Operand("bias", "float", 1, optional=True)),
    attrs=(Attr("eps", "f32", 1e-5),), infer=_norm))


def _linear(ts: Types, attrs: Attrs):
    x, w = _float(ts[0], "input"), _float(ts[1], "weight")
    _last_dim(x, w.shape[1], "input vs weight [out, in]")
    if len(ts) > 2 and ts[2] is not None:
        _last_dim(_float(ts[2], "bias"), w.shape[0], "bias vs weight rows")
    return (TensorT(x.shape[:-1] + (w.shape[0],), x.dtype),)


register(OpSpec(
    "linear", "input @ weight^T (+ bias); weight is [out, in] as checkpoints store it.",
    operands=(Operand("input", "float"), Operand("weight", "float", 2),
              Operand("bias", "float", 1, optional=True)), infer=_linear))


def _matmul(ts: Types, attrs: Attrs):
    a, b = _float(ts[0], "lhs"), _float(ts[1], "rhs")
    expect(a.rank >= 2 and b.rank >= 2, "matmul operands need rank >= 2")
    expect(dims_match(a.shape[-1], b.shape[-2]), f"contraction dims differ: {a.shape} @ {b.shape}")
    expect(b.rank == 2 or b.rank == a.rank, "rhs must be rank 2 or have lhs's batch dims")
    return (TensorT(a.shape[:-1] + (b.shape[-1],), a.dtype),)


register(OpSpec(
    "matmul", "numpy matmul: [..., M, K] @ [..., K, N] (rhs may be a plain [K, N]).",
    operands=(Operand("lhs", "float"), Operand("rhs", "float")), infer=_matmul))

register(OpSpec("add", "Elementwise lhs + rhs (rhs broadcasts to lhs).",
                operands=(Operand("lhs"), Operand("rhs")), infer=_broadcast_to_first))
register(OpSpec("mul", "Elementwise lhs * rhs (rhs broadcasts to lhs).",
                operands=(Operand("lhs"), Operand("rhs")), infer=_broadcast_to_first))
register(OpSpec("silu", "x * sigmoid(x).", operands=(Operand("input", "float"),),
                infer=_same_as_first))
register(OpSpec("gelu", "GELU, exact (erf) or tanh approximation.",
                operands=(Operand("input", "float"),),
                attrs=(Attr("approximate", "str", "none", choices=("none", "tanh")),),
                infer=_same_as_first))
register(OpSpec("softmax", "Softmax over the last dim.", operands=(Operand("input", "float"),),
                infer=_same_as_first))
register(OpSpec("scale", "x * factor (Gemma's embedding scale, sqrt(hidden)).",
                operands=(Operand("input", "float"),), attrs=(Attr("factor", "f32"),), infer=_same_as_first))
register(OpSpec("softcap", "cap * tanh(x / cap): soft-capping of logits (Gemma 2).",
                operands=(Operand("input", "float"),), attrs=(Attr("cap", "f32"),), infer=_same_as_first))


def _reshape(ts: Types, attrs: Attrs):
    x = tensor(ts[0], "input")
    shape = list(attrs["shape"])
    out: list[int | None] = []
    for i, d in enumerate(shape):
        if d == 0:
            expect(i < x.rank, f"shape[{i}] = 0 copies an input dim that does not exist")
            out.append(x.shape[i])
        else:
            expect(d > 0, f"shape[{i}] = {d}: use a positive size or 0 (copy the input dim)")
            out.append(d)
    if all(d is not None for d in x.shape + tuple(out)):
        n_in = _prod(x.shape)
        expect(n_in == _prod(out), f"cannot reshape {x.shape} to {tuple(out)}")
    return (TensorT(tuple(out), x.dtype),)


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


register(OpSpec(
    "reshape", "Reshape; a 0 in `shape` copies the input dim at that index (may be dynamic).",
    operands=(Operand("input"),), attrs=(Attr("shape", "i64_array"),), infer=_reshape))


def _rope(ts: Types, attrs: Attrs):
    x, pos = _float(ts[0], "input"), _int(ts[1], "positions")
    expect(x.rank == 4, f"input must be [batch, seq, heads, head_dim], got rank {x.rank}")
    expect(pos.rank == 2, "positions must be [batch, seq]")
    n = len(attrs["inv_freq"])
    _last_dim(x, 2 * n, "head_dim vs 2 * len(inv_freq)")
    return (x,)


register(OpSpec(
    "rope", "Rotary embedding, rotate-half form: angle = position * inv_freq[i] "
    "(inv_freq carries any rope scaling, precomputed as the checkpoint defines it).",
    operands=(Operand("input", "float", 4), Operand("positions", "int", 2)),
    attrs=(Attr("inv_freq", "f32_array"),), infer=_rope))


# ---- attention and the KV cache ------------------------------------------------------

# window W > 0: sliding-window attention, key s visible to position p iff p - W < s <= p (0: all s <= p).
# softcap C > 0: scores become C * tanh(score * scale / C) before the mask (Gemma 2); 0: off.
_ATTN_ATTRS = (Attr("layer", "i64"), Attr("num_heads", "i64"), Attr("num_kv_heads", "i64"),
               Attr("head_dim", "i64"), Attr("scale", "f32"), Attr("window", "i64", 0), Attr("softcap", "f32", 0.0))


def _check_heads(q: TensorT, cache: KVCacheT | PagedKVCacheT, attrs: Attrs) -> None:
    expect(q.rank == 4, "query must be [batch, seq, heads, head_dim]")
    expect(dims_match(q.shape[2], attrs["num_heads"]), f"query heads {q.shape[2]} != num_heads")
    expect(q.shape[3] == attrs["head_dim"] == cache.head_dim, "head_dim differs between query, attribute and cache")
    expect(cache.kv_heads == attrs["num_kv_heads"], "num_kv_heads differs from the cache's")
    expect(attrs["num_heads"] % attrs["num_kv_heads"] == 0, "num_heads must be a multiple of num_kv_heads")
    expect(0 <= attrs["layer"] < cache.layers, f"layer {attrs['layer']} out of range [0, {cache.layers})")


def _attention(ts: Types, attrs: Attrs):
    q, cache, pos = _float(ts[0], "query"), ts[1], _int(ts[2], "positions")
    expect(isinstance(cache, KVCacheT), f"cache must be !llm.kv_cache, got {cache}")
    _check_heads(q, cache, attrs)  # type: ignore[arg-type]
    return (q,)


register(OpSpec(
    "attention", "Causal grouped-query attention of `query` over layer `layer` of a "
    "contiguous cache: key s is visible to a query at position p iff s <= p (and s > p - window "
    "when window > 0); scores are soft-capped when softcap > 0.",
    operands=(Operand("query", "float", 4), Operand("cache", "kv_cache"), Operand("positions", "int", 2)),
    attrs=_ATTN_ATTRS, infer=_attention))


def _append_kv(ts: Types, attrs: Attrs):
    cache, k, v, pos = ts[0], _float(ts[1], "key"), _float(ts[2], "value"), _int(ts[3], "positions")
    expect(isinstance(cache, KVCacheT), f"cache must be !llm.kv_cache, got {cache}")
    _check_kv(cache, k, v, attrs)  # type: ignore[arg-type]
    return (cache,)


def _check_kv(cache: KVCacheT | PagedKVCacheT, k: TensorT, v: TensorT, attrs: Attrs) -> None:
    expect(k.shape == v.shape, f"key {k.shape} and value {v.shape} shapes differ")
    expect(k.rank == 4 and dims_match(k.shape[2], cache.kv_heads) and dims_match(k.shape[3], cache.head_dim),
           f"key must be [batch, seq, {cache.kv_heads}, {cache.head_dim}], got {k.shape}")
    expect(0 <= attrs["layer"] < cache.layers, f"layer {attrs['layer']} out of range [0, {cache.layers})")


register(OpSpec(
    "append_kv", "Write key/value [batch, seq, kv_heads, head_dim] of layer `layer` at "
    "`positions` into a contiguous cache; positions < 0 are not written.",
    operands=(Operand("cache", "kv_cache"), Operand("key", "float", 4), Operand("value", "float", 4),
              Operand("positions", "int", 2)),
    attrs=(Attr("layer", "i64"),), results=("cache",), infer=_append_kv))


def _paged_attention(ts: Types, attrs: Attrs):
    q, pool, bt, pos = _float(ts[0], "query"), ts[1], _int(ts[2], "block_tables"), _int(ts[3], "positions")
    expect(isinstance(pool, PagedKVCacheT), f"pool must be !llm.paged_kv_cache, got {pool}")
    _check_heads(q, pool, attrs)  # type: ignore[arg-type]
    return (q,)


register(OpSpec(
    "paged_attention", "`attention` reading keys/values through a block table: key s of "
    "batch row b lives in page block_tables[b, s // block_size], slot s % block_size.",
    operands=(Operand("query", "float", 4), Operand("pool", "paged_kv_cache"),
              Operand("block_tables", "int", 2), Operand("positions", "int", 2)),
    attrs=_ATTN_ATTRS, infer=_paged_attention))


def _paged_append_kv(ts: Types, attrs: Attrs):
    pool, bt, k, v = ts[0], _int(ts[1], "block_tables"), _float(ts[2], "key"), _float(ts[3], "value")
    _int(ts[4], "positions")
    expect(isinstance(pool, PagedKVCacheT), f"pool must be !llm.paged_kv_cache, got {pool}")
    _check_kv(pool, k, v, attrs)  # type: ignore[arg-type]
    return (pool,)


register(OpSpec(
    "paged_append_kv", "`append_kv` into pages: position p of row b goes to page "
    "block_tables[b, p // block_size], slot p % block_size; p < 0 is not written.",
    operands=(Operand("pool", "paged_kv_cache"), Operand("block_tables", "int", 2),
              Operand("key", "float", 4), Operand("value", "float", 4), Operand("positions", "int", 2)),
    attrs=(Attr("layer", "i64"),), results=("pool",), infer=_paged_append_kv))


def _positions(ts: Types, attrs: Attrs):
    tokens, lens = _int(ts[0], "tokens"), _int(ts[1], "seq_lens")
    expect(tokens.rank == 2 and lens.rank == 1, "tokens must be [batch, seq] and seq_lens [batch]")
    return (TensorT(tokens.shape, "i64"),)


register(OpSpec(
    "positions", "Prefill positions: t for t < seq_lens[b], else -1 (padding).",
    operands=(Operand("tokens", "int", 2), Operand("seq_lens", "int", 1)), infer=_positions))


def _extend_positions(ts: Types, attrs: Attrs):
    tokens, start, lens = _int(ts[0], "tokens"), _int(ts[1], "start_pos"), _int(ts[2], "new_lens")
    expect(tokens.rank == 2 and start.rank == 1 and lens.rank == 1,
           "tokens must be [batch, seq], start_pos and new_lens [batch]")
    return (TensorT(tokens.shape, "i64"),)


register(OpSpec(
    "extend_positions", "Extend positions: start_pos[b] + t for t < new_lens[b], else -1 (padding). "
    "`positions` is the case start_pos = 0.",
    operands=(Operand("tokens", "int", 2), Operand("start_pos", "int", 1), Operand("new_lens", "int", 1)),
    infer=_extend_positions))


def _last_token(ts: Types, attrs: Attrs):
    x, lens = tensor(ts[0], "input"), _int(ts[1], "seq_lens")
    expect(x.rank == 3, "input must be [batch, seq, hidden]")
    return (TensorT((x.shape[0], x.shape[2]), x.dtype),)


register(OpSpec(
    "last_token", "Row seq_lens[b] - 1 of each batch entry: [batch, seq, d] -> [batch, d].",
    operands=(Operand("input", "tensor", 3), Operand("seq_lens", "int", 1)), infer=_last_token))


def _argmax(ts: Types, attrs: Attrs):
    x = _float(ts[0], "input")
    return (TensorT(x.shape[:-1], "i64"),)


register(OpSpec("argmax", "Index of the largest value along the last dim (first on ties).",
                operands=(Operand("input", "float"),), infer=_argmax))


# ---- mixture of experts ----------------------------------------------------------------

# Expert FFN activations: the gate activation of each expert's gated MLP, act(gate) * up.
MOE_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")


def _moe_router(ts: Types, attrs: Attrs):
    x, w = _float(ts[0], "input"), _float(ts[1], "weight")
    _last_dim(x, w.shape[1], "input vs router weight [experts, hidden]")
    k, e = attrs["top_k"], w.shape[0]
    expect(1 <= k and (e is None or k <= e), f"top_k {k} must be in [1, experts={e}]")
    lead = x.shape[:-1] + (k,)
    return (TensorT(lead, x.dtype), TensorT(lead, "i64"))


register(OpSpec(
    "moe_router", "Top-k routing of each token over the experts: p = softmax(input @ weight^T) "
    "[..., experts] in f32, `indices` the top_k experts by p, largest first (ties: lower index "
    "first), `weights` their p, divided by their sum when `normalize` (Mixtral). Not a `linear`, "
    "so no pass fuses or quantizes the router: a routing decision is discontinuous.",
    operands=(Operand("input", "float"), Operand("weight", "float", 2)),
    attrs=(Attr("top_k", "i64"), Attr("normalize", "bool", True)),
    results=("weights", "indices"), infer=_moe_router))


def _check_routing(x: TensorT, w: TensorT, idx: TensorT) -> None:
    expect(w.rank == x.rank and idx.rank == x.rank, f"routing weights {w} and indices {idx} must be "
           f"[..., top_k] over the input's leading dims {x.shape[:-1]}")
    expect(all(dims_match(a, b) for a, b in zip(w.shape, idx.shape)), f"routing weights {w.shape} and "
           f"indices {idx.shape} differ")
    expect(all(dims_match(a, b) for a, b in zip(w.shape[:-1], x.shape[:-1])),
           f"routing {w.shape} does not fit the input {x.shape}")


def _check_experts(x: TensorT, gate_up: tuple, down: tuple) -> None:
    """gate_up [E, 2I, H] and down [E, H, I] (shapes) against the input [..., H]."""
    expect(gate_up[0] == down[0], f"gate_up has {gate_up[0]} experts, down {down[0]}")
    expect(gate_up[2] == down[1], f"gate_up in-features {gate_up[2]} != down out-features {down[1]}")
    expect(gate_up[1] == 2 * down[2], f"gate_up rows {gate_up[1]} != 2 x down in-features {down[2]}")
    _last_dim(x, gate_up[2], "input vs expert hidden size")


def _moe_ffn(ts: Types, attrs: Attrs):
    x, w, idx = _float(ts[0], "input"), _float(ts[1], "weights"), _int(ts[2], "indices")
    gu, down = _float(ts[3], "gate_up"), _float(ts[4], "down")
    _check_routing(x, w, idx)
    _check_experts(x, gu.shape, down.shape)
    return (x,)


register(OpSpec(
    "moe_ffn", "Sum over the k routed experts of weights[..., j] * FFN_e(input), e = indices[..., j]: "
    "FFN_e(x) = down[e] @ (act(g) * u), [g; u] = gate_up[e] @ x (gate rows first). gate_up is "
    "[experts, 2 x inter, hidden], down [experts, hidden, inter], as transformers 5 stores them.",
    operands=(Operand("input", "float"), Operand("weights", "float"), Operand("indices", "int"),
              Operand("gate_up", "float", 3), Operand("down", "float", 3)),
    attrs=(Attr("activation", "str", "silu", choices=MOE_ACTIVATIONS),), infer=_moe_ffn))


# ---- quantization ----------------------------------------------------------------------

_QATTRS = (Attr("bits", "i64", 8, choices=(4, 8)), Attr("group_size", "i64", 128))


def _groups(k: int | None, group_size: int) -> int | None:
    if k is None:
        return None
    expect(group_size > 0 and k % group_size == 0, f"in-features {k} not divisible by group_size {group_size}")
    return k // group_size


def _quantize(ts: Types, attrs: Attrs):
    w = _float(ts[0], "input")
    expect(w.rank == 2, "quantize takes a [out, in] weight")
    g = _groups(w.shape[1], attrs["group_size"])
    return (TensorT(w.shape, "i8"), TensorT((w.shape[0], g), "f32"), TensorT((w.shape[0], g), "i8"))


register(OpSpec(
    "quantize", "Group-wise quantization along the in-dim: q = clamp(round(w / scale) + zero); "
    "symmetric gives zero = 0. int4 values are held in i8 until the archive packs them.",
    operands=(Operand("input", "float", 2),),
    attrs=_QATTRS + (Attr("symmetric", "bool", True),),
    results=("values", "scales", "zero_points"), infer=_quantize))


def _check_q(q: TensorT, scales: TensorT, zeros: LlmType | None, attrs: Attrs) -> None:
    expect(q.rank == 2, "quantized values must be [out, in]")
    g = _groups(q.shape[1], attrs["group_size"])
    expect(scales.shape == (q.shape[0], g), f"scales must be [{q.shape[0]}, {g}], got {scales.shape}")
    if zeros is not None:
        expect(tensor(zeros, "zero_points").shape == scales.shape, "zero_points must match scales")


def _dequantize(ts: Types, attrs: Attrs):
    q, s = _int(ts[0], "values"), _float(ts[1], "scales")
    _check_q(q, s, ts[2] if len(ts) > 2 else None, attrs)
    return (TensorT(q.shape, s.dtype),)


register(OpSpec(
    "dequantize", "w = (q - zero) * scale, one scale per group of `group_size` in-features.",
    operands=(Operand("values", "int", 2), Operand("scales", "float", 2),
              Operand("zero_points", "int", 2, optional=True)),
    attrs=_QATTRS, infer=_dequantize))


def _quantized_matmul(ts: Types, attrs: Attrs):
    x, q, s = _float(ts[0], "input"), _int(ts[1], "values"), _float(ts[2], "scales")
    _check_q(q, s, ts[3] if len(ts) > 3 else None, attrs)
    if attrs["act_bits"]:
        expect(len(ts) < 4 or ts[3] is None, "act_bits takes symmetric weights (no zero points)")
        expect(attrs["bits"] == 8 or attrs["bits"] == 4, "act_bits takes int8 or int4 weights")
    _last_dim(x, q.shape[1], "input vs weight [out, in]")
    return (TensorT(x.shape[:-1] + (q.shape[0],), x.dtype),)


# act_bits: max |x| of a row is floored at ACT_TINY before 127 (or 32767) / max |x|, so a zero row stays
# zero (the interpreter and the lowering both use it)
ACT_TINY = 1e-30


register(OpSpec(
    "quantized_matmul", "linear with a group-quantized weight: input @ dequantize(q)^T, "
    "dequantized inside the matmul, never as a whole matrix. act_bits 8: each row of the input "
    "is first quantized to int8 with its own scale (max |x| / 127, round half to even), so the "
    "product is an integer one (int8 x int8 -> int32) scaled after. act_bits 16 on int8 weights: "
    "two int8 planes, the row's int8 form and the int8 form of what it missed, each with its own "
    "scale. On int4 weights act_bits 8 (w4a8) quantizes each group of `group_size` in-features of "
    "a row to int8 with its own scale (an integer product per group, scaled after); act_bits 16 "
    "(w4a16): one int16 plane (max |x| / 32767), the form IREE's int16 x uint4 kernels take.",
    operands=(Operand("input", "float"), Operand("values", "int", 2), Operand("scales", "float", 2),
              Operand("zero_points", "int", 2, optional=True)),
    attrs=_QATTRS + (Attr("act_bits", "i64", 0, choices=(0, 8, 16)),), infer=_quantized_matmul))


def _check_q3(q: TensorT, scales: TensorT, zeros: LlmType | None, group_size: int, what: str) -> None:
    expect(q.rank == 3 and scales.rank == 3, f"{what} values and scales must be [experts, out, ...]")
    g = _groups(q.shape[2], group_size)
    expect(scales.shape == (q.shape[0], q.shape[1], g), f"{what} scales must be "
           f"[{q.shape[0]}, {q.shape[1]}, {g}], got {scales.shape}")
    if zeros is not None:
        expect(tensor(zeros, f"{what} zero_points").shape == scales.shape, f"{what} zero_points must match scales")


def _quantized_moe_ffn(ts: Types, attrs: Attrs):
    x, w, idx = _float(ts[0], "input"), _float(ts[1], "weights"), _int(ts[2], "indices")
    gq, gs, dq, ds = _int(ts[3], "gate_up_values"), _float(ts[4], "gate_up_scales"), \
        _int(ts[5], "down_values"), _float(ts[6], "down_scales")
    gz, dz = (ts[i] if len(ts) > i else None for i in (7, 8))
    expect((gz is None) == (dz is None), "gate_up and down zero points must both be given or both absent")
    _check_routing(x, w, idx)
    _check_q3(gq, gs, gz, attrs["gate_up_group_size"], "gate_up")
    _check_q3(dq, ds, dz, attrs["down_group_size"], "down")
    _check_experts(x, gq.shape, dq.shape)
    return (x,)


register(OpSpec(
    "quantized_moe_ffn", "moe_ffn with group-quantized expert weights: gate_up and down are "
    "dequantize(values, scales, zero_points) per expert (groups along each row's in-features, as "
    "`dequantize`), never dequantized as whole matrices.",
    operands=(Operand("input", "float"), Operand("weights", "float"), Operand("indices", "int"),
              Operand("gate_up_values", "int", 3), Operand("gate_up_scales", "float", 3),
              Operand("down_values", "int", 3), Operand("down_scales", "float", 3),
              Operand("gate_up_zero_points", "int", 3, optional=True),
              Operand("down_zero_points", "int", 3, optional=True)),
    attrs=(Attr("bits", "i64", 8, choices=(4, 8)), Attr("gate_up_group_size", "i64"),
           Attr("down_group_size", "i64"), Attr("activation", "str", "silu", choices=MOE_ACTIVATIONS)),
    infer=_quantized_moe_ffn))


# ---- tensor parallelism ----------------------------------------------------------------

def _sharded_linear(ts: Types, attrs: Attrs):
    (out,) = _linear(ts[:2], attrs)
    w = tensor(ts[1], "weight")
    n = attrs["num_shards"]
    expect(attrs["shard_dim"] in (0, 1), "shard_dim must be 0 (split out-features) or 1 (split in-features)")
    expect(n >= 1 and w.shape[attrs["shard_dim"]] % n == 0,
           f"weight dim {attrs['shard_dim']} ({w.shape[attrs['shard_dim']]}) not divisible by num_shards {n}")
    return (out,)


register(OpSpec(
    "sharded_linear", "linear computed as `num_shards` slices of the weight: shard_dim 0 "
    "splits out-features (results concatenated), 1 splits in-features (partial sums added).",
    operands=(Operand("input", "float"), Operand("weight", "float", 2)),
    attrs=(Attr("shard_dim", "i64"), Attr("num_shards", "i64")), infer=_sharded_linear))


def _all_gather(ts: Types, attrs: Attrs):
    x, n, dim = tensor(ts[0], "input"), attrs["num_shards"], attrs["dim"]
    expect(x.rank >= 2 and dims_match(x.shape[0], n), f"input must be [num_shards={n}, ...], got {x.shape}")
    inner = list(x.shape[1:])
    expect(0 <= dim < len(inner), f"dim {dim} out of range for {tuple(inner)}")
    inner[dim] = None if inner[dim] is None else inner[dim] * n
    return (TensorT(tuple(inner), x.dtype),)


register(OpSpec(
    "all_gather", "Concatenate the shards of [num_shards, ...] along `dim` of the shard shape.",
    operands=(Operand("input"),), attrs=(Attr("dim", "i64"), Attr("num_shards", "i64")),
    infer=_all_gather))


def _all_reduce(ts: Types, attrs: Attrs):
    x, n = tensor(ts[0], "input"), attrs["num_shards"]
    expect(x.rank >= 1 and dims_match(x.shape[0], n), f"input must be [num_shards={n}, ...], got {x.shape}")
    return (TensorT(x.shape[1:], x.dtype),)


register(OpSpec(
    "all_reduce", "Reduce the shards of [num_shards, ...] elementwise (sum or max).",
    operands=(Operand("input"),),
    attrs=(Attr("num_shards", "i64"), Attr("reduction", "str", "sum", choices=("sum", "max"))),
    infer=_all_reduce))


# The per-device form that shard-tp emits: each device's ops are separate ops carrying a
# discardable `llm.device = i` placement, so a collective is one op per receiving device whose
# operands are the shards, operand i computed on device i (docs/parallel.md).

def _device_shards(ts: Types) -> list[TensorT]:
    xs = [tensor(t, f"input {i}") for i, t in enumerate(ts[0])]  # type: ignore[arg-type]
    for i, x in enumerate(xs[1:], 1):
        expect(x.rank == xs[0].rank and x.dtype == xs[0].dtype, f"input {i} ({x}) differs from {xs[0]}")
    return xs


def _device_all_reduce(ts: Types, attrs: Attrs):
    xs = _device_shards(ts)
    for i, x in enumerate(xs[1:], 1):
        expect(all(dims_match(a, b) for a, b in zip(x.shape, xs[0].shape)),
               f"input {i} shape {x.shape} != {xs[0].shape}")
    return (xs[0],)


register(OpSpec(
    "device_all_reduce", "One device's result of an all-reduce over per-device partials: the "
    "elementwise sum (or max) of `inputs` in operand order, input i from device i. Every device "
    "runs one over the same inputs in the same order, so the replicas are bitwise equal.",
    operands=(Operand("inputs", variadic=True),),
    attrs=(Attr("reduction", "str", "sum", choices=("sum", "max")),), infer=_device_all_reduce))


def _device_all_gather(ts: Types, attrs: Attrs):
    return _concat(ts, {"axis": attrs["dim"]})


register(OpSpec(
    "device_all_gather", "One device's result of an all-gather: `inputs` (input i from device i) "
    "concatenated along `dim`.",
    operands=(Operand("inputs", variadic=True),), attrs=(Attr("dim", "i64"),), infer=_device_all_gather))

__all__ = ["REQUIRED"]


# ---- ops that passes introduce -------------------------------------------------------

def _axis(axis: int, rank: int) -> int:
    expect(-rank <= axis < rank, f"axis {axis} out of range for rank {rank}")
    return axis % rank


def _concat(ts: Types, attrs: Attrs):
    xs = [tensor(t, f"input {i}") for i, t in enumerate(ts[0])]  # type: ignore[arg-type]
    rank = xs[0].rank
    axis = _axis(attrs["axis"], rank)
    for i, x in enumerate(xs[1:], 1):
        expect(x.rank == rank and x.dtype == xs[0].dtype, f"input {i} ({x}) differs in rank or dtype from {xs[0]}")
        for d in range(rank):
            expect(d == axis or dims_match(x.shape[d], xs[0].shape[d]), f"input {i} shape {x.shape} "
                   f"differs from {xs[0].shape} off axis {axis}")
    sizes = [x.shape[axis] for x in xs]
    shape = list(xs[0].shape)
    shape[axis] = None if None in sizes else sum(sizes)
    return (TensorT(tuple(shape), xs[0].dtype),)


register(OpSpec(
    "concat", "Concatenate tensors along `axis` (fuse-qkv joins weights with it; fold-weights "
    "evaluates it at compile time).",
    operands=(Operand("inputs", variadic=True),), attrs=(Attr("axis", "i64"),), infer=_concat))


def _slice(ts: Types, attrs: Attrs):
    x = tensor(ts[0], "input")
    axis = _axis(attrs["axis"], x.rank)
    start, size = attrs["start"], attrs["size"]
    expect(start >= 0 and size > 0, f"start {start} and size {size} must be >= 0 and > 0")
    expect(x.shape[axis] is None or start + size <= x.shape[axis],
           f"slice [{start}, {start + size}) exceeds dim {axis} of size {x.shape[axis]}")
    shape = list(x.shape)
    shape[axis] = size
    return (TensorT(tuple(shape), x.dtype),)


register(OpSpec(
    "slice", "input[..., start:start+size, ...] along `axis`.",
    operands=(Operand("input"),), attrs=(Attr("axis", "i64"), Attr("start", "i64"), Attr("size", "i64")),
    infer=_slice))

# gated activations of a fused gate/up linear -> the activation of the gate half:
# act(y[..., :N]) * y[..., N:] (SwiGLU for Llama, GeGLU with erf or tanh gelu for Gemma)
GATED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}
ACTIVATIONS = ("silu", "gelu", "gelu_tanh") + tuple(GATED_ACTIVATIONS)


def _fused_linear(ts: Types, attrs: Attrs):
    (y,) = _linear(ts, attrs)
    if attrs["activation"] not in GATED_ACTIVATIONS:
        return (y,)
    n = y.shape[-1]
    expect(n is not None and n % 2 == 0, f"{attrs['activation']} needs an even number of out-features, got {n}")
    return (TensorT(y.shape[:-1] + (n // 2,), y.dtype),)


register(OpSpec(
    "fused_linear", "linear with its activation as the matmul's epilogue: silu(y), gelu(y), "
    "gelu_tanh(y), or gated for a weight of 2N fused gate/up rows: act(y[..., :N]) * y[..., N:] "
    "with act silu (swiglu), gelu (geglu) or gelu_tanh (geglu_tanh).",
    operands=(Operand("input", "float"), Operand("weight", "float", 2),
              Operand("bias", "float", 1, optional=True)),
    attrs=(Attr("activation", "str", choices=ACTIVATIONS),), infer=_fused_linear))


def _add_rms_norm(ts: Types, attrs: Attrs):
    (s,) = _broadcast_to_first(ts[:2], attrs)
    _norm([s, ts[2]], attrs)
    return (s, s)


register(OpSpec(
    "add_rms_norm", "sum = input + residual; normed = rms_norm(sum, weight): the residual add "
    "and the next norm in one pass over the activations.",
    operands=(Operand("input", "float"), Operand("residual", "float"), Operand("weight", "float", 1)),
    attrs=(Attr("eps", "f32", 1e-6),), results=("sum", "normed"), infer=_add_rms_norm))


def _convert(ts: Types, attrs: Attrs):
    x = _float(ts[0], "input")
    return (TensorT(x.shape, attrs["dtype"]),)


register(OpSpec(
    "convert", "Elementwise conversion to the float type `dtype` (round to nearest even); "
    "convert-weights puts it after an embedding whose table it stores in f16/bf16.",
    operands=(Operand("input", "float"),), attrs=(Attr("dtype", "str", choices=("f32", "f16", "bf16")),),
    infer=_convert))
