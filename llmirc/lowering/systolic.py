"""Matmuls shaped for a systolic array (the tpu-like target, llmirc/targets/tpu_like.py).

`x[M, K] . w[N, K]^T` becomes: pad K and N to a multiple of the tile (128: the
weight-stationary array is tile x tile) and M to a multiple of 8 (sublanes) with zeros,
contract the padded operands, and slice the [M, N] result back out. Zero rows and columns
add nothing to the sums, so the result is the unpadded product exactly (same f32 sums).
The operands enter the contraction in the weight's element type (bf16 weights from
`--dtype bf16` make the activations bf16 too, as a bf16 MXU would) and accumulate in f32.

Padding the weights is `tensor.pad` of the loaded parameter: IREE hoists it into an
initializer (a padded copy made once at load), so no call pays for it.
"""

from __future__ import annotations

from .emitter import TV, Emitter, identity
from .ops import LoweringError

SUBLANES = 8  # M (rows) is padded to a multiple of this


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pad_to(e: Emitter, x: TV, dims: tuple) -> TV:
    """Zero-pad x at the high end of each dim to `dims` (no-op when already that shape)."""
    if tuple(dims) == tuple(x.dims):
        return x
    high = []
    for have, want in zip(x.dims, dims):
        if isinstance(have, int):
            high.append(str(want - have))
        elif have == want:
            high.append("0")
        else:
            raise LoweringError(f"cannot pad a dynamic dim {have} to {want}")
    out_t = TV("", tuple(dims), x.dtype).type
    zero = e.const(0.0 if x.is_float else 0, x.dtype)
    name = e.fresh("pad")
    e.emit(f"{name} = tensor.pad {x.name} low[{', '.join('0' for _ in dims)}] high[{', '.join(high)}] {{")
    idx = ", ".join(f"{e.fresh('i')}: index" for _ in dims)
    e.lines.append(f"{e.indent}^bb0({idx}):")
    e.emit(f"  tensor.yield {zero} : {x.dtype}")
    e.emit(f"}} : {x.type} to {out_t}")
    return TV(name, tuple(dims), x.dtype)


def slice_to(e: Emitter, x: TV, dims: tuple) -> TV:
    """x[0:dims[0], 0:dims[1], ...] (no-op when already that shape)."""
    if tuple(dims) == tuple(x.dims):
        return x
    out_t = TV("", tuple(dims), x.dtype).type
    name = e.v(f"tensor.extract_slice {x.name}[{', '.join('0' for _ in dims)}] [{', '.join(map(str, dims))}] "
               f"[{', '.join('1' for _ in dims)}] : {x.type} to {out_t}", "sl")
    return TV(name, tuple(dims), x.dtype)


def _cast(e: Emitter, x: TV, dtype: str) -> TV:
    if x.dtype == dtype:
        return x
    op = "arith.truncf" if dtype in ("bf16", "f16") else "arith.extf"
    out = e.empty(x.dims, dtype)
    return e.generic(x.rank, [(x, identity(x.rank))], [(out, identity(x.rank))],
                     lambda a: [e.v(f"{op} {a[0]} : {x.dtype} to {dtype}")])[0]


def padded_matmul_transpose_b(e: Emitter, x2: TV, w: TV) -> TV:
    """[M, K] x [N, K] -> [M, N] f32 through tile-padded operands (see the module docstring)."""
    tile = e.tile
    m, k = x2.dims
    n = w.dims[0]
    if not isinstance(k, int) or not isinstance(n, int):
        raise LoweringError(f"systolic matmul needs static K and N, got K={k}, N={n}")
    mp = round_up(m, SUBLANES) if isinstance(m, int) else m  # a dynamic M (batch) stays as it is
    kp, np_ = round_up(k, tile), round_up(n, tile)
    operand = w.dtype if w.dtype in ("bf16", "f16") else x2.dtype
    xp = pad_to(e, _cast(e, x2, operand), (mp, kp))
    wp = pad_to(e, w, (np_, kp))
    acc = e.filled((mp, np_), "f32", 0.0)

    def body(a):
        xs, ws = (e.v(f"arith.extf {v} : {t} to f32") if t != "f32" else v
                  for v, t in ((a[0], xp.dtype), (a[1], wp.dtype)))
        return [e.v(f"arith.addf {e.v(f'arith.mulf {xs}, {ws} : f32')}, {a[2]} : f32")]

    y = e.generic(3, [(xp, ["d0", "d2"]), (wp, ["d1", "d2"])], [(acc, ["d0", "d1"])], body, reductions=(2,))[0]
    return slice_to(e, y, (m, n))


__all__ = ["SUBLANES", "pad_to", "padded_matmul_transpose_b", "round_up", "slice_to"]
