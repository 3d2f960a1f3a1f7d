"""w8a8's int8 products as a hand-written AVX512-VNNI dispatch (x86 CPUs that have it).

Why: IREE 3.13's s8 x s8 data-tiled kernel sign-extends both operands to int16 for vpdpwssd,
32 products an instruction; vpdpbusd multiplies u8 x s8, 64 an instruction. Measured alone
(benchmarks/vnni_gemv.py, the prefill shape in docs/quantization.md): a 128-row product runs
about 2x IREE's kernel; a one-row product is bound by the weight stream on both where the
DRAM is slow enough, and 1.2-1.8x faster where IREE's kernel is compute-bound.

How (docs/quantization.md):
- The weight is stored in the parameter archive in the instruction's layout,
  [N/16, K/4, 64] (16 output columns of 4 in-features a 64-byte vector; `stored_vnni` says
  which weights, `pack_weight` packs them), and read from there: no copy at load. (IREE's
  data tiling keeps a packed copy of every weight it multiplies besides the parameter.)
- The activations arrive as xq XOR 0x80, i.e. xq + 128 read as u8, so the instruction's
  product is sum_k (xq + 128) * w; the exact int8 product is that minus 128 * (column sums
  of w), a global an initializer computes at load, subtracted in int32 before anything else
  touches it: bit-identical to the `linalg.matmul` this replaces.
- The dispatch is a `stream.executable` in the vector dialect with one
  `llvm.call_intrinsic "llvm.x86.avx512.vpdpbusd.512"`. Each workgroup owns a run of
  column blocks (`tiles` 16-column tiles each); for each it walks the rows a block at a time,
  keeping rows x tiles x chains accumulators over K (chains hide the instruction's latency
  when rows are few). Few static rows (decode_b{B}) are one block; otherwise blocks of 4
  rows, the row count padded to a multiple of 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .emitter import TV, Emitter, tensor_type

INTRINSIC = "llvm.x86.avx512.vpdpbusd.512"
LANES = 16  # int32 accumulators per 512-bit vector: output columns per tile
DEPTH = 4  # int8 products summed into each lane per instruction
ALIGN = 16  # a stored weight's N and K are multiples of this (every kernel shape below fits)
FEW_ROWS = 8  # static row counts up to this are one block (rows x chains accumulators)
ROW_BLOCK = 4  # rows a block otherwise: 4 rows x 4 tiles measured fastest (16 accumulators)
MIN_WORKGROUPS = 8  # enough workgroups to keep every worker busy on narrow weights


@dataclass(frozen=True)
class Kernel:
    """One dispatch shape: [m, k] (u8) x [n, k] (s8) -> [m, n] int32 in blocks of
    `rows` x `tiles` 16-column tiles with `chains` accumulators each over K."""

    rows: int
    tiles: int
    chains: int
    k: int
    n: int

    @property
    def blocks(self) -> int:
        """Column blocks (of `tiles` tiles)."""
        return self.n // (LANES * self.tiles)

    @property
    def blocks_per_workgroup(self) -> int:
        """Largest divisor of the block count <= 16 that still leaves MIN_WORKGROUPS workgroups."""
        want = min(self.blocks, MIN_WORKGROUPS)
        return max(d for d in range(1, 17) if self.blocks % d == 0 and self.blocks // d >= want)

    @property
    def packed_type(self) -> str:
        return packed_type(self.n, self.k)

    @property
    def name(self) -> str:
        return f"vnni_{self.rows}x{self.tiles}x{self.chains}_k{self.k}_n{self.n}"


def packed_dims(n: int, k: int) -> tuple[int, int, int]:
    """The stored shape of an [n, k] weight: [n/16, k/4, 64]."""
    return (n // LANES, k // DEPTH, LANES * DEPTH)


def unpacked_dims(dims: tuple) -> tuple[int, int]:
    """[n, k] of a weight stored as packed_dims(n, k)."""
    return (dims[0] * LANES, dims[1] * DEPTH)


def packed_type(n: int, k: int) -> str:
    return tensor_type(packed_dims(n, k), "i8")


def plan(rows: object, k: int, n: int) -> Kernel:
    """The kernel for `rows` rows (an int, or a dynamic dim) of a stored [n, k] weight:
    few static rows in one block, chains enough for 4 accumulators; else 4-row blocks."""
    if n % ALIGN or k % ALIGN:
        raise ValueError(f"a VNNI product needs N and K multiples of {ALIGN}, got {n} and {k}")
    if isinstance(rows, int) and rows <= FEW_ROWS:
        return Kernel(rows, 1, -(-4 // rows), k, n)
    tiles = next(t for t in (4, 2, 1) if (n // LANES) % t == 0)
    return Kernel(ROW_BLOCK, tiles, 1, k, n)


def pack_weight(w: np.ndarray) -> np.ndarray:
    """int8 [n, k] -> [n/16, k/4, 64]: 16 columns x 4 in-features a 64-byte vector."""
    n, k = w.shape
    return np.ascontiguousarray(np.asarray(w).reshape(n // LANES, LANES, k // DEPTH, DEPTH)
                                .transpose(0, 2, 1, 3)).reshape(n // LANES, k // DEPTH, LANES * DEPTH)


def executable_text(kern: Kernel, sym: str) -> list[str]:
    """`stream.executable` sym (an @-symbol) with export sym: (x [m, k] u8, w packed, m) ->
    y [m, n] i32, m a multiple of kern.rows."""
    rb, tb, c, kb = kern.rows, kern.tiles, kern.chains, kern.k // DEPTH
    x_t, y_t = f"memref<?x{kern.k}xi8>", f"memref<?x{kern.n}xi32>"
    w_t = f"memref<{kern.n // LANES}x{kb}x{LANES * DEPTH}xi8>"
    vec, bytes_ = f"vector<{LANES}xi32>", f"vector<{LANES * DEPTH}xi8>"
    accs = [(i, t, j) for i in range(rb) for t in range(tb) for j in range(c)]  # (row, tile, chain)

    def acc(i, t, j):
        return f"{i}_{t}_{j}"

    step = []
    for j in range(c):
        step += [f"%k{j} = arith.addi %k, %c{j} : index", f"%x{j}off = arith.muli %k{j}, %c{DEPTH} : index"]
        step += [f"%w{t}_{j} = vector.load %w[%tile{t}, %k{j}, %c0] : {w_t}, {bytes_}" for t in range(tb)]
        for i in range(rb):
            p = f"{i}_{j}"
            step += [f"%x{p}b = vector.load %x[%row{i}, %x{j}off] : {x_t}, vector<{DEPTH}xi8>",
                     f"%x{p}w = vector.bitcast %x{p}b : vector<{DEPTH}xi8> to vector<1xi32>",
                     f"%x{p}s = vector.broadcast %x{p}w : vector<1xi32> to {vec}",
                     f"%x{p} = vector.bitcast %x{p}s : {vec} to {bytes_}"]
            step += [f'%n{acc(i, t, j)} = llvm.call_intrinsic "{INTRINSIC}"(%a{acc(i, t, j)}, %x{p}, %w{t}_{j}) : '
                     f"({vec}, {bytes_}, {bytes_}) -> {vec}" for t in range(tb)]
    types = ", ".join([vec] * len(accs))
    inits = ", ".join(f"%a{acc(*a)} = %zero" for a in accs)
    yields = ", ".join(f"%n{acc(*a)}" for a in accs)
    stores = []
    for i in range(rb):
        for t in range(tb):
            total = f"%acc#{accs.index((i, t, 0))}"
            for j in range(1, c):
                stores.append(f"%s{acc(i, t, j)} = arith.addi {total}, %acc#{accs.index((i, t, j))} : {vec}")
                total = f"%s{acc(i, t, j)}"
            stores.append(f"vector.store {total}, %y[%row{i}, %col{t}] : {y_t}, {vec}")
    consts = [f"%c{v} = arith.constant {v} : index" for v in sorted({0, 1, DEPTH, LANES} | set(range(max(rb, tb, c))))]
    groups = kern.blocks // kern.blocks_per_workgroup
    return ([f"stream.executable private {sym} {{",
             f"  stream.executable.export public {sym} workgroups() -> (index, index, index) {{",
             f"    %g = arith.constant {groups} : index",
             "    %one = arith.constant 1 : index",
             "    stream.return %g, %one, %one : index, index, index",
             "  }",
             "  builtin.module {",
             f"    func.func {sym}(%bx: !stream.binding, %bw: !stream.binding, %m: index, %by: !stream.binding) {{"]
            + [f"      {line}" for line in consts]
            + [f"      %ckb = arith.constant {kb} : index",
               f"      %cchains = arith.constant {c} : index",
               f"      %crows = arith.constant {rb} : index",
               f"      %ctiles = arith.constant {tb} : index",
               f"      %cper = arith.constant {kern.blocks_per_workgroup} : index",
               f"      %zero = arith.constant dense<0> : {vec}",
               "      %wg = hal.interface.workgroup.id[0] : index",
               f"      %x = stream.binding.subspan %bx[%c0] : !stream.binding -> {x_t}{{%m}}",
               f"      %w = stream.binding.subspan %bw[%c0] : !stream.binding -> {w_t}",
               f"      %y = stream.binding.subspan %by[%c0] : !stream.binding -> {y_t}{{%m}}",
               "      %b0 = arith.muli %wg, %cper : index",
               "      scf.for %b = %c0 to %cper step %c1 {",
               "        %block = arith.addi %b0, %b : index",
               "        %tile = arith.muli %block, %ctiles : index"]
            + [f"        %tile{t} = arith.addi %tile, %c{t} : index" for t in range(tb)]
            + [f"        %col{t} = arith.muli %tile{t}, %c{LANES} : index" for t in range(tb)]
            + ["        scf.for %r = %c0 to %m step %crows {"]
            + [f"          %row{i} = arith.addi %r, %c{i} : index" for i in range(rb)]
            + [f"          %acc:{len(accs)} = scf.for %k = %c0 to %ckb step %cchains iter_args({inits}) -> ({types}) {{"]
            + [f"            {line}" for line in step]
            + [f"            scf.yield {yields} : {types}", "          }"]
            + [f"          {line}" for line in stores]
            + ["        }", "      }", "      return", "    }", "  }", "}"])


def column_sums_text(e: Emitter, n: int, k: int, weight: tuple[str, str], sym: str) -> list[str]:
    """Global @sym = 128 * sum_k w[n, k] as int32 [n], from the packed weight (global, type)."""
    src = TV(e.v(f"util.global.load {weight[0]} : {weight[1]}", "w"), packed_dims(n, k), "i8")
    split = e.expand(src, [[0], [1], [2, 3]], (n // LANES, k // DEPTH, LANES, DEPTH))

    def body(a):  # a: w, acc; loops tile, k/4, lane, depth
        w = e.v(f"arith.shli {e.v(f'arith.extsi {a[0]} : i8 to i32')}, {e.const(7, 'i32')} : i32")
        return [e.v(f"arith.addi {a[1]}, {w} : i32")]

    sums = e.generic(4, [(split, ["d0", "d1", "d2", "d3"])],
                     [(e.filled((n // LANES, LANES), "i32", 0), ["d0", "d2"])], body, reductions=(1, 3))[0]
    value = e.collapse(sums, [[0, 1]])
    return ([f"util.global private {sym} : {value.type}", "util.initializer {"] + e.lines
            + [f"  util.global.store {value.name}, {sym} : {value.type}", "  util.return", "}"])


def product(e: Emitter, xu: TV, kern: Kernel, executable: str, packed: str, sums: str) -> TV:
    """int32 [m, n] = xq x w^T from xu = xq XOR 0x80 [m, k] (the packed weight and the column
    sums as loaded in this function); rows padded to the kernel's block and sliced back."""
    m = xu.dims[0]
    dyn = tensor_type(("?", kern.k), "i8")
    x = e.v(f"tensor.cast {xu.name} : {xu.type} to {dyn}") if isinstance(m, int) else xu.name
    mv = mp = e.dim_value(m)
    if not (isinstance(m, int) and m % kern.rows == 0):
        c = e.idx(kern.rows)
        mp = e.v(f"arith.muli {e.v(f'arith.ceildivui {mv}, {c} : index')}, {c} : index", "d")
        pad, zero, x_in, x = e.v(f"arith.subi {mp}, {mv} : index", "d"), e.const(0, "i8"), x, e.fresh("pad")
        e.emit(f"{x} = tensor.pad {x_in} low[0, 0] high[{pad}, 0] {{")
        e.emit(f"^bb0({x}i: index, {x}j: index):")
        e.emit(f"  tensor.yield {zero} : i8")
        e.emit(f"}} : {dyn} to {dyn}")
    yt = tensor_type(("?", kern.n), "i32")
    raw = e.v(f"flow.dispatch {executable}::{executable}({x}, {packed}, {mp}) : "
              f"({dyn}{{{mp}}}, {kern.packed_type}, index) -> {yt}{{{mp}}}", "vnni")
    if mp != mv:
        raw = e.v(f"tensor.extract_slice {raw}[0, 0] [{mv}, {kern.n}] [1, 1] : {yt} to {yt}", "s")
    out_t = tensor_type((m, kern.n), "i32")
    if isinstance(m, int):
        raw = e.v(f"tensor.cast {raw} : {yt} to {out_t}")
    sums_tv = TV(sums, (kern.n,), "i32")
    return e.generic(2, [(TV(raw, (m, kern.n), "i32"), ["d0", "d1"]), (sums_tv, ["d1"])],
                     [(e.empty((m, kern.n), "i32"), ["d0", "d1"])],
                     lambda a: [e.v(f"arith.subi {a[0]}, {a[1]} : i32")])[0]
