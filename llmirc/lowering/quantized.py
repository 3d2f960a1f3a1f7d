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

from typing import Callable

import numpy as np
from iree.compiler import ir

from ..dialect.ops import ACT_TINY
from ..dialect.types import from_mlir
from ..pipelines.shard_tp import NUM_DEVICES
from . import gemv, vnni
from .fused import extract_slice
from .emitter import TV, Emitter, affine_map, tensor_type
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
# Prefill and extend (many rows) take PREFILL_ROWS: a workgroup of 64 rows, 4 rows a vector step,
# so each weight vector is widened once for 4 rows. One 2048 x 11264 int8 layer at 128 rows:
# 150 ms with one row a step, 91 ms with these (batch-1 decode keeps one row: 1.6 vs 2.4 ms).
PREFILL_ROWS = (64, 4)


def stage1_cpu_tiles(n: int, grouped: bool, rows: tuple[int, int] = (1, 1)) -> str:
    vec = next(v for v in (32, 16, 8, 4, 2, 1) if n % v == 0)
    dist = next(d for d in range(min(256, n) // vec * vec, 0, -vec) if n % d == 0)
    lead, zero = ("1, ", "0, ") if grouped else ("", "")
    return ("compilation_info = #iree_codegen.compilation_info<lowering_config = #iree_cpu.lowering_config<"
            f"distribution = [{lead}{rows[0]}, {dist}, 0], vector_common_parallel = [{lead}{rows[1]}, {vec}, 0], "
            f"vector_reduction = [{zero}0, 0, 1]>, translation_info = #iree_codegen.translation_info<"
            "pipeline = #iree_cpu.pipeline<DoubleTilingExpert>>>")


def _int_attr(op: ir.Operation, name: str) -> int:
    return ir.IntegerAttr(op.attributes[name]).value if name in op.attributes else 0


def _weight_only_use(user: ir.Operation, operand: int) -> bool:
    """Read as an int4 (weight-only, w4a16 or w4a8) or weight-only int8 quantized_matmul's
    values / scales / zero points. w8a8 reads its [out, in] values as stored; the CPU kernels'
    weights `stored_vnni` lays out instead (that rule wins where both hold: w4a8's values and
    scales, the weight-only kernel's values)."""
    if user.name != "llm.quantized_matmul" or operand not in QUANTIZED_OPERANDS:
        return False
    return _int_attr(user, "act_bits") == 0 or _int_attr(user, "bits") == 4


def _weights_read_as(module: ir.Module, kind_of: Callable[[ir.Operation, int, tuple], str | None]) -> dict[str, str]:
    """Weight name -> the one kind `kind_of(user, operand number, the weight's shape)` gives
    every use of it, wherever the name is loaded; weights without uses, or whose uses give None
    or disagree, are left out."""
    kinds: dict[str, set] = {}

    def visit(op: ir.Operation) -> ir.WalkResult:
        op = op.operation if hasattr(op, "operation") else op
        if op.name == "llm.weight":
            name = ir.StringAttr(op.attributes["name"]).value
            shape = from_mlir(op.results[0].type).shape
            users = list(op.results[0].uses)
            seen = kinds.setdefault(name, set())
            seen |= {kind_of(getattr(u.owner, "operation", u.owner), u.operand_number, shape) for u in users}
            if not users:
                seen.add(None)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return {name: next(iter(seen)) for name, seen in kinds.items() if len(seen) == 1 and None not in seen}


def stored_transposed(module: ir.Module) -> set[str]:
    """Names of the weights the archive stores transposed: read only as quantized_matmul
    values / scales / zero points. The lowering and the archive writer both use this rule."""
    return set(_weights_read_as(module, lambda user, operand, _: "transposed" if _weight_only_use(user, operand)
                                else None))


def _kernel_layout(user: ir.Operation, operand: int, shape: tuple) -> str | None:
    """The CPU kernel layout a use reads a weight in (STORED_LAYOUTS), or None:
    - "w8a8": a w8a8 quantized_matmul's values, [N, K] both multiples of vnni.ALIGN;
    - "w4a8" / "w4a8-scales": a w4a8 one's values / scales where vnni.int4_fits [N, K] and the group;
    - "gemv": a weight-only symmetric int4 or int8 one's values where gemv.fits (its scales stay
      transposed, [groups, N])."""
    if user.name != "llm.quantized_matmul":
        return None
    act, bits, group = _int_attr(user, "act_bits"), _int_attr(user, "bits"), _int_attr(user, "group_size")
    n, k = from_mlir(user.operands[1].type).shape
    if act == 0:
        return ("gemv" if operand == 1 and len(user.operands) == 3 and gemv.fits(k, n, group, bits) else None)
    if bits == 8:
        return "w8a8" if operand == 1 and len(shape) == 2 and all(d % vnni.ALIGN == 0 for d in shape) else None
    if act == 8 and operand in (1, 2) and vnni.int4_fits(n, k, group):
        return "w4a8" if operand == 1 else "w4a8-scales"
    return None


def stored_vnni(module: ir.Module) -> dict[str, str]:
    """Weight name -> the kernel layout the archive stores it in when the target has VNNI
    (STORED_LAYOUTS: lowering/vnni.py's w8a8 and w4a8 kernels, lowering/gemv.py's weight-only
    one), in a one-device module. The lowering and the archive writer both use this rule."""
    if NUM_DEVICES in module.operation.attributes:
        return {}
    return _weights_read_as(module, _kernel_layout)


# What `stored_vnni` weights become: kind -> (stored dims of the IR shape, stored element type of
# the IR one, packing of the IR array into stored values)
STORED_LAYOUTS: dict[str, tuple[Callable, Callable, Callable]] = {
    "w8a8": (lambda s: vnni.packed_dims(*s), lambda _: "i8", lambda a: vnni.pack_weight(np.asarray(a, np.int8))),
    "w4a8": (lambda s: vnni.int4_packed_dims(*s), lambda _: "i8", vnni.pack_int4_weight),
    "w4a8-scales": (lambda s: vnni.scales_packed_dims(*s), lambda _: "f32", vnni.pack_scales),
    "gemv": (lambda s: gemv.stored_dims(*s), lambda dtype: dtype, gemv.pack_weight),
}


def stored_dims(shape: tuple, dtype: str, kind: str) -> tuple[tuple[int, ...], str]:
    """(dims, element type) in the archive of a weight of IR `shape` and `dtype` stored in
    layout `kind`."""
    dims, stored, _ = STORED_LAYOUTS[kind]
    return dims(tuple(shape)), stored(dtype)


def pack_stored(array: np.ndarray, dtype: str, kind: str) -> tuple[np.ndarray, str]:
    """A weight of IR element type `dtype` in layout `kind`: (values, their element type), to be
    encoded as that type (int4 two a byte) by the archive writer."""
    return STORED_LAYOUTS[kind][2](array), STORED_LAYOUTS[kind][1](dtype)


def _transposed(e: Emitter, op: LOp, v: TV) -> TV:
    """[a, b] -> [b, a]: free for a weight stored transposed, else a transpose IREE can fold."""
    if v.name in getattr(op.module, "transposed", ()):
        return v
    return e.transpose(v, [1, 0])


def act_quantized(op) -> bool:
    """A quantized_matmul with int8 activations (w8a8): an integer matmul on [out, in] values."""
    return bool(op.attrs.get("act_bits")) and op.attrs["bits"] == 8


# w4a16's integer product (int16 x uint4) runs only where the batch is static and small: IREE's
# s16u4s32 tiles are for narrow M (a dynamic M got no tile: 41 ms against 0.18 ms at one row).
W4A16_INTEGER_ROWS = 8
# ... and groups of whole 32-value vectors: a group of 86 (the shipped model's 344 in-features)
# needs masked i4 vector loads, which IREE 3.13 cannot compile; such layers take the int16 grid
W4A16_GROUP_MULTIPLE = 32
I16_LIMIT = 32767.0


@lowering("quantized_matmul")
def quantized_matmul(e: Emitter, op: LOp) -> list[TV]:
    if act_quantized(op):
        return [_integer_matmul(e, op)]
    if op.attrs.get("act_bits") == 8 and op.operands[1].name in op.module.vnni_loads:
        return [_w4a8_vnni(e, op)]
    x, q, s, z = (op.operands + [None, None])[:4]
    g, ft = op.attrs["group_size"], x.dtype
    if ft != "f32" or s.dtype != "f32":
        raise LoweringError(f"quantized_matmul takes f32 input and scales, got {ft} and {s.dtype}")
    if not op.attrs.get("act_bits") and q.name in op.module.vnni_loads:
        return [_weight_only_gemv(e, op)]
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
    if op.attrs.get("act_bits") == 8:  # w4a8 without its VNNI kernel: the input on its int8 grid
        x2 = _int8_group_grid(e, x2, g)
    elif op.attrs.get("act_bits"):  # w4a16: the input on its int16 grid
        amax = _row_abs_max(e, m, ft, [(x2, ["d0", "d1"])])
        if (op.options.get("backend") == "llvm-cpu" and isinstance(m, int) and m <= W4A16_INTEGER_ROWS
                and zt is None and g % W4A16_GROUP_MULTIPLE == 0):
            y = _w4a16_integer(e, x2, amax, qt, st, g)
            return [_from_2d(e, y, op.result_dims(0, x.dims[:-1] + (n,))[:-1])]
        x2 = _int16_grid(e, x2, amax)
    if _dequantize_first(e, op, m, q, n):
        parts = [(qt, 1, 1), (st, 1, 1)] + ([(zt, 1, 1)] if zt is not None else [])

        def product(w: list[TV]) -> TV:  # the chunk's values, scales and (zero points)
            return _dequantized_matmul(e, x2, w[0], w[1], w[2] if zt is not None else None, g, q.dtype)

        y = _in_column_chunks(e, x2, n, parts, product)
        return [_from_2d(e, y, op.result_dims(0, x.dims[:-1] + (n,))[:-1])]
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
    many_rows = e.function.startswith(("prefill", "extend"))
    tuned = (stage1_cpu_tiles(n, grouped, PREFILL_ROWS if many_rows else (1, 1))
             if op.options.get("backend") == "llvm-cpu" else "")
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


def _weight_only_gemv(e: Emitter, op: LOp) -> TV:
    """A weight-only product whose values the archive stores for lowering/gemv.py ([N / 64, K,
    64] blocks, scales [groups, N]): prefill and extend with many rows dequantize the blocks
    first (_dequantize_first), everything else runs the kernel, any row count."""
    x, q, s = op.operands[:3]
    g = op.attrs["group_size"]
    blocks, k, _ = q.dims
    n = blocks * gemv.BLOCK
    st = _transposed(e, op, s)  # [G, N]
    x2 = _as_2d(e, x)
    m = x2.dims[0]
    if _dequantize_first(e, op, m, q, n):
        y = _in_column_chunks(e, x2, n, [(q, 0, gemv.BLOCK), (st, 1, 1)],
                              lambda w: _dequantized_blocks_matmul(e, x2, *w, g))
    else:
        rows = m if isinstance(m, int) and m <= gemv.MAX_ROWS else None  # more: padded blocks, as dynamic
        kern = gemv.Kernel(rows, k, n, g, 4 if q.dtype == "i4" else 8)
        exe = op.module.define(("gemv", kern), kern.name, lambda sym, _: gemv.executable_text(kern, sym))
        y = gemv.product(e, x2, q, st, kern, exe)
    return _from_2d(e, y, op.result_dims(0, x.dims[:-1] + (n,))[:-1])


# Prefill's dequantize-first step runs this many out-features at a time:
# each chunk's f32 copy (4 MB at K = 2048) is read by its matmul while still in cache instead of
# from DRAM. 1.1B int8 prefill (128 tokens, StepTimer round-robin): 122 tok/s in one piece,
# 151-166 in chunks of 512 against 170-176 for f32; chunks of 256 and 1024 columns, or of 1-8 MB
# of f32, within 10 % of that.
DEQUANTIZE_COLUMNS = 512


def _in_column_chunks(e: Emitter, x2: TV, n: int, operands: list[tuple[TV, int, int]],
                      product: Callable[[list[TV]], TV]) -> TV:
    """[M, n] f32 from product(weight operands) [M, c] on DEQUANTIZE_COLUMNS-wide chunks of the
    out-features: `operands` are (tensor, its out-feature axis, out-features per index along it),
    each cut to the chunk's range."""
    if n <= DEQUANTIZE_COLUMNS:
        return product([t for t, _, _ in operands])
    y = e.empty((x2.dims[0], n), "f32")
    rows = e.dim_value(x2.dims[0])
    for lo in range(0, n, DEQUANTIZE_COLUMNS):
        c = min(DEQUANTIZE_COLUMNS, n - lo)
        yc = product([extract_slice(e, t, axis, lo // unit, c // unit) for t, axis, unit in operands])
        y = TV(e.v(f"tensor.insert_slice {yc.name} into {y.name}[0, {lo}] [{rows}, {c}] [1, 1] : "
                   f"{yc.type} into {y.type}", "ins"), y.dims, "f32")
    return y


def _dequantized_blocks_matmul(e: Emitter, x2: TV, q: TV, st: TV, g: int) -> TV:
    """x2 [M, K] @ W for the blocks q [nb, K, 64] and their scales st [G, nb x 64]: one
    elementwise dispatch writes W in f32 (iterated block by block: in [K, N] order it cost 20 % of
    1.1B int8 prefill), then the data-tiled f32 matmul."""
    blocks, k, _ = q.dims
    # loops d0 = block, d1 = group, d2 = i (in the group), d3 = column
    q4 = e.expand(q, [[0], [1, 2], [3]], (blocks, k // g, g, gemv.BLOCK))
    s3 = e.expand(st, [[0], [1, 2]], (k // g, blocks, gemv.BLOCK))
    dq = e.generic(4, [(q4, ["d0", "d1", "d2", "d3"]), (s3, ["d1", "d0", "d3"])],
                   [(e.empty((k // g, g, blocks, gemv.BLOCK), "f32"), ["d1", "d2", "d0", "d3"])],
                   lambda a: [e.v(f"arith.mulf {e.v(f'arith.sitofp {a[0]} : {q.dtype} to f32')}, {a[1]} : f32")])[0]
    return _matmul(e, x2, e.collapse(dq, [[0, 1], [2, 3]]))


# IREE 3.13 fuses an int4 weight's dequantization into the f32 matmul's pack; where the
# out-features are not a multiple of 64 that dispatch needs masked i4 vector loads, which it
# cannot compile (measured: 704 compiles; 688, the shipped model's gate/up, 720 and 736 do not,
# for znver4 and haswell alike). Those layers keep the weight-only kernel in prefill too.
DEQUANTIZE_FIRST_I4_MULTIPLE = 64


def _dequantize_first(e: Emitter, op: LOp, m, q: TV, n) -> bool:
    """Prefill and extend on llvm-cpu: many rows make the matmul compute-bound, where the
    weight-only kernel's widening inside the contraction costs more than writing one f32 copy
    of the weight per call and running the data-tiled f32 matmul on it."""
    return (op.options.get("backend") == "llvm-cpu" and e.function.startswith(("prefill", "extend"))
            and not (isinstance(m, int) and m <= W4A16_INTEGER_ROWS)
            and (q.dtype != "i4" or n % DEQUANTIZE_FIRST_I4_MULTIPLE == 0))


def _dequantized_matmul(e: Emitter, x2: TV, qt: TV, st: TV, zt: TV | None, g: int, qdtype: str) -> TV:
    """y = x2 @ W with W[k, n] = (q[k, n] - z[k / g, n]) * s[k / g, n] written out in f32 first."""
    ft = x2.dtype
    k, n = qt.dims
    groups = k // g
    cast = "arith.uitofp" if (qdtype == "i4" and zt is not None) else "arith.sitofp"

    def body(a):  # a: q, s, (z), out; loops d0 = group, d1 = i, d2 = n
        v = e.v(f"{cast} {a[0]} : {qdtype} to {ft}")
        if zt is not None:
            zc = "arith.uitofp" if zt.dtype == "i4" else "arith.sitofp"
            v = e.v(f"arith.subf {v}, {e.v(f'{zc} {a[2]} : {zt.dtype} to {ft}')} : {ft}")
        return [e.v(f"arith.mulf {v}, {a[1]} : {ft}")]

    q3 = e.expand(qt, [[0, 1], [2]], (groups, g, n))
    ins = [(q3, ["d0", "d1", "d2"]), (st, ["d0", "d2"])] + ([(zt, ["d0", "d2"])] if zt is not None else [])
    return _matmul(e, x2, e.collapse(e.generic(3, ins, [(e.empty((groups, g, n), ft), ["d0", "d1", "d2"])], body)[0],
                                     [[0, 1], [2]]))


def _matmul(e: Emitter, x2: TV, w: TV) -> TV:
    """x2 [M, K] @ w [K, N] as linalg.matmul (IREE data-tiles it), in x2's float type."""
    acc = e.filled((x2.dims[0], w.dims[1]), x2.dtype, 0.0)
    return TV(e.v(f"linalg.matmul ins({x2.name}, {w.name} : {x2.type}, {w.type}) "
                  f"outs({acc.name} : {acc.type}) -> {acc.type}", "mm"), (x2.dims[0], w.dims[1]), x2.dtype)


def _row_abs_max(e: Emitter, m, ft: str, ins: list, value=lambda a: a[0]) -> TV:
    """max over k of |value(block args)| for each row of an (m, k) loop nest: [M]."""
    return e.generic(2, ins, [(e.filled((m,), ft, 0.0), ["d0"])],
                     lambda a: [e.v(f"arith.maximumf {e.v(f'math.absf {value(a)} : {ft}')}, {a[-1]} : {ft}")],
                     reductions=(1,))[0]


def _grid_steps(e: Emitter, v: str, amax: str, limit: str, tiny: str, ft: str) -> str:
    """roundeven(v * (limit / max(amax, tiny))) as f32: v in steps of its row's grid, the
    interpreter's act_quantize_rows (limit 127 for int8, 32767 for int16; constants given)."""
    inv = e.v(f"arith.divf {limit}, {e.v(f'arith.maximumf {amax}, {tiny} : {ft}')} : {ft}")
    return e.v(f"math.roundeven {e.v(f'arith.mulf {v}, {inv} : {ft}')} : {ft}")


def _int16_steps(e: Emitter, v: str, amax: str, ft: str) -> str:
    return _grid_steps(e, v, amax, e.const(I16_LIMIT, ft), e.const(ACT_TINY, ft), ft)


def _int16_grid(e: Emitter, x2: TV, amax: TV) -> TV:
    """w4a16 where there is no integer product: x rounded to its row's int16 grid, in f32
    (q * (max|x| / 32767), exact integers times one scale), then the weight-only kernel."""
    ft = x2.dtype

    def body(a):
        step = e.v(f"arith.divf {a[1]}, {e.const(I16_LIMIT, ft)} : {ft}")
        return [e.v(f"arith.mulf {_int16_steps(e, a[0], a[1], ft)}, {step} : {ft}")]

    return e.generic(2, [(x2, ["d0", "d1"]), (amax, ["d0"])], [(e.empty(x2.dims, ft), ["d0", "d1"])], body)[0]


def _group_int8(e: Emitter, x2: TV, g: int) -> tuple[TV, TV]:
    """x2 [m, k] -> (xq [m, k/g, g] i8, amax [m, k/g]): each group of each row on its own int8
    grid (the interpreter's act_quantize_rows on the groups)."""
    ft = x2.dtype
    m, k = x2.dims
    x3 = _group_split(e, x2, g)
    abs_max = lambda a: [e.v(f"arith.maximumf {e.v(f'math.absf {a[0]} : {ft}')}, {a[1]} : {ft}")]  # noqa: E731
    amax = e.generic(3, [(x3, ["d0", "d1", "d2"])], [(e.filled((m, k // g), ft, 0.0), ["d0", "d1"])], abs_max,
                     reductions=(2,))[0]
    c127, tiny = e.const(127.0, ft), e.const(ACT_TINY, ft)
    xq = e.generic(3, [(x3, ["d0", "d1", "d2"]), (amax, ["d0", "d1"])], [(e.empty(x3.dims, "i8"), ["d0", "d1", "d2"])],
                   lambda a: [e.v(f"arith.fptosi {_grid_steps(e, a[0], a[1], c127, tiny, ft)} : {ft} to i8")])[0]
    return xq, amax


def _int8_group_grid(e: Emitter, x2: TV, g: int) -> TV:
    """w4a8 where there is no VNNI kernel: x on its groups' int8 grids, in f32 (xq * max|x| / 127),
    then the weight-only kernel."""
    ft = x2.dtype
    xq, amax = _group_int8(e, x2, g)

    def body(a):
        step = e.v(f"arith.divf {a[1]}, {e.const(127.0, ft)} : {ft}")
        return [e.v(f"arith.mulf {e.v(f'arith.sitofp {a[0]} : i8 to {ft}')}, {step} : {ft}")]

    grid = e.generic(3, [(xq, ["d0", "d1", "d2"]), (amax, ["d0", "d1"])], [(e.empty(xq.dims, ft), ["d0", "d1", "d2"])],
                     body)[0]
    return e.collapse(grid, [[0], [1, 2]])


def _w4a8_vnni(e: Emitter, op: LOp) -> TV:
    """w4a8 through lowering/vnni.py's int4 kernel: y[m, n] = sum_grp float(sum_i xq * q) *
    xs[m, grp] * s[n, grp], xq the int8 groups of x with scales xs = max|x| / 127; the kernel
    takes xc = 8 x the groups' sums of xq, since it multiplies u = q + 8."""
    x, q, s = op.operands[:3]
    ft, g = x.dtype, op.attrs["group_size"]
    if ft != "f32" or s.dtype != "f32":
        raise LoweringError(f"w4a8 quantized_matmul takes f32 input and scales, got {ft} and {s.dtype}")
    n, k = vnni.int4_unpacked_dims(q.dims)
    x2 = _as_2d(e, x)
    m = x2.dims[0]
    kern = vnni.int4_plan(m if isinstance(m, int) else None, k, n, g)
    exe = op.module.define(("vnni4", kern), kern.name, lambda sym, _: vnni.int4_executable_text(kern, sym))
    if kern.fused:  # the kernel quantizes the rows itself
        return _from_2d(e, vnni.int4_product(e, [x2], kern, exe, q.name, s.name),
                        op.result_dims(0, x.dims[:-1] + (n,))[:-1])
    xq, amax = _group_int8(e, x2, g)
    xs = e.generic(2, [(amax, ["d0", "d1"])], [(e.empty(amax.dims, ft), ["d0", "d1"])],
                   lambda a: [e.v(f"arith.divf {a[0]}, {e.const(127.0, ft)} : {ft}")])[0]
    def times8(a):  # a: xq, acc
        wide = e.v(f"arith.extsi {a[0]} : i8 to i32")
        eight = e.v(f"arith.shli {wide}, {e.const(3, 'i32')} : i32")
        return [e.v(f"arith.addi {eight}, {a[1]} : i32")]

    xc = e.generic(3, [(xq, ["d0", "d1", "d2"])], [(e.filled(amax.dims, "i32", 0), ["d0", "d1"])], times8,
                   reductions=(2,))[0]
    y = vnni.int4_product(e, [e.collapse(xq, [[0], [1, 2]]), xs, xc], kern, exe, q.name, s.name)
    return _from_2d(e, y, op.result_dims(0, x.dims[:-1] + (n,))[:-1])


def _w4a16_integer(e: Emitter, x2: TV, amax: TV, qt: TV, st: TV, g: int) -> TV:
    """w4a16 at a small static batch: y[m, n] = max|x_m| / 32767 * sum_grp s[grp, n] *
    float(P[grp, m, n] - 8 * xs[m, grp]), with P = sum_i xq[m, grp, i] * u[n, grp, i] in int32,
    xq the int16 rows, u = q + 8 the symmetric int4 values as uint4 and xs the sums of xq per group.

    The weight is read as stored for the weight-only kernel ([in, out], signed); the uint4
    [out, in] copy (sign bit flipped, transposed) depends on the parameter alone, so IREE
    hoists it to load time together with the data-tiling pack of the int16 x uint4 product
    (its s16u4s32 tiles). Measured alone on a 2048 x 5632 layer (L3-resident): 0.25 ms at one
    row, 0.59 ms at four (docs/quantization.md). The int32 sums cannot overflow: |xq| <= 32767,
    u <= 15, a group at most W4A16_MAX_GROUP in-features.
    """
    ft = x2.dtype
    (m, k), n = x2.dims, qt.dims[1]
    groups = k // g
    xq = e.generic(2, [(x2, ["d0", "d1"]), (amax, ["d0"])], [(e.empty((m, k), "i16"), ["d0", "d1"])],
                   lambda a: [e.v(f"arith.fptosi {_int16_steps(e, a[0], a[1], ft)} : {ft} to i16")])[0]
    u = e.generic(2, [(qt, ["d1", "d0"])], [(e.empty((n, k), "i4"), ["d0", "d1"])],
                  lambda a: [e.v(f"arith.xori {a[0]}, {e.const(-8, 'i4')} : i4")])[0]
    x3, u3 = _group_split(e, xq, g), _group_split(e, u, g)  # [M, G, g], [N, G, g]

    def dot(a):
        prod = e.v(f"arith.muli {e.v(f'arith.extsi {a[0]} : i16 to i32')}, {e.v(f'arith.extui {a[1]} : i4 to i32')} : i32")
        return [e.v(f"arith.addi {prod}, {a[2]} : i32")]

    # loops: d0 = group, d1 = m, d2 = n, d3 = i (in the group); P is [G, M, N]
    partial = e.generic(4, [(x3, ["d1", "d0", "d3"]), (u3, ["d2", "d0", "d3"])],
                        [(e.filled((groups, m, n), "i32", 0), ["d0", "d1", "d2"])], dot, reductions=(3,))[0]
    xs = e.generic(3, [(x3, ["d0", "d1", "d2"])], [(e.filled((m, groups), "i32", 0), ["d0", "d1"])],
                   lambda a: [e.v(f"arith.addi {e.v(f'arith.extsi {a[0]} : i16 to i32')}, {a[1]} : i32")],
                   reductions=(2,))[0]

    def stage2(a):  # a: P, s, xs, amax, acc
        offset = e.v(f"arith.muli {a[2]}, {e.const(8, 'i32')} : i32")
        p = e.v(f"arith.sitofp {e.v(f'arith.subi {a[0]}, {offset} : i32')} : i32 to {ft}")
        scale = e.v(f"arith.mulf {a[1]}, {e.v(f'arith.divf {a[3]}, {e.const(I16_LIMIT, ft)} : {ft}')} : {ft}")
        return [e.v(f"math.fma {p}, {scale}, {a[4]} : {ft}")]

    # One row: the scaled partial sums [G, N] (elementwise: IREE fuses it into the products'
    # dispatch), summed over the groups by a [1, G] x [G, N] matmul with ones (a data-tiled
    # matvec). As one reduction generic IREE ran it unvectorized, about 1.5 ns an element: 23 ms
    # of a 1.1B g32 step, more than the products.
    if m == 1:
        def scaled(a):  # a: P, s, xs, amax, out; loops d0 = group, d1 = n
            return [stage2(a[:4] + [e.const(0.0, ft)])[0]]

        pf = e.generic(2, [(e.collapse(partial, [[0, 1], [2]]), ["d0", "d1"]), (st, ["d0", "d1"]),
                           (e.collapse(xs, [[0, 1]]), ["d0"]), (amax, ["0"])],
                       [(e.empty((groups, n), ft), ["d0", "d1"])], scaled)[0]
        ones = e.filled((1, groups), ft, 1.0)
        acc = e.filled((1, n), ft, 0.0)
        return TV(e.v(f"linalg.matmul ins({ones.name}, {pf.name} : {ones.type}, {pf.type}) "
                      f"outs({acc.name} : {acc.type}) -> {acc.type}", "mm"), (1, n), ft)
    return e.generic(3, [(partial, ["d2", "d0", "d1"]), (st, ["d2", "d1"]), (xs, ["d0", "d2"]), (amax, ["d0"])],
                     [(e.filled((m, n), ft, 0.0), ["d0", "d1"])], stage2, reductions=(2,),
                     attrs=stage1_cpu_tiles(n, False, (m, m)))[0]


def _integer_matmul(e: Emitter, op: LOp) -> TV:
    """w8a8: y[m, n] = sum_p int32(sum_k xq_p[m, k] * q[n, k]) * scale_p[m] * s[n, 0].

    Plane 0 is xq = roundeven(x * (127 / max(amax, tiny))) per row with scale amax / 127; with
    act_bits 16 plane 1 quantizes the residual x - xq * scale the same way, and both planes go
    through one product of 2M rows (the weight is read once). All as the interpreter's
    act_planes. The product is a plain `linalg.matmul` on i8 x i8 -> i32 with the weight
    [out, in] as stored: IREE's data tiling packs the weight once at load into its integer
    mmt4d layout. Measured alone on one 2048 x 11264 layer (L3-resident): 0.83-0.95 ms
    at a static batch of 1 against 1.6-3.7 ms for the weight-only int8 kernel; at 128 rows
    30 ms, against 47 ms for the f32 data-tiled matmul and 128-137 ms for this one without data
    tiling. In the 1.1B model (from DRAM) it streams 12-15 GB/s (docs/quantization.md).
    """
    x, q, s = op.operands[:3]
    ft = x.dtype
    if ft != "f32" or s.dtype != "f32" or q.dtype != "i8":
        raise LoweringError(f"w8a8 quantized_matmul takes f32 input and scales and i8 values, "
                            f"got {ft}, {s.dtype} and {q.dtype}")
    packed = q.name in op.module.vnni_loads  # a weight stored for the VNNI kernel
    n, k = vnni.unpacked_dims(q.dims) if packed else q.dims
    planes = op.attrs["act_bits"] // 8
    x2 = _as_2d(e, x)
    m = x2.dims[0]
    c127, tiny = e.const(127.0, ft), e.const(ACT_TINY, ft)

    def quantized(v: str, amax: str) -> tuple[str, str]:
        """(roundeven(v * 127 / max(amax, tiny)) as f32, amax / 127)."""
        return _grid_steps(e, v, amax, c127, tiny, ft), e.v(f"arith.divf {amax}, {c127} : {ft}")

    def residual(v: str, amax: str) -> str:
        r, scale = quantized(v, amax)
        return e.v(f"arith.subf {v}, {e.v(f'arith.mulf {r}, {scale} : {ft}')} : {ft}")

    amax = [_row_abs_max(e, m, ft, [(x2, ["d0", "d1"])])]
    if planes == 2:
        amax.append(_row_abs_max(e, m, ft, [(x2, ["d0", "d1"]), (amax[0], ["d0"])], lambda a: residual(a[0], a[1])))

    kern = vnni.plan(planes * m if isinstance(m, int) else None, k, n) if packed else None

    def quantize(a):  # a: x, then amax of each plane
        if planes == 1:
            v, amx = a[0], a[1]
        else:
            first = e.v(f"arith.cmpi eq, {e.index(0)}, {e.idx(0)} : index")
            v = e.v(f"arith.select {first}, {a[0]}, {residual(a[0], a[1])} : {ft}")
            amx = e.v(f"arith.select {first}, {a[1]}, {a[2]} : {ft}")
        xq = e.v(f"arith.fptosi {quantized(v, amx)[0]} : {ft} to i8")
        # the VNNI kernel multiplies u8: xq + 128, which is xq with its sign bit flipped
        return [e.v(f"arith.xori {xq}, {e.const(-128, 'i8')} : i8") if kern else xq]

    if planes == 1:
        xq = e.generic(2, [(x2, ["d0", "d1"]), (amax[0], ["d0"])], [(e.empty((m, k), "i8"), ["d0", "d1"])],
                       quantize)[0]
    else:  # loops (plane, m, k); plane 1 quantizes the residual of plane 0
        xq = e.collapse(e.generic(3, [(x2, ["d1", "d2"]), (amax[0], ["d1"]), (amax[1], ["d1"])],
                                  [(e.empty((2, m, k), "i8"), ["d0", "d1", "d2"])], quantize)[0], [[0, 1], [2]])
    rows = xq.dims[0]
    if kern:
        prod = _vnni_product(e, op, xq, q, kern)
    else:
        acc = e.filled((rows, n), "i32", 0)
        maps = ", ".join(affine_map(3, ex) for ex in (["d0", "d2"], ["d1", "d2"], ["d0", "d1"]))
        prod = TV(e.v(f"linalg.matmul indexing_maps = [{maps}] ins({xq.name}, {q.name} : {xq.type}, {q.type}) "
                      f"outs({acc.name} : {acc.type}) -> {acc.type}", "imm"), (rows, n), "i32")
    if planes == 2:
        prod = e.expand(prod, [[0, 1], [2]], (2, m, n))

    def scale(a):  # a: products (one per plane), amax (one per plane), weight scale, out
        ys = []
        for i in range(planes):
            sx = e.v(f"arith.divf {a[planes + i]}, {c127} : {ft}")
            ys.append(e.v(f"arith.mulf {e.v(f'arith.sitofp {a[i]} : i32 to {ft}')}, {sx} : {ft}"))
        y = ys[0] if planes == 1 else e.v(f"arith.addf {ys[0]}, {ys[1]} : {ft}")
        return [e.v(f"arith.mulf {y}, {a[2 * planes]} : {ft}")]

    per_plane = ([(prod, ["d0", "d1"])] if planes == 1
                 else [(prod, [str(i), "d0", "d1"]) for i in range(planes)])
    y = e.generic(2, per_plane + [(a, ["d0"]) for a in amax] + [(s, ["d1", "0"])],
                  [(e.empty((m, n), ft), ["d0", "d1"])], scale)[0]
    return _from_2d(e, y, op.result_dims(0, x.dims[:-1] + (n,))[:-1])


def _vnni_product(e: Emitter, op: LOp, xu: TV, q: TV, kern: vnni.Kernel) -> TV:
    """int32 [rows, n] product of xu (xq + 128 as u8) and the packed weight q through
    lowering/vnni.py: the executable once per shape, the column sums once per weight."""
    lw = op.module
    name = lw.vnni_loads[q.name]
    exe = lw.define(("vnni", kern), kern.name, lambda sym, _: vnni.executable_text(kern, sym))
    sums = lw.define(("vnni-sums", name), f"{name}.vnni_sums",
                     lambda sym, ie: vnni.column_sums_text(ie, kern.n, kern.k, lw.globals[name][:2], sym))
    return vnni.product(e, xu, kern, exe, q.name, lw.load_global(e, sums, tensor_type((kern.n,), "i32")))
