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

from ..dialect.ops import ACT_TINY
from .emitter import TV, Emitter, executable_head, float_literal, row_padded_dispatch, tensor_type

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
    return (executable_head(sym, kern.blocks // kern.blocks_per_workgroup,
                             "%bx: !stream.binding, %bw: !stream.binding, %m: index, %by: !stream.binding")
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
               f"      %y = stream.binding.subspan %by[%c0] : !stream.binding -> {y_t}{{%m}}"]
            + _block_loops(rb, tb)
            + [f"          %acc:{len(accs)} = scf.for %k = %c0 to %ckb step %cchains iter_args({inits}) -> ({types}) {{"]
            + [f"            {line}" for line in step]
            + [f"            scf.yield {yields} : {types}", "          }"]
            + [f"          {line}" for line in stores]
            + ["        }", "      }", "      return", "    }", "  }", "}"])


def _block_loops(rb: int, tb: int) -> list[str]:
    """A kernel's two outer loops, opened: this workgroup's column blocks (%cper of them, each
    %ctiles tiles of LANES columns: %col0..) and the rows, %crows at a time (%row0..)."""
    return (["      %b0 = arith.muli %wg, %cper : index",
             "      scf.for %b = %c0 to %cper step %c1 {",
             "        %block = arith.addi %b0, %b : index",
             "        %tile = arith.muli %block, %ctiles : index"]
            + [f"        %tile{t} = arith.addi %tile, %c{t} : index" for t in range(tb)]
            + [f"        %col{t} = arith.muli %tile{t}, %c{LANES} : index" for t in range(tb)]
            + ["        scf.for %r = %c0 to %m step %crows {"]
            + [f"          %row{i} = arith.addi %r, %c{i} : index" for i in range(rb)])


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
    prod = row_padded_dispatch(e, executable, [xu], [(packed, kern.packed_type)], kern.rows, kern.n, "i32", "vnni")
    m = xu.dims[0]
    sums_tv = TV(sums, (kern.n,), "i32")
    return e.generic(2, [(prod, ["d0", "d1"]), (sums_tv, ["d1"])],
                     [(e.empty((m, kern.n), "i32"), ["d0", "d1"])],
                     lambda a: [e.v(f"arith.subi {a[0]}, {a[1]} : i32")])[0]


# ---- w4a8: int4 weights in groups x int8 activations per group ---------------------------------

UNROLL = 4  # byte-vectors a step of the loop over a group (fewer loop branches; measured no slower than 1)
INT4_DEPTH = 8  # in-features a stored byte-vector covers: two nibbles of 4
# A fused kernel keeps its rows' int8 form on the workgroup's stack: at most this many bytes
# (IREE's llvm-cpu limit for a dispatch's stack is 32 KiB)
FUSED_MAX_BYTES = 24 * 1024


@dataclass(frozen=True)
class Int4Kernel:
    """One w4a8 dispatch shape: xq [m, k] (s8, one scale per row and group) x w [n, k] (int4
    stored as u = q + 8 two per byte, one f32 scale per column and group) -> y [m, n] f32,
    in blocks of `rows` x `tiles` 16-column tiles; chains 2 keeps the low and high nibbles'
    sums apart (two accumulators a row and tile) for few rows. `fused`: the kernel takes the
    f32 rows and quantizes them itself (see int4_executable_text)."""

    rows: int
    tiles: int
    chains: int
    k: int
    n: int
    group: int
    fused: bool = False

    blocks = Kernel.blocks
    blocks_per_workgroup = Kernel.blocks_per_workgroup

    @property
    def groups(self) -> int:
        return self.k // self.group

    @property
    def packed_type(self) -> str:
        return tensor_type(int4_packed_dims(self.n, self.k), "i8")

    @property
    def scales_type(self) -> str:
        return tensor_type(scales_packed_dims(self.n, self.groups), "f32")

    @property
    def name(self) -> str:
        fused = "_fused" if self.fused else ""
        return f"vnni4_{self.rows}x{self.tiles}x{self.chains}_k{self.k}_n{self.n}_g{self.group}{fused}"


def int4_packed_dims(n: int, k: int) -> tuple[int, int, int]:
    """The stored shape of an int4 [n, k] weight: [n/16, k/8, 64] bytes."""
    return (n // LANES, k // INT4_DEPTH, LANES * DEPTH)


def scales_packed_dims(n: int, groups: int) -> tuple[int, int, int]:
    """The stored shape of [n, groups] scales: [n/16, groups, 16] (a tile's 16 columns a vector)."""
    return (n // LANES, groups, LANES)


def int4_fits(n: int, k: int, group: int) -> bool:
    """The w4a8 kernel takes [n, k] in groups of `group`: whole tiles and whole byte-vectors."""
    return n % LANES == 0 and group % INT4_DEPTH == 0 and k % group == 0


def int4_plan(rows: object, k: int, n: int, group: int) -> Int4Kernel:
    """The w4a8 kernel for `rows` rows (an int, or a dynamic dim): few static rows in one block
    (two chains below 4 rows), else 4-row x 2-tile blocks, the rows padded to 4."""
    if not int4_fits(n, k, group):
        raise ValueError(f"a w4a8 VNNI product needs N a multiple of {LANES} and groups of a multiple of "
                         f"{INT4_DEPTH}, got N {n}, K {k}, group {group}")
    if isinstance(rows, int) and rows <= FEW_ROWS:
        fused = rows * k <= FUSED_MAX_BYTES and group % LANES == 0
        return Int4Kernel(rows, 1, 2 if rows < 4 else 1, k, n, group, fused)
    return Int4Kernel(ROW_BLOCK, 2 if (n // LANES) % 2 == 0 else 1, 1, k, n, group)


def pack_int4_weight(q: np.ndarray) -> np.ndarray:
    """int4 values [n, k] (-8..7) -> [n/16, k/8, 64] bytes: byte 4 * lane + p of vector (tile, j)
    holds u[n, 8j + p] in its low nibble and u[n, 8j + 4 + p] in its high one, u = q + 8."""
    n, k = q.shape
    u = (np.asarray(q, np.int16) + 8).astype(np.uint8).reshape(n // LANES, LANES, k // INT4_DEPTH, 2, DEPTH)
    u = u.transpose(0, 2, 3, 1, 4)  # tile, j, half, lane, p
    return np.ascontiguousarray(u[:, :, 0] | (u[:, :, 1] << 4)).reshape(n // LANES, k // INT4_DEPTH,
                                                                        LANES * DEPTH).view(np.int8)


def pack_scales(s: np.ndarray) -> np.ndarray:
    """f32 [n, groups] -> [n/16, groups, 16]."""
    n, groups = s.shape
    return np.ascontiguousarray(np.asarray(s, np.float32).reshape(n // LANES, LANES, groups).transpose(0, 2, 1))


def int4_unpacked_dims(dims: tuple) -> tuple[int, int]:
    """[n, k] of an int4 weight stored as int4_packed_dims(n, k)."""
    return (dims[0] * LANES, dims[1] * INT4_DEPTH)


def int4_executable_text(kern: Int4Kernel, sym: str) -> list[str]:
    """`stream.executable` sym with export sym: (xq [m, k] s8, xs [m, groups] f32 (the rows'
    scales), xc [m, groups] i32 (8 x each group's sum of xq), w packed, s packed, m) -> y [m, n]
    f32 = sum_grp float(sum_k u * xq - xc) * xs * s, m a multiple of kern.rows.

    For each group the int32 sums run over its k/8 byte-vectors: the low nibbles (u of 4
    in-features) and the high ones (the next 4) times the broadcast 4 activation bytes of
    each, one vpdpbusd apiece (u is the unsigned operand); then the group's scales fold the
    sums into f32 accumulators that live across the groups."""
    rb, tb, c, groups, steps = kern.rows, kern.tiles, kern.chains, kern.groups, kern.group // INT4_DEPTH
    rows = f"{rb}" if kern.fused else "?"  # a fused kernel's int8 rows are its own, on the stack
    x_t, xs_t, xc_t, y_t = (f"memref<{rows}x{kern.k}xi8>", f"memref<{rows}x{groups}xf32>",
                            f"memref<{rows}x{groups}xi32>", f"memref<?x{kern.n}xf32>")
    w_t = f"memref<{kern.n // LANES}x{kern.k // INT4_DEPTH}x{LANES * DEPTH}xi8>"
    s_t = f"memref<{kern.n // LANES}x{groups}x{LANES}xf32>"
    vec, fvec, bytes_ = f"vector<{LANES}xi32>", f"vector<{LANES}xf32>", f"vector<{LANES * DEPTH}xi8>"
    iaccs = [(i, t, j) for i in range(rb) for t in range(tb) for j in range(c)]
    faccs = [(i, t) for i in range(rb) for t in range(tb)]

    def dot(acc: str, u: str, x: str) -> str:
        return f'llvm.call_intrinsic "{INTRINSIC}"({acc}, {u}, {x}) : ({vec}, {bytes_}, {bytes_}) -> {vec}'

    def one_step(u: int, acc: dict) -> tuple[list[str], dict]:
        """In-features 8 (kk + u) .. + 7 of the group: the byte-vector of each tile, the two
        activation words of each row; acc (row, tile, chain) -> SSA name in, the new ones out."""
        lines = [f"%kbs{u} = arith.addi %kbk, %c{u} : index", f"%xo{u} = arith.muli %kbs{u}, %c{INT4_DEPTH} : index",
                 f"%xh{u} = arith.addi %xo{u}, %c{DEPTH} : index"]
        for t in range(tb):
            lines += [f"%w{t}_{u} = vector.load %w[%tile{t}, %kbs{u}, %c0] : {w_t}, {bytes_}",
                      f"%lo{t}_{u} = arith.andi %w{t}_{u}, %m15 : {bytes_}",
                      f"%hi{t}_{u} = arith.shrui %w{t}_{u}, %s4 : {bytes_}"]
        out = {}
        for i in range(rb):
            for half, off in (("l", f"%xo{u}"), ("h", f"%xh{u}")):
                p = f"{half}{i}_{u}"
                lines += [f"%x{p}b = vector.load %x[%row{i}, {off}] : {x_t}, vector<{DEPTH}xi8>",
                          f"%x{p}w = vector.bitcast %x{p}b : vector<{DEPTH}xi8> to vector<1xi32>",
                          f"%x{p}s = vector.broadcast %x{p}w : vector<1xi32> to {vec}",
                          f"%x{p} = vector.bitcast %x{p}s : {vec} to {bytes_}"]
            for t in range(tb):
                a = f"{i}_{t}_{u}"
                if c == 2:
                    lines += [f"%n{a}_0 = {dot(acc[i, t, 0], f'%lo{t}_{u}', f'%xl{i}_{u}')}",
                              f"%n{a}_1 = {dot(acc[i, t, 1], f'%hi{t}_{u}', f'%xh{i}_{u}')}"]
                    out[i, t, 0], out[i, t, 1] = f"%n{a}_0", f"%n{a}_1"
                else:
                    lines += [f"%p{a} = {dot(acc[i, t, 0], f'%lo{t}_{u}', f'%xl{i}_{u}')}",
                              f"%n{a}_0 = {dot(f'%p{a}', f'%hi{t}_{u}', f'%xh{i}_{u}')}"]
                    out[i, t, 0] = f"%n{a}_0"
        return lines, out

    unroll = next(u for u in (UNROLL, 2, 1) if steps % u == 0)
    step, acc = ["%kbk = arith.addi %kb0, %kk : index"], {a: f"%a{a[0]}_{a[1]}_{a[2]}" for a in iaccs}
    for u in range(unroll):
        lines, acc = one_step(u, acc)
        step += lines
    itypes, ftypes = ", ".join([vec] * len(iaccs)), ", ".join([fvec] * len(faccs))
    fold = []  # the group's int32 sums into the f32 accumulators
    for t in range(tb):
        fold.append(f"%ws{t} = vector.load %s[%tile{t}, %grp, %c0] : {s_t}, {fvec}")
    for i in range(rb):
        fold += [f"%xc{i}s = memref.load %xc[%row{i}, %grp] : {xc_t}",
                 f"%xc{i} = vector.broadcast %xc{i}s : i32 to {vec}",
                 f"%xs{i}s = memref.load %xs[%row{i}, %grp] : {xs_t}",
                 f"%xs{i} = vector.broadcast %xs{i}s : f32 to {fvec}"]
        for t in range(tb):
            a, total = f"{i}_{t}", f"%acc#{iaccs.index((i, t, 0))}"
            if c == 2:
                fold.append(f"%t{a} = arith.addi {total}, %acc#{iaccs.index((i, t, 1))} : {vec}")
                total = f"%t{a}"
            fold += [f"%d{a} = arith.subi {total}, %xc{i} : {vec}",
                     f"%f{a} = arith.sitofp %d{a} : {vec} to {fvec}",
                     f"%sc{a} = arith.mulf %xs{i}, %ws{t} : {fvec}",
                     f"%ny{a} = math.fma %f{a}, %sc{a}, %y{a} : {fvec}"]
    consts = [f"%c{v} = arith.constant {v} : index"
              for v in sorted({0, 1, DEPTH, INT4_DEPTH, LANES} | set(range(max(rb, tb, UNROLL))))]
    return (executable_head(sym, kern.blocks // kern.blocks_per_workgroup,
                             "%bx: !stream.binding, "
                             + ("" if kern.fused else "%bxs: !stream.binding, %bxc: !stream.binding, ")
                             + "%bw: !stream.binding, %bs: !stream.binding, %m: index, %by: !stream.binding")
            + [f"      {line}" for line in consts]
            + [f"      %cunroll = arith.constant {unroll} : index",
               f"      %csteps = arith.constant {steps} : index",
               f"      %cgroups = arith.constant {groups} : index",
               f"      %crows = arith.constant {rb} : index",
               f"      %ctiles = arith.constant {tb} : index",
               f"      %cper = arith.constant {kern.blocks_per_workgroup} : index",
               f"      %zero = arith.constant dense<0> : {vec}",
               f"      %fzero = arith.constant dense<0.0> : {fvec}",
               f"      %m15 = arith.constant dense<15> : {bytes_}",
               f"      %s4 = arith.constant dense<4> : {bytes_}",
               "      %wg = hal.interface.workgroup.id[0] : index"]
            + [f"      {line}" for line in (_quantize_rows_text(kern, x_t, xs_t, xc_t) if kern.fused else
                                          [f"%x = stream.binding.subspan %bx[%c0] : !stream.binding -> {x_t}{{%m}}",
                                           f"%xs = stream.binding.subspan %bxs[%c0] : !stream.binding -> {xs_t}{{%m}}",
                                           f"%xc = stream.binding.subspan %bxc[%c0] : !stream.binding -> {xc_t}{{%m}}"])]
            + [f"      %w = stream.binding.subspan %bw[%c0] : !stream.binding -> {w_t}",
               f"      %s = stream.binding.subspan %bs[%c0] : !stream.binding -> {s_t}",
               f"      %y = stream.binding.subspan %by[%c0] : !stream.binding -> {y_t}{{%m}}"]
            + _block_loops(rb, tb)
            + [f"          %out:{len(faccs)} = scf.for %grp = %c0 to %cgroups step %c1 iter_args("
               + ", ".join(f"%y{i}_{t} = %fzero" for i, t in faccs) + f") -> ({ftypes}) {{",
               "            %kb0 = arith.muli %grp, %csteps : index",
               f"            %acc:{len(iaccs)} = scf.for %kk = %c0 to %csteps step %cunroll iter_args("
               + ", ".join(f"%a{i}_{t}_{j} = %zero" for i, t, j in iaccs) + f") -> ({itypes}) {{"]
            + [f"              {line}" for line in step]
            + ["              scf.yield " + ", ".join(acc[a] for a in iaccs) + f" : {itypes}",
               "            }"]
            + [f"            {line}" for line in fold]
            + ["            scf.yield " + ", ".join(f"%ny{i}_{t}" for i, t in faccs) + f" : {ftypes}",
               "          }"]
            + [f"          vector.store %out#{faccs.index((i, t))}, %y[%row{i}, %col{t}] : {y_t}, {fvec}"
               for i, t in faccs]
            + ["        }", "      }", "      return", "    }", "  }", "}"])


def _quantize_rows_text(kern: Int4Kernel, q_t: str, qs_t: str, qc_t: str) -> list[str]:
    """A fused kernel's prologue: %x, the f32 rows [rows, k], to %x (their int8 groups), %xs
    (max|x| / 127 of each group) and %xc (8 x each group's sum of the int8 values) on the stack,
    the unfused kernel's inputs: each workgroup quantizes the few rows itself, which costs less
    than the three dispatches that would do it once. The same formula as the lowering's
    _group_int8 (and the interpreter's act_quantize_rows): q = roundeven(x * (127 / max(amax,
    tiny))), bit for bit."""
    fvec, ivec = f"vector<{LANES}xf32>", f"vector<{LANES}xi32>"
    f_t = f"memref<?x{kern.k}xf32>"
    return [f"%xf = stream.binding.subspan %bx[%c0] : !stream.binding -> {f_t}{{%m}}",
            f"%x = memref.alloca() : {q_t}", f"%xs = memref.alloca() : {qs_t}", f"%xc = memref.alloca() : {qc_t}",
            f"%c127 = arith.constant {float_literal(127.0)} : f32",
            f"%tiny = arith.constant {float_literal(ACT_TINY)} : f32",
            "%c3i = arith.constant 3 : i32",
            f"%cgroup = arith.constant {kern.group} : index",
            f"%qf0 = arith.constant dense<0.0> : {fvec}",
            f"%qi0 = arith.constant dense<0> : {ivec}",
            "scf.for %qr = %c0 to %crows step %c1 {",
            "  scf.for %qg = %c0 to %cgroups step %c1 {",
            "    %qb = arith.muli %qg, %cgroup : index",
            f"    %qmax = scf.for %qj = %c0 to %cgroup step %c{LANES} iter_args(%qm = %qf0) -> ({fvec}) {{",
            "      %qo = arith.addi %qb, %qj : index",
            f"      %qv = vector.load %xf[%qr, %qo] : {f_t}, {fvec}",
            f"      %qa = math.absf %qv : {fvec}",
            f"      %qn = arith.maximumf %qa, %qm : {fvec}",
            f"      scf.yield %qn : {fvec}",
            "    }",
            f"    %amax = vector.reduction <maximumf>, %qmax : {fvec} into f32",
            "    %qden = arith.maximumf %amax, %tiny : f32",
            "    %qinv = arith.divf %c127, %qden : f32",
            "    %qstep = arith.divf %amax, %c127 : f32",
            f"    memref.store %qstep, %xs[%qr, %qg] : {qs_t}",
            f"    %qinvv = vector.broadcast %qinv : f32 to {fvec}",
            f"    %qsum = scf.for %qj2 = %c0 to %cgroup step %c{LANES} iter_args(%qacc = %qi0) -> ({ivec}) {{",
            "      %qo2 = arith.addi %qb, %qj2 : index",
            f"      %qv2 = vector.load %xf[%qr, %qo2] : {f_t}, {fvec}",
            f"      %qp = arith.mulf %qv2, %qinvv : {fvec}",
            f"      %qe = math.roundeven %qp : {fvec}",
            f"      %qi = arith.fptosi %qe : {fvec} to {ivec}",
            f"      %q8 = arith.trunci %qi : {ivec} to vector<{LANES}xi8>",
            f"      vector.store %q8, %x[%qr, %qo2] : {q_t}, vector<{LANES}xi8>",
            f"      %qn2 = arith.addi %qacc, %qi : {ivec}",
            f"      scf.yield %qn2 : {ivec}",
            "    }",
            f"    %qtot = vector.reduction <add>, %qsum : {ivec} into i32",
            "    %qc8 = arith.shli %qtot, %c3i : i32",
            f"    memref.store %qc8, %xc[%qr, %qg] : {qc_t}",
            "  }",
            "}"]


def int4_product(e: Emitter, ins: list[TV], kern: Int4Kernel, executable: str, packed: str, scales: str) -> TV:
    """f32 [m, n] from `ins` -- xq [m, k] s8, its scales xs and corrections xc [m, groups], or
    for a fused kernel the f32 rows [m, k] alone -- and the packed weight and scales as loaded
    in this function; rows padded to the kernel's block."""
    return row_padded_dispatch(e, executable, ins, [(packed, kern.packed_type), (scales, kern.scales_type)],
                               kern.rows, kern.n, "f32", "vnni4")
