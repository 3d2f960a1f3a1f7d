"""A numpy reference interpreter for llm IR: the oracle every pass is checked against.

It runs any function of a module op by op, in f32, with value semantics (an op
that "updates" a cache returns a new array). It is written for clarity, not
speed: each op's semantics fit in a few lines of numpy, and those lines are the
definition the lowering to IREE must match.
"""

from __future__ import annotations

from math import erf, sqrt
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from iree.compiler import ir

from . import ops as _ops  # noqa: F401  (registers the op specs)
from .attrs import op_attrs, op_operands
from .context import functions, location_name
from .spec import lookup
from .types import KVCacheT, PagedKVCacheT, TensorT, from_mlir, numpy_dtype

Array = np.ndarray
Impl = Callable[..., Any]
IMPLS: dict[str, Impl] = {}


class InterpreterError(RuntimeError):
    pass


def impl(name: str):
    def deco(fn: Impl) -> Impl:
        IMPLS[name] = fn
        return fn
    return deco


def empty_kv_cache(t: KVCacheT, batch: int) -> Array:
    """Contiguous cache value: [layers, 2, batch, max_seq_len, kv_heads, head_dim]."""
    return np.zeros((t.layers, 2, batch, t.max_seq_len, t.kv_heads, t.head_dim), numpy_dtype(t.dtype))


def empty_page_pool(t: PagedKVCacheT, num_pages: int) -> Array:
    return np.zeros(t.pool_shape(num_pages), numpy_dtype(t.dtype))


# ---- op semantics ------------------------------------------------------------------

@impl("embedding")
def _embedding(a, ids, table):
    return table[np.clip(ids, 0, table.shape[0] - 1)]  # the lowering's clamp: a padding position -1 reads row 0


@impl("rms_norm")
def _rms_norm(a, x, w):
    var = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return (x / np.sqrt(var + np.float32(a["eps"])) * w).astype(np.float32)


@impl("layer_norm")
def _layer_norm(a, x, w, b=None):
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + np.float32(a["eps"])) * w
    return y if b is None else y + b


@impl("linear")
def _linear(a, x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


@impl("matmul")
def _matmul(a, x, y):
    return x @ y


@impl("add")
def _add(a, x, y):
    return x + y


@impl("mul")
def _mul(a, x, y):
    return x * y


@impl("silu")
def _silu(a, x):
    return x / (np.float32(1) + np.exp(-x))


_erf = np.vectorize(erf, otypes=[np.float64])


@impl("gelu")
def _gelu(a, x):
    if a["approximate"] == "tanh":
        return (0.5 * x * (1 + np.tanh(sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))).astype(x.dtype)
    return (0.5 * x * (1 + _erf(x / sqrt(2)))).astype(x.dtype)


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@impl("scale")
def _scale(a, x):
    return (x * np.float32(a["factor"])).astype(x.dtype)


@impl("softcap")
def _softcap(a, x):
    cap = np.float32(a["cap"])
    return (np.tanh(x / cap) * cap).astype(x.dtype)


@impl("softmax")
def _softmax_op(a, x):
    return _softmax(x)


@impl("reshape")
def _reshape(a, x):
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(a["shape"])])


@impl("rope")
def _rope(a, x, pos):
    inv = np.asarray(a["inv_freq"], np.float32)
    ang = pos.astype(np.float32)[..., None] * inv  # [B, T, D/2]
    cos, sin = np.cos(ang)[:, :, None, :], np.sin(ang)[:, :, None, :]
    x1, x2 = x[..., : inv.size], x[..., inv.size:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _attend(a, q: Array, k: Array, v: Array, pos: Array) -> Array:
    """q [B,T,NH,D], k/v [B,S,KH,D]; key s visible iff s <= pos[b,t] (and s > pos - window with a
    window); rows with pos < 0 are 0."""
    b_, t_, nh, d = q.shape
    kh = k.shape[2]
    qg = q.reshape(b_, t_, kh, nh // kh, d)
    scores = np.einsum("btkgd,bskd->bkgts", qg, k) * np.float32(a["scale"])
    cap = np.float32(a.get("softcap", 0.0))
    if cap > 0:
        scores = (np.tanh(scores / cap) * cap).astype(np.float32)
    keys = np.arange(k.shape[1])[None, None, :]
    visible = keys <= pos[:, :, None]  # [B, T, S]
    if a.get("window", 0) > 0:
        visible &= keys > pos[:, :, None] - a["window"]
    scores = np.where(visible[:, None, None], scores, -np.inf)
    live = (pos >= 0)[:, None, None, :, None]
    probs = np.where(live, _softmax(np.where(live, scores, 0)), 0)
    out = np.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b_, t_, nh, d).astype(q.dtype)


@impl("attention")
def _attention(a, q, cache, pos):
    layer = a["layer"]
    return _attend(a, q, cache[layer, 0], cache[layer, 1], pos)


@impl("append_kv")
def _append_kv(a, cache, k, v, pos):
    out = cache.copy()
    b_idx, t_idx = np.nonzero((pos >= 0) & (pos < cache.shape[3]))
    out[a["layer"], 0, b_idx, pos[b_idx, t_idx]] = k[b_idx, t_idx]
    out[a["layer"], 1, b_idx, pos[b_idx, t_idx]] = v[b_idx, t_idx]
    return out


def _gather_pages(pool: Array, bt: Array, layer: int, kv: int) -> Array:
    """[B, P * block_size, KH, D] view of a layer's K or V through the block tables."""
    pages = pool[bt, layer, kv]  # [B, P, bs, KH, D]
    return pages.reshape(bt.shape[0], -1, *pool.shape[4:])


@impl("paged_attention")
def _paged_attention(a, q, pool, bt, pos):
    layer = a["layer"]
    return _attend(a, q, _gather_pages(pool, bt, layer, 0), _gather_pages(pool, bt, layer, 1), pos)


@impl("paged_append_kv")
def _paged_append_kv(a, pool, bt, k, v, pos):
    out = pool.copy()
    bs = pool.shape[3]
    b_idx, t_idx = np.nonzero((pos >= 0) & (pos < bt.shape[1] * bs))
    p = pos[b_idx, t_idx]
    pages = bt[b_idx, p // bs]
    out[pages, a["layer"], 0, p % bs] = k[b_idx, t_idx]
    out[pages, a["layer"], 1, p % bs] = v[b_idx, t_idx]
    return out


@impl("positions")
def _positions(a, tokens, lens):
    t = np.arange(tokens.shape[1], dtype=np.int64)[None, :]
    return np.where(t < lens[:, None], t, -1).astype(np.int64)


@impl("extend_positions")
def _extend_positions(a, tokens, start, lens):
    t = np.arange(tokens.shape[1], dtype=np.int64)[None, :]
    return np.where(t < lens[:, None], start[:, None].astype(np.int64) + t, -1).astype(np.int64)


@impl("last_token")
def _last_token(a, x, lens):
    return x[np.arange(x.shape[0]), lens - 1]


@impl("argmax")
def _argmax(a, x):
    return np.argmax(x, axis=-1).astype(np.int64)


@impl("moe_router")
def _moe_router(a, x, w):
    """Mixtral's MixtralTopKRouter: softmax in f32, top-k (a stable sort: ties to the lower
    expert), the chosen probabilities renormalised to sum 1 when `normalize`."""
    p = _softmax((x @ w.T).astype(np.float32))
    idx = np.argsort(-p, axis=-1, kind="stable")[..., : a["top_k"]]
    top = np.take_along_axis(p, idx, axis=-1)
    if a["normalize"]:
        top = top / top.sum(-1, keepdims=True)
    return top.astype(np.float32), idx.astype(np.int64)


def _gate_activation(name: str, x: Array) -> Array:
    if name == "silu":
        return _silu({}, x)
    return _gelu({"approximate": "tanh" if name == "gelu_tanh" else "none"}, x)


@impl("moe_ffn")
def _moe_ffn(a, x, weights, indices, gate_up, down):
    """Per token and routed slot j: the expert's gated MLP on the token, times weights[..., j]."""
    h, n = x.shape[-1], down.shape[-1]
    xs = x.reshape(-1, h)
    ws, ids = weights.reshape(len(xs), -1), indices.reshape(len(xs), -1)
    out = np.zeros_like(xs)
    for j in range(ids.shape[1]):
        gu = np.einsum("tok,tk->to", gate_up[ids[:, j]], xs)  # [tokens, 2 x inter]
        act = _gate_activation(a["activation"], gu[:, :n]) * gu[:, n:]
        out += ws[:, j: j + 1] * np.einsum("thi,ti->th", down[ids[:, j]], act)
    return out.reshape(x.shape).astype(np.float32)


def _qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a quantized value; asymmetric int4 is unsigned (0..15)."""
    if symmetric or bits == 8:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@impl("quantize")
def _quantize(a, w):
    g, (lo, hi) = a["group_size"], _qrange(a["bits"], a["symmetric"])
    wg = w.reshape(w.shape[0], -1, g)
    if a["symmetric"]:
        scale = np.abs(wg).max(-1) / hi
        zero = np.zeros_like(scale)
    else:
        mn, mx = np.minimum(wg.min(-1), 0), np.maximum(wg.max(-1), 0)
        scale = (mx - mn) / (hi - lo)
        zero = np.round(lo - mn / np.where(scale == 0, 1, scale))
    scale = np.where(scale == 0, 1, scale).astype(np.float32)
    q = np.clip(np.round(wg / scale[..., None]) + zero[..., None], lo, hi)
    return q.reshape(w.shape).astype(np.int8), scale, zero.astype(np.int8)


@impl("dequantize")
def _dequantize(a, q, scales, zeros=None):
    g = a["group_size"]
    qg = q.reshape(q.shape[0], -1, g).astype(np.float32)
    if zeros is not None:
        qg = qg - zeros[..., None].astype(np.float32)
    return (qg * scales[..., None]).reshape(q.shape).astype(np.float32)


@impl("quantized_matmul")
def _quantized_matmul(a, x, q, scales, zeros=None):
    if a.get("act_bits") == 16 and a["bits"] == 4:  # w4a16: one int16 plane
        q16, s16 = act_quantize_rows(x, 16)
        x = q16.astype(np.float32) * s16
    elif a.get("act_bits") and a["bits"] == 4:  # w4a8: int8 per row and group of the weight's
        x8, s8 = act_quantize_rows(np.asarray(x, np.float32).reshape(*x.shape[:-1], -1, a["group_size"]))
        x = (x8.astype(np.float32) * s8).reshape(x.shape)
    elif a.get("act_bits"):
        x = sum(p.astype(np.float32) * s for p, s in act_planes(x, a["act_bits"] // 8))
    return x @ _dequantize(a, q, scales, zeros).T


def act_quantize_rows(x: Array, bits: int = 8) -> tuple[Array, Array]:
    """int8 (or int16) rows of `x` and their scales: q = roundeven(x * (L / max|x|)), scale =
    max|x| / L, L = 127 (32767). In f32, in this order, as the lowering computes it
    (lowering/quantized.py)."""
    x = np.asarray(x, np.float32)
    limit = np.float32(2 ** (bits - 1) - 1)
    amax = np.abs(x).max(axis=-1, keepdims=True)
    q = np.rint(x * (limit / np.maximum(amax, np.float32(_ops.ACT_TINY)))).astype(np.int8 if bits == 8 else np.int16)
    return q, (amax / limit).astype(np.float32)


def act_planes(x: Array, n: int) -> list[tuple[Array, Array]]:
    """`n` int8 planes of x's rows with their scales: the first is act_quantize_rows(x), each
    next one quantizes what the planes so far missed (x - q * scale, in f32)."""
    planes, rest = [], np.asarray(x, np.float32)
    for _ in range(n):
        q, s = act_quantize_rows(rest)
        planes.append((q, s))
        rest = rest - q.astype(np.float32) * s
    return planes


def _dequantize_experts(bits: int, group_size: int, q: Array, scales: Array, zeros: Array | None) -> Array:
    """[E, N, K] expert weights: each expert's [N, K] matrix dequantized as `dequantize` does."""
    e, n, k = q.shape
    flat = _dequantize({"bits": bits, "group_size": group_size}, q.reshape(e * n, k), scales.reshape(e * n, -1),
                       None if zeros is None else zeros.reshape(e * n, -1))
    return flat.reshape(e, n, k)


@impl("quantized_moe_ffn")
def _quantized_moe_ffn(a, x, weights, indices, gq, gs, dq, ds, gz=None, dz=None):
    gate_up = _dequantize_experts(a["bits"], a["gate_up_group_size"], gq, gs, gz)
    down = _dequantize_experts(a["bits"], a["down_group_size"], dq, ds, dz)
    return _moe_ffn(a, x, weights, indices, gate_up, down)


@impl("sharded_linear")
def _sharded_linear(a, x, w):
    n = a["num_shards"]
    if a["shard_dim"] == 0:
        return np.concatenate([x @ s.T for s in np.split(w, n, axis=0)], axis=-1)
    xs = np.split(x, n, axis=-1)
    return sum(xi @ wi.T for xi, wi in zip(xs, np.split(w, n, axis=1)))


@impl("all_gather")
def _all_gather(a, x):
    return np.concatenate(list(x), axis=a["dim"])


@impl("all_reduce")
def _all_reduce(a, x):
    return x.sum(0) if a["reduction"] == "sum" else x.max(0)


@impl("device_all_reduce")
def _device_all_reduce(a, xs):
    out = xs[0]
    for x in xs[1:]:  # left to right, the order every device uses
        out = out + x if a["reduction"] == "sum" else np.maximum(out, x)
    return out


@impl("device_all_gather")
def _device_all_gather(a, xs):
    return np.concatenate(xs, axis=a["dim"])


@impl("concat")
def _concat(a, xs):
    return np.concatenate(xs, axis=a["axis"])


@impl("slice")
def _slice(a, x):
    idx = [slice(None)] * x.ndim
    idx[a["axis"]] = slice(a["start"], a["start"] + a["size"])
    return x[tuple(idx)]


@impl("fused_linear")
def _fused_linear(a, x, w, b=None):
    y = _linear(a, x, w, b)
    act = a["activation"]
    if act in _ops.GATED_ACTIVATIONS:
        n = y.shape[-1] // 2
        return _gate_activation(_ops.GATED_ACTIVATIONS[act], y[..., :n]) * y[..., n:]
    return _gate_activation(act, y)


def round_float(x: Array, dtype: str) -> Array:
    """`x` rounded to float type `dtype` (nearest even): f16 as float16, bf16 held in f32."""
    if dtype == "f16":
        return x.astype(np.float16)
    x = x.astype(np.float32)
    if dtype != "bf16":
        return x
    bits = x.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(x), x, rounded.view(np.float32))


@impl("convert")
def _convert(a, x):
    return round_float(x, a["dtype"])


@impl("add_rms_norm")
def _add_rms_norm(a, x, r, w):
    s = x + r
    return s, _rms_norm(a, s, w)


# ---- driver ---------------------------------------------------------------------------

def _check_arg(i: int, value: Array, t) -> None:
    if isinstance(t, TensorT):
        if value.ndim != t.rank or any(d is not None and d != s for d, s in zip(t.shape, value.shape)):
            raise InterpreterError(f"argument {i}: shape {value.shape} does not fit {t}")


def run_function(module: ir.Module, name: str, args: Sequence[Array],
                 weights: Mapping[str, Array]) -> list[Array]:
    """Execute function `name` on numpy `args`; `weights` maps llm.weight names to arrays."""
    fns = functions(module)
    if name not in fns:
        raise InterpreterError(f"no function '{name}' (have: {', '.join(fns)})")
    block = fns[name].regions[0].blocks[0]
    if len(args) != len(block.arguments):
        raise InterpreterError(f"{name} takes {len(block.arguments)} arguments, got {len(args)}")
    env: dict[ir.Value, Any] = {}
    for i, (v, a) in enumerate(zip(block.arguments, args)):
        _check_arg(i, a, from_mlir(v.type))
        env[v] = a
    for op in block.operations:
        op = op.operation
        if op.name == "func.return":
            return [env[v] for v in op.operands]
        env.update(zip(op.results, _run_op(op, env, weights)))
    raise InterpreterError(f"{name}: no func.return")


def _run_op(op: ir.Operation, env: dict, weights: Mapping[str, Array]) -> tuple:
    if not op.name.startswith("llm."):
        raise InterpreterError(f"'{op.name}' at {location_name(op.location)}: only llm ops can be interpreted")
    spec = lookup(op.name)
    attrs = op_attrs(spec, op)
    if spec.name == "weight":
        if attrs["name"] not in weights:
            raise InterpreterError(f"no weight '{attrs['name']}' given")
        return (weights[attrs["name"]],)
    operands = [None if v is None else [env[x] for x in v] if isinstance(v, list) else env[v]
                for v in op_operands(spec, op)]
    while operands and operands[-1] is None:
        operands.pop()
    out = IMPLS[spec.name](attrs, *operands)
    return out if isinstance(out, tuple) else (out,)
