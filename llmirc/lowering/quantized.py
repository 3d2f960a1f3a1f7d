"""Lowering of `llm.quantized_matmul`: the weight is dequantized inside the matmul's dispatch.

    P[grp, m, n] = sum_i x[m, grp, i] * float(q[grp*g + i, n])                  (stage 1)
    y[m, n]      = sum_grp s[grp, n] * (P[grp, m, n] - off[grp, n] * xs[m, grp])  (stage 2)
    xs[m, grp]   = sum_i x[m, grp, i];  off = the zero points, 8 for symmetric int4, else none

Stage 1 is a contraction whose body only widens the integer (mul(x, cast(q)) + acc): the
integers are read and converted in registers, and no dispatch ever writes a float copy of the
weight. Stage 2 applies the per-group scales to the small [groups, m, n] partial sums; it is
written with `math.fma` so that IREE does not take it for a matmul to data-tile. With one
group per row there is no group loop and IREE fuses stage 2 into stage 1 as its epilogue.

Weights that only feed quantized_matmul are stored transposed in the parameter archive
(values [in, out], scales and zero points [groups, out]: `stored_transposed`), so stage 1 reads
contiguous runs of out-features, the dimension it vectorizes. int4 values are packed two per
byte along that layout; asymmetric int4 (0..15) is read as unsigned, symmetric int4 (-8..7) as
unsigned after flipping its sign bit (q ^ 8 = q + 8), the +8 removed in stage 2.

On llvm-cpu stage 1 carries the tiles of `stage1_cpu_tiles` (docs/quantization.md has the
measurements: one 2048 x 11264 int8 layer at batch 1 took 29-35 ms with IREE's own choice and
2.9 ms with these tiles; the f32 data-tiled matmul 13.4 ms).
"""

from __future__ import annotations

from iree.compiler import ir

from .emitter import TV, Emitter
from .ops import LOp, LoweringError, _as_2d, _from_2d, _group_split, lowering

QUANTIZED_OPERANDS = {1, 2, 3}  # values, scales, zero_points of llm.quantized_matmul

# llvm-cpu tiles for stage 1 (loops group, m, n, i): each thread streams a slab of up to 256
# out-features, 32 at a time, one row and one in-feature per step (x[i] broadcast). IREE's own
# choice for this mixed f32 x i8 contraction (its data tiling has no f32 x i8 kernel, so the
# encoding resolves to the identity) ran at 0.7 G weights/s; these tiles stream 7.9 G weights/s
# on this CPU. An op with a compilation_info is also left out of data tiling, so the weight is
# read from the parameter as stored: no relaid copy at load.
# The tiles divide the out-features exactly (no ragged tile: IREE cannot mask i4 vector loads).
# With one group the group loop is left out: IREE folds a unit loop away and drops the attribute.
def stage1_cpu_tiles(n: int, grouped: bool) -> str:
    vec = next(v for v in (32, 16, 8, 4, 2, 1) if n % v == 0)
    dist = next(d for d in range(min(256, n) // vec * vec, 0, -vec) if n % d == 0)
    lead, zero = ("1, ", "0, ") if grouped else ("", "")
    return ("compilation_info = #iree_codegen.compilation_info<lowering_config = #iree_cpu.lowering_config<"
            f"distribution = [{lead}1, {dist}, 0], vector_common_parallel = [{lead}1, {vec}, 0], "
            f"vector_reduction = [{zero}0, 0, 1]>, translation_info = #iree_codegen.translation_info<"
            "pipeline = #iree_cpu.pipeline<DoubleTilingExpert>>>")


def stored_transposed(module: ir.Module) -> set[str]:
    """Names of the weights the archive stores transposed: read only as quantized_matmul
    values / scales / zero points. The lowering and the archive writer both use this rule."""
    uses: dict[str, bool] = {}

    def visit(op: ir.Operation) -> ir.WalkResult:
        op = op.operation if hasattr(op, "operation") else op
        if op.name == "llm.weight":
            name = ir.StringAttr(op.attributes["name"]).value
            ok = all(getattr(u.owner, "operation", u.owner).name == "llm.quantized_matmul"
                     and u.operand_number in QUANTIZED_OPERANDS for u in op.results[0].uses)
            uses[name] = uses.get(name, True) and ok and bool(list(op.results[0].uses))
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return {name for name, ok in uses.items() if ok}


def _transposed(e: Emitter, op: LOp, v: TV) -> TV:
    """[a, b] -> [b, a]: free for a weight stored transposed, else a transpose IREE can fold."""
    if v.name in getattr(op.module, "transposed", ()):
        return v
    return e.transpose(v, [1, 0])


@lowering("quantized_matmul")
def quantized_matmul(e: Emitter, op: LOp) -> list[TV]:
    x, q, s, z = (op.operands + [None, None])[:4]
    g, ft = op.attrs["group_size"], x.dtype
    if ft != "f32" or s.dtype != "f32":
        raise LoweringError(f"quantized_matmul takes f32 input and scales, got {ft} and {s.dtype}")
    qt, st = _transposed(e, op, q), _transposed(e, op, s)  # [K, N], [G, N]
    zt = _transposed(e, op, z) if z is not None else None
    k, n = qt.dims
    if not isinstance(k, int) or k % g:
        raise LoweringError(f"in-features {k} must be static and divisible by group_size {g}")
    groups = k // g
    if q.dtype == "i4" and (not isinstance(n, int) or n % 8):
        raise LoweringError(f"int4 weights need out-features a multiple of 8 (IREE cannot compile a ragged "
                            f"i4 vector), got {n}")
    x2 = _as_2d(e, x)
    m = x2.dims[0]
    x3 = _group_split(e, x2, g)  # [M, G, g]
    q3 = e.expand(qt, [[0, 1], [2]], (groups, g, n)) if groups > 1 else qt  # [G, g, N]

    # Stage 1. loops: d0 = group, d1 = m, d2 = n, d3 = i (in the group); P is [groups, m, n]
    if q.dtype == "i4" and z is None:
        def widen(v: str) -> str:  # signed -8..7 -> unsigned 0..15 (q + 8)
            flipped = e.v(f"arith.xori {v}, {e.const(-8, 'i4')} : i4")
            return e.v(f"arith.uitofp {flipped} : i4 to {ft}")
        offset = 8.0
    else:
        cast = "arith.uitofp" if q.dtype == "i4" else "arith.sitofp"  # i4 with zeros: 0..15

        def widen(v: str) -> str:
            return e.v(f"{cast} {v} : {q.dtype} to {ft}")
        offset = None

    def stage1(a):
        return [e.v(f"arith.addf {e.v(f'arith.mulf {a[0]}, {widen(a[1])} : {ft}')}, {a[2]} : {ft}")]

    grouped = groups > 1
    tuned = stage1_cpu_tiles(n, grouped) if op.options.get("backend") == "llvm-cpu" else ""
    if grouped:
        partial = e.generic(4, [(x3, ["d1", "d0", "d3"]), (q3, ["d0", "d3", "d2"])],
                            [(e.filled((groups, m, n), ft, 0.0), ["d0", "d1", "d2"])], stage1, reductions=(3,),
                            attrs=tuned)[0]
        p_map = ["d2", "d0", "d1"]
    else:  # loops: d0 = m, d1 = n, d2 = i
        partial = e.generic(3, [(x2, ["d0", "d2"]), (qt, ["d2", "d1"])], [(e.filled((m, n), ft, 0.0), ["d0", "d1"])],
                            stage1, reductions=(2,), attrs=tuned)[0]
        p_map = ["d0", "d1"]

    # Stage 2. loops: d0 = m, d1 = n, d2 = group
    ins = [(partial, p_map), (st, ["d2", "d1"])]
    if zt is not None or offset is not None:
        xs = e.generic(3, [(x3, ["d0", "d1", "d2"])], [(e.filled((m, groups), ft, 0.0), ["d0", "d1"])],
                       lambda a: [e.v(f"arith.addf {a[0]}, {a[1]} : {ft}")], reductions=(2,))[0]
        if zt is not None:
            ins.append((zt, ["d2", "d1"]))
        ins.append((xs, ["d0", "d2"]))

    def stage2(a):
        p, scale, acc = a[0], a[1], a[-1]
        if len(a) > 3:
            off = e.v(f"arith.sitofp {a[2]} : {zt.dtype} to {ft}") if zt is not None else e.const(offset, ft)
            p = e.v(f"arith.subf {p}, {e.v(f'arith.mulf {off}, {a[-2]} : {ft}')} : {ft}")
        return [e.v(f"math.fma {p}, {scale}, {acc} : {ft}")]

    y = e.generic(3, ins, [(e.filled((m, n), ft, 0.0), ["d0", "d1"])], stage2, reductions=(2,))[0]
    return [_from_2d(e, y, op.result_dims(0, x.dims[:-1] + (n,))[:-1])]
