"""Lowerings of the mixture-of-experts ops: moe_router, moe_ffn and quantized_moe_ffn.

moe_router is a matmul, `linalg.softmax` and k masked argmax reductions (k is small: 2 for
Mixtral), each taking the largest probability not yet chosen, ties to the lower expert as the
interpreter's stable sort does.

moe_ffn is lowered densely: every token goes through every expert and the results are weighted
by a [tokens, experts] combine matrix that is zero off the chosen experts,

    h[m, e]  = c[m, e] * act(gate_e x_m) * (up_e x_m)      gate/up: one [tokens, E x 2I] matmul
    y[m]     = sum_e down_e h[m, e]                        one [tokens, E x I] x [E x I, H] matmul
    c[m, e]  = sum_j weights[m, j] * (indices[m, j] == e)  (in h's elementwise body)

so both products are plain matmuls that IREE data-tiles, with no gather and no data-dependent
control flow. It computes E / k times the FLOPs of the routed experts (and decode reads every
expert's weights, not only the chosen ones'). The down weight is read as [H, E x I] through a
transpose of the parameter, which IREE hoists into the initializer.

With a static token count and tokens x k < E (decode_b1 / decode_b4 of a model with enough
experts) moe_ffn is gathered instead: each routed slot reads its expert's rows in place, so a
decode step reads only the routed matrices (docs/models.md has the measurement: 1.4x at batch 1
on 8 experts, top-2).

quantized_moe_ffn has the same structure with the two products written as quantized.py's two
stages, batched over the experts on the weights' own [E, out, in] layout (no transpose of an
integer weight, no dequantized copy of it).
"""

from __future__ import annotations

from .emitter import TV, Emitter, identity
from .fused import extract_slice
from .ops import LOp, LoweringError, _as_2d, _from_2d, gelu_value, lowering, matmul_transpose_b, silu_value, \
    softmax_last


def _act(e: Emitter, v: str, ft: str, activation: str) -> str:
    if activation == "silu":
        return silu_value(e, v, ft)
    return gelu_value(e, v, ft, "tanh" if activation == "gelu_tanh" else "none")


def _top_choice(e: Emitter, p: TV, taken: list[TV]) -> tuple[TV, TV]:
    """([M] value, [M] i64 index) of the largest p[m, :] among experts not in `taken`; ties go
    to the lower index whatever order IREE reduces in (as the argmax lowering)."""
    m, ft = p.dims[0], p.dtype
    best = e.filled((m,), ft, -1.0)  # probabilities are >= 0: any expert beats the initial value
    where = e.filled((m,), "i64", 0)

    def body(a):
        v, prev, bv, bi = a[0], a[1:-2], a[-2], a[-1]
        i = e.v(f"arith.index_cast {e.index(1)} : index to i64")
        gt = e.v(f"arith.cmpf ogt, {v}, {bv} : {ft}")
        eq = e.v(f"arith.andi {e.v(f'arith.cmpf oeq, {v}, {bv} : {ft}')}, "
                 f"{e.v(f'arith.cmpi slt, {i}, {bi} : i64')} : i1")
        take = e.v(f"arith.ori {gt}, {eq} : i1")
        for s in prev:  # an expert already chosen is never taken again
            take = e.v(f"arith.andi {take}, {e.v(f'arith.cmpi ne, {i}, {s} : i64')} : i1")
        return [e.v(f"arith.select {take}, {v}, {bv} : {ft}"), e.v(f"arith.select {take}, {i}, {bi} : i64")]

    ins = [(p, identity(2))] + [(t, ["d0"]) for t in taken]
    res = e.generic(2, ins, [(best, ["d0"]), (where, ["d0"])], body, reductions=(1,))
    return res[0], res[1]


@lowering("moe_router")
def moe_router(e: Emitter, op: LOp) -> list[TV]:
    x, w = op.operands
    k, ft = op.attrs["top_k"], x.dtype
    p = softmax_last(e, matmul_transpose_b(e, _as_2d(e, x), w))  # [M, E]
    values, chosen = [], []
    for _ in range(k):
        v, i = _top_choice(e, p, chosen)
        values.append(v)
        chosen.append(i)
    m = p.dims[0]

    def assemble(a):  # out[m, j] = the j-th choice; weights renormalised over the k choices
        vs, ids = a[:k], a[k:2 * k]
        total = vs[0]
        for v in vs[1:]:
            total = e.v(f"arith.addf {total}, {v} : {ft}")
        j = e.index(1)
        wv, iv = vs[k - 1], ids[k - 1]
        for s in range(k - 2, -1, -1):
            here = e.v(f"arith.cmpi eq, {j}, {e.idx(s)} : index")
            wv = e.v(f"arith.select {here}, {vs[s]}, {wv} : {ft}")
            iv = e.v(f"arith.select {here}, {ids[s]}, {iv} : i64")
        if op.attrs["normalize"]:
            wv = e.v(f"arith.divf {wv}, {total} : {ft}")
        return [wv, iv]

    outs = [(e.empty((m, k), ft), identity(2)), (e.empty((m, k), "i64"), identity(2))]
    wts, idx = e.generic(2, [(v, ["d0"]) for v in values + chosen], outs, assemble)
    lead = op.result_dims(0, x.dims[:-1] + (k,))[:-1]
    return [_from_2d(e, wts, lead), _from_2d(e, idx, lead)]


def _routing_columns(e: Emitter, weights: TV, indices: TV) -> list[tuple[TV, TV]]:
    """The k (weight [M], expert [M]) columns of the [M, k] routing."""
    k = weights.dims[1]
    return [tuple(e.collapse(extract_slice(e, t, 1, j, 1), [[0, 1]]) for t in (weights, indices))
            for j in range(k)]


def _weighted_hidden(e: Emitter, gu: TV, routing: list[tuple[TV, TV]], inter: int, activation: str) -> TV:
    """[M, E, 2I] gate/up products -> c[m, e] * act(gate) * up, [M, E, I], with the combine weight
    c[m, e] = sum_j weights[m, j] * (indices[m, j] == e) summed in the body over the k columns.
    One elementwise generic: a separate reduction for c, fused by IREE into the data-tiled down
    matmul's dispatch, failed to compile there ("all stack allocations need to be hoisted to the
    entry block", IREE 3.13, llvm-cpu -O3). The two halves are sliced first (fused.py: IREE 3.13
    miscompiled one generic reading both halves of a tensor)."""
    gate, up = (extract_slice(e, gu, 2, start, inter) for start in (0, inter))
    ft, it = gu.dtype, routing[0][1].dtype
    out = e.empty(gate.dims, ft)
    zero = e.const(0.0, ft)

    def body(a):
        ex = e.v(f"arith.index_cast {e.index(1)} : index to {it}")
        c = zero
        for j in range(len(routing)):
            w, i = a[2 + 2 * j], a[3 + 2 * j]
            hit = e.v(f"arith.cmpi eq, {i}, {ex} : {it}")
            c = e.v(f"arith.addf {c}, {e.v(f'arith.select {hit}, {w}, {zero} : {ft}')} : {ft}")
        h = e.v(f"arith.mulf {_act(e, a[0], ft, activation)}, {a[1]} : {ft}")
        return [e.v(f"arith.mulf {h}, {c} : {ft}")]

    ins = [(gate, identity(3)), (up, identity(3))] + [(t, ["d0"]) for col in routing for t in col]
    return e.generic(3, ins, [(out, identity(3))], body)[0]


def _routing_2d(e: Emitter, op: LOp) -> tuple[TV, TV, TV]:
    x, weights, indices = op.operands[:3]
    return _as_2d(e, x), _as_2d(e, weights), _as_2d(e, indices)


def use_gathered(tokens, top_k: int, experts: int) -> bool:
    """The gathered lowering when the token count is static and the routed slots read fewer
    expert matrices than all of them (decode_b1 / decode_b4 of a model with E > k x batch)."""
    return isinstance(tokens, int) and tokens * top_k < experts


def _expert_rows(e: Emitter, idx: str, it: str, experts: int) -> str:
    """An expert index (block argument of type `it`) as an in-bounds index value."""
    i = e.v(f"arith.index_cast {idx} : {it} to index")
    return e.v(f"arith.minsi {e.v(f'arith.maxsi {i}, {e.idx(0)} : index')}, {e.idx(experts - 1)} : index")


def _gathered_moe_ffn(e: Emitter, op: LOp, x2: TV, w2: TV, i2: TV) -> TV:
    """y[m] = sum_j w[m, j] * down[idx[m, j]] (act(g) * u), [g; u] = gate_up[idx[m, j]] x[m]: the
    expert weights read in place (tensor.extract at the routed expert, contiguous along the
    in-features, the innermost loop), so only the k routed matrices of each token are read."""
    gate_up, down = op.operands[3:5]
    experts, rows, hidden = gate_up.dims
    inter = down.dims[2]
    m, k = i2.dims
    ft, it = x2.dtype, i2.dtype

    def gu_body(a):  # loops: d0 = m, d1 = j, d2 = n (gate/up row), d3 = h
        ex = _expert_rows(e, a[1], it, experts)
        w = e.v(f"tensor.extract {gate_up.name}[{ex}, {e.index(2)}, {e.index(3)}] : {gate_up.type}")
        return [e.v(f"arith.addf {e.v(f'arith.mulf {a[0]}, {w} : {ft}')}, {a[2]} : {ft}")]

    gu = e.generic(4, [(x2, ["d0", "d3"]), (i2, ["d0", "d1"])], [(e.filled((m, k, rows), ft, 0.0), ["d0", "d1", "d2"])],
                   gu_body, reductions=(3,))[0]
    gate, up = (extract_slice(e, gu, 2, start, inter) for start in (0, inter))
    act = op.attrs["activation"]
    h = e.generic(3, [(gate, identity(3)), (up, identity(3)), (w2, ["d0", "d1"])], [(e.empty(gate.dims, ft), identity(3))],
                  lambda a: [e.v(f"arith.mulf {e.v(f'arith.mulf {_act(e, a[0], ft, act)}, {a[1]} : {ft}')}, "
                                 f"{a[2]} : {ft}")])[0]

    def down_body(a):  # loops: d0 = m, d1 = o (hidden), d2 = j, d3 = i
        ex = _expert_rows(e, a[1], it, experts)
        w = e.v(f"tensor.extract {down.name}[{ex}, {e.index(1)}, {e.index(3)}] : {down.type}")
        return [e.v(f"arith.addf {e.v(f'arith.mulf {a[0]}, {w} : {ft}')}, {a[2]} : {ft}")]

    return e.generic(4, [(h, ["d0", "d2", "d3"]), (i2, ["d0", "d2"])], [(e.filled((m, hidden), ft, 0.0), ["d0", "d1"])],
                     down_body, reductions=(2, 3))[0]


@lowering("moe_ffn")
def moe_ffn(e: Emitter, op: LOp) -> list[TV]:
    x = op.operands[0]
    x2, w2, i2 = _routing_2d(e, op)
    gate_up, down = op.operands[3:5]
    experts, rows, hidden = gate_up.dims
    inter = down.dims[2]
    m = x2.dims[0]
    if use_gathered(m, i2.dims[1], experts):
        return [_from_2d(e, _gathered_moe_ffn(e, op, x2, w2, i2), op.result_dims(0, x.dims)[:-1])]
    routing = _routing_columns(e, w2, i2)
    gu = matmul_transpose_b(e, x2, e.collapse(gate_up, [[0, 1], [2]]))  # [M, E x 2I]
    gu = e.expand(gu, [[0], [1, 2]], (m, experts, rows))
    h = e.collapse(_weighted_hidden(e, gu, routing, inter, op.attrs["activation"]), [[0], [1, 2]])  # [M, E x I]
    down_t = e.collapse(e.transpose(down, [1, 0, 2]), [[0], [1, 2]])  # [H, E x I]
    y = matmul_transpose_b(e, h, down_t)
    return [_from_2d(e, y, op.result_dims(0, x.dims)[:-1])]


# ---- quantized experts ---------------------------------------------------------------------

def _expert_qmatmul(e: Emitter, x: TV, per_expert: bool, q: TV, s: TV, z: TV | None, g: int) -> TV:
    """y[m, e, n] = sum_k x[m, (e,) k] * dequantize(q[e], s[e], z[e])[n, k], for q [E, N, K]:
    quantized.py's two stages with an expert loop. x is [M, K] (every expert reads it) or
    [M, E, K] (`per_expert`)."""
    experts, n, k = q.dims
    if not isinstance(k, int) or k % g:
        raise LoweringError(f"expert in-features {k} must be static and divisible by group_size {g}")
    groups, ft, m = k // g, x.dtype, x.dims[0]
    xe = ["d0", "d1"] if per_expert else ["d0"]
    x4 = e.expand(x, [[i] for i in range(x.rank - 1)] + [[x.rank - 1, x.rank]], x.dims[:-1] + (groups, g))
    q4 = e.expand(q, [[0], [1], [2, 3]], (experts, n, groups, g))
    if q.dtype == "i4" and z is None:  # symmetric int4, read as unsigned after flipping the sign bit
        def widen(v: str) -> str:
            flipped = e.v(f"arith.xori {v}, {e.const(-8, 'i4')} : i4")
            return e.v(f"arith.uitofp {flipped} : i4 to {ft}")
        offset: float | None = 8.0
    else:
        cast = "arith.uitofp" if q.dtype == "i4" else "arith.sitofp"  # i4 with zero points: 0..15

        def widen(v: str) -> str:
            return e.v(f"{cast} {v} : {q.dtype} to {ft}")
        offset = None

    # Stage 1. loops: d0 = m, d1 = expert, d2 = n, d3 = group, d4 = i (in the group)
    partial = e.generic(5, [(x4, xe + ["d3", "d4"]), (q4, ["d1", "d2", "d3", "d4"])],
                        [(e.filled((m, experts, n, groups), ft, 0.0), ["d0", "d1", "d2", "d3"])],
                        lambda a: [e.v(f"arith.addf {e.v(f'arith.mulf {a[0]}, {widen(a[1])} : {ft}')}, {a[2]} : {ft}")],
                        reductions=(4,))[0]
    # Stage 2. loops: d0 = m, d1 = expert, d2 = n, d3 = group
    ins = [(partial, ["d0", "d1", "d2", "d3"]), (s, ["d1", "d2", "d3"])]
    if z is not None or offset is not None:
        xs_dims = x4.dims[:-1]
        xs = e.generic(x4.rank, [(x4, identity(x4.rank))], [(e.filled(xs_dims, ft, 0.0), identity(x4.rank - 1))],
                       lambda a: [e.v(f"arith.addf {a[0]}, {a[1]} : {ft}")], reductions=(x4.rank - 1,))[0]
        if z is not None:
            ins.append((z, ["d1", "d2", "d3"]))
        ins.append((xs, xe + ["d3"]))

    def stage2(a):
        p, scale, acc = a[0], a[1], a[-1]
        if len(a) > 3:
            off = e.v(f"arith.sitofp {a[2]} : {z.dtype} to {ft}") if z is not None else e.const(offset, ft)
            p = e.v(f"arith.subf {p}, {e.v(f'arith.mulf {off}, {a[-2]} : {ft}')} : {ft}")
        return [e.v(f"math.fma {p}, {scale}, {acc} : {ft}")]

    return e.generic(4, ins, [(e.filled((m, experts, n), ft, 0.0), ["d0", "d1", "d2"])], stage2,
                     reductions=(3,))[0]


@lowering("quantized_moe_ffn")
def quantized_moe_ffn(e: Emitter, op: LOp) -> list[TV]:
    x = op.operands[0]
    if x.dtype != "f32":
        raise LoweringError(f"quantized_moe_ffn takes an f32 input, got {x.dtype}")
    x2, w2, i2 = _routing_2d(e, op)
    gq, gs, dq, ds, gz, dz = (op.operands + [None, None])[3:9]
    inter = dq.dims[2]
    routing = _routing_columns(e, w2, i2)
    gu = _expert_qmatmul(e, x2, False, gq, gs, gz, op.attrs["gate_up_group_size"])  # [M, E, 2I]
    h = _weighted_hidden(e, gu, routing, inter, op.attrs["activation"])  # [M, E, I]
    ye = _expert_qmatmul(e, h, True, dq, ds, dz, op.attrs["down_group_size"])  # [M, E, H]
    ft = ye.dtype
    y = e.generic(3, [(ye, identity(3))], [(e.filled((ye.dims[0], ye.dims[2]), ft, 0.0), ["d0", "d2"])],
                  lambda a: [e.v(f"arith.addf {a[0]}, {a[1]} : {ft}")], reductions=(1,))[0]
    return [_from_2d(e, y, op.result_dims(0, x.dims)[:-1])]
