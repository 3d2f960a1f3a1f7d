"""Lowerings of the ops that the fusion passes introduce: concat, slice, fused_linear, add_rms_norm.

They reuse the building blocks of ops.py; what makes them "fused" is that each
is one llm op whose parts IREE places in one dispatch region (an elementwise
epilogue on a matmul, a reduction on an add), not a hand-written kernel.
"""

from __future__ import annotations

from dataclasses import replace

from .emitter import TV, Emitter, identity
from ..dialect.ops import GATED_ACTIVATIONS
from .ops import (LOp, _add_bias, _as_2d, _from_2d, _map_like, cuts_rows, gelu_value, lowering, matmul_transpose_b,
                  rms_norm)


def extract_slice(e: Emitter, x: TV, axis: int, start: int, size: int) -> TV:
    offsets = ["0"] * x.rank
    offsets[axis] = str(start)
    dims = list(x.dims)
    dims[axis] = size
    out_t = TV("", tuple(dims), x.dtype).type
    name = e.v(f"tensor.extract_slice {x.name}[{', '.join(offsets)}] [{', '.join(map(str, dims))}] "
               f"[{', '.join(['1'] * x.rank)}] : {x.type} to {out_t}", "sl")
    return TV(name, tuple(dims), x.dtype)


def _slice_last(e: Emitter, x: TV, start: int, size: int) -> TV:
    return extract_slice(e, x, x.rank - 1, start, size)


@lowering("slice")
def slice_(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    return [extract_slice(e, x, op.attrs["axis"] % x.rank, op.attrs["start"], op.attrs["size"])]


@lowering("concat")
def concat(e: Emitter, op: LOp) -> list[TV]:
    (xs,) = op.operands
    axis = op.attrs["axis"] % xs[0].rank
    dims = list(op.result_dims(0, xs[0].dims))
    if not isinstance(dims[axis], int):
        dims[axis] = _sum_dims(e, [x.dims[axis] for x in xs])
    out_t = TV("", tuple(dims), xs[0].dtype).type
    name = e.v(f"tensor.concat dim({axis}) {', '.join(x.name for x in xs)} : "
               f"({', '.join(x.type for x in xs)}) -> {out_t}", "cat")
    return [TV(name, tuple(dims), xs[0].dtype)]


def _sum_dims(e: Emitter, dims) -> str:
    acc = e.dim_value(dims[0])
    for d in dims[1:]:
        acc = e.v(f"arith.addi {acc}, {e.dim_value(d)} : index", "d")
    return acc


def _silu(e: Emitter, v: str, ft: str) -> str:
    ex = e.v(f"math.exp {e.v(f'arith.negf {v} : {ft}')} : {ft}")
    return e.v(f"arith.divf {v}, {e.v(f'arith.addf {e.const(1.0, ft)}, {ex} : {ft}')} : {ft}")


@lowering("fused_linear")
def fused_linear(e: Emitter, op: LOp) -> list[TV]:
    x, w, b = (op.operands + [None])[:3]
    y = matmul_transpose_b(e, _as_2d(e, x), w, chunked=cuts_rows(x, w))
    if b is not None:
        y = _add_bias(e, y, b)
    act, ft = op.attrs["activation"], y.dtype
    lead = x.dims[:-1]
    if act in GATED_ACTIVATIONS:
        # Two slices + an identity-map generic: IREE 3.13 miscompiled the single generic that
        # read y at (d0, d1) and (d0, d1 + N) (max error 0.03 on llvm-cpu; see docs/passes.md).
        n = w.dims[0] // 2
        gate, up = (_slice_last(e, y, start, n) for start in (0, n))
        out = e.empty((y.dims[0], n), ft)
        gate_act = GATED_ACTIVATIONS[act]

        def gated(a):
            g = _silu(e, a[0], ft) if gate_act == "silu" else \
                gelu_value(e, a[0], ft, "tanh" if gate_act == "gelu_tanh" else "none")
            return [e.v(f"arith.mulf {g}, {a[1]} : {ft}")]

        z = e.generic(2, [(gate, identity(2)), (up, identity(2))], [(out, identity(2))], gated)[0]
        return [_from_2d(e, z, op.result_dims(0, lead + (n,))[:-1])]
    if act == "silu":
        z = _map_like(e, y, lambda v: _silu(e, v, ft))
    else:
        from .ops import gelu

        gelu_op = replace(op, name="gelu", attrs={"approximate": "tanh" if act == "gelu_tanh" else "none"},
                          operands=[y], result_types=[])
        (z,) = gelu(e, gelu_op)
    return [_from_2d(e, z, op.result_dims(0, lead + (w.dims[0],))[:-1])]


@lowering("add_rms_norm")
def add_rms_norm(e: Emitter, op: LOp) -> list[TV]:
    x, r, w = op.operands
    n, ft = x.rank, x.dtype
    out = e.empty(op.result_dims(0, x.dims), ft)
    s = e.generic(n, [(x, identity(n)), (r, identity(n))], [(out, identity(n))],
                  lambda a: [e.v(f"arith.addf {a[0]}, {a[1]} : {ft}")])[0]
    (normed,) = rms_norm(e, replace(op, name="rms_norm", operands=[s, w], result_types=op.result_types[1:]))
    return [s, normed]

