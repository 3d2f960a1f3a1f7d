"""Weight-only int4 and int8 products of float rows (decode, and extend with few rows) as a
hand-written dispatch for AVX-512 CPUs (the targets with `vnni`).

Why: IREE 3.13 runs a weight-only matvec as a contraction that widens every weight inside its
inner loop, sums per group and reduces the groups in a second dispatch, over a weight stored
[in, out] whose rows a workgroup visits a page apart; on the 2-core AMD EPYC of
docs/performance.md that decode is compute- and walk-bound (1.1B int4: 13.9 tok/s, 0.37x
llama.cpp's Q4_0; int8 0.50x Q8_0). Weight-only decode is a matvec: each weight is used once
per row, so what matters is streaming the weight bytes and one conversion and FMA per weight.

How (docs/quantization.md, "Weight-only decode on AVX-512 CPUs"):
- The archive stores each weight the kernel reads in 64-column blocks, [N / 64, K, 64]
  (`stored_dims`; int4 two a byte, column 2j of a block in the low nibble): a workgroup's
  blocks are contiguous runs the hardware prefetchers follow. Prefill's dequantize-first
  path reads the same bytes (lowering/quantized.py).
- Each workgroup owns `lines` blocks. For each in-feature k it loads the blocks' bytes of
  row k and turns them into f32: int8 by sign extension and conversion, 16 columns a vector;
  int4 by zero-extending each byte to i32 and one vpermps each from a 16-entry table of the
  signed values (the byte itself picks the low nibble, the even column; the byte shifted right
  by 4 the high one, the odd column). Then x[row, k] * w into f32 accumulators per row (int4:
  even and odd columns apart). After each group it adds acc x s[group] into y in memory.
- Static row counts up to MAX_ROWS take one pass over the weight; more rows, or a dynamic
  count (the `decode` of any batch), go ROW_BLOCK rows a pass, padded to a multiple of it.
- Symmetric weights only (no zero points), groups a multiple of UNROLL, N a multiple of 64;
  everything else keeps IREE's kernel on the [in, out] layout.

Measured alone (benchmarks/gemv.py, one row, [2048, N]): on a DRAM-sized int4 weight (N =
65536) 39 against 23 GB/s for the kernel's first form on the [in, out] layout (the table
lookup the same in both); int8 45 GB/s. In the 1.1B model: docs/quantization.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .emitter import TV, Emitter, executable_head, row_padded_dispatch, tensor_type

LANES = 16  # f32 lanes of a 512-bit vector
BLOCK = 64  # output columns of one stored block (a "line" of a workgroup): 4 accumulator vectors a row
UNROLL = 4  # in-features a step of the inner loop
ROW_BLOCK = 4  # rows sharing one widened weight row: 16 accumulators at most (rows x 4 x lines)
MAX_ROWS = 8  # static row counts up to this are one pass; more (or a dynamic count) go ROW_BLOCK at a time
MIN_WORKGROUPS = 8  # enough workgroups to keep every worker busy
BITS = (4, 8)
# a signed nibble's value by its bits 0..15 (two's complement), the table vpermps reads
NIBBLES = tuple(range(8)) + tuple(range(-8, 0))
PERMUTE = '"llvm.x86.avx512.permvar.sf.512"'  # vpermps: lane i of the result = table[index[i] & 15]


def block_bytes(bits: int) -> int:
    """Bytes of one in-feature's row of one stored block."""
    return BLOCK * bits // 8


def stored_dims(n: int, k: int) -> tuple[int, int, int]:
    """The archive's shape of an IR [n, k] ([out, in]) weight for the kernel: [n / 64, k, 64],
    each block of 64 out-features with its k rows one after another (int4: two a byte)."""
    return (n // BLOCK, k, BLOCK)


def pack_weight(w: np.ndarray) -> np.ndarray:
    """IR [n, k] ([out, in]) values -> [n / 64, k, 64] (stored_dims), same element values."""
    n, k = w.shape
    return np.ascontiguousarray(np.asarray(w).reshape(n // BLOCK, BLOCK, k).transpose(0, 2, 1))


@dataclass(frozen=True)
class Kernel:
    """y [rows, n] f32 = x [rows, k] f32 times the symmetric `bits`-bit weight [k, n] (stored as
    stored_dims) with f32 scales [k / group, n]. rows: a static count up to MAX_ROWS (the
    dispatch's operands static, one pass), or None: any count, padded by the caller to a
    multiple of ROW_BLOCK."""

    rows: int | None
    k: int
    n: int
    group: int
    bits: int = 4

    def __post_init__(self) -> None:
        if self.rows is not None and not 1 <= self.rows <= MAX_ROWS:
            raise ValueError(f"a static row count of the gemv kernel is 1..{MAX_ROWS}, got {self.rows}")

    @property
    def row_block(self) -> int:
        """Rows a pass over the weight block: the largest divisor of rows <= ROW_BLOCK."""
        if self.rows is None:
            return ROW_BLOCK
        return max(d for d in range(1, ROW_BLOCK + 1) if self.rows % d == 0)

    @property
    def lines(self) -> int:
        """64-column blocks a workgroup: as many as 16 accumulators allow while MIN_WORKGROUPS
        remain. More bytes of a weight row per visit stream better (measured on the int8 form,
        an L3-resident weight: 23 GB/s with one 64-byte line a row, 36 with four)."""
        rb = self.row_block
        return next(v for v in (4, 2, 1) if v * rb <= ROW_BLOCK and self.n % (BLOCK * v) == 0
                    and (self.n // (BLOCK * v) >= MIN_WORKGROUPS or v == 1))

    @property
    def columns(self) -> int:
        return BLOCK * self.lines

    @property
    def byte_dims(self) -> tuple[int, int, int]:
        """The stored weight's dims as the kernel reads it, in bytes (stored_dims, int4 two a byte)."""
        return (self.n // BLOCK, self.k, block_bytes(self.bits))

    @property
    def weight_bytes(self) -> str:
        return f"memref<{'x'.join(map(str, self.byte_dims))}xi8>"

    @property
    def name(self) -> str:
        rows = "D" if self.rows is None else self.rows
        return f"gemv_i{self.bits}_{rows}x{self.k}x{self.n}_g{self.group}"


def fits(k: int, n: int, group: int, bits: int) -> bool:
    """The kernel takes a [k, n] weight of `bits` in groups of `group`: whole column blocks and
    unrolled steps."""
    return bits in BITS and n % BLOCK == 0 and k % group == 0 and group % UNROLL == 0


def takes_decode(vnni: bool, bits: int, symmetric: bool) -> bool:
    """Whether a weight-only scheme's products go through the kernel (where shapes fit), so that
    static-batch decode functions pay (without it IREE's kernel is faster with a dynamic batch:
    TargetProfile.decode_batches)."""
    return vnni and bits in BITS and symmetric


def _widen(kern: Kernel, u: int) -> tuple[list[str], list[str]]:
    """The lines that turn the workgroup's weight row %k{u} into f32 vectors, and their names in
    accumulator order (see _accumulator_columns)."""
    bvec, ivec, fvec = f"vector<{LANES}xi8>", f"vector<{LANES}xi32>", f"vector<{LANES}xf32>"
    w_t = kern.weight_bytes
    lines, names = [], []
    for line in range(kern.lines):
        for part in range(block_bytes(kern.bits) // LANES):  # 16-byte loads of the block's row
            v = f"{u}_{line}_{part}"
            lines += [f"%b{v} = vector.load %w[%blk{line}, %k{u}, %c{LANES * part}] : {w_t}, {bvec}"]
            if kern.bits == 8:  # 16 columns in order
                lines += [f"%e{v} = arith.extsi %b{v} : {bvec} to {ivec}",
                          f"%f{v} = arith.sitofp %e{v} : {ivec} to {fvec}"]
                names.append(f"%f{v}")
            else:
                # the bytes of 32 columns zero-extended to i32; vpermps reads the low 4 bits of
                # each lane, so the byte picks its low nibble's value (the even column) from the
                # table and the byte shifted right by 4 its high one (the odd column), as f32
                lines += [f"%e{v} = arith.extui %b{v} : {bvec} to {ivec}",
                          f"%h{v} = arith.shrui %e{v}, %c4v : {ivec}",
                          f"%f{v}e = llvm.call_intrinsic {PERMUTE}(%lut, %e{v}) : ({fvec}, {ivec}) -> {fvec}",
                          f"%f{v}o = llvm.call_intrinsic {PERMUTE}(%lut, %h{v}) : ({fvec}, {ivec}) -> {fvec}"]
                names += [f"%f{v}e", f"%f{v}o"]
    return lines, names


def _accumulator_columns(kern: Kernel) -> list[tuple[list[int], int]]:
    """How the accumulator vectors of a row map to output columns: (accumulator indexes, column
    offset in the workgroup) per stored vector of y: int8 one accumulator per 16 columns; int4
    an even and an odd one per 32 columns, interleaved back at the fold."""
    per = 1 if kern.bits == 8 else 2
    return [(list(range(j * per, (j + 1) * per)), j * per * LANES) for j in range(kern.columns // (per * LANES))]


def executable_text(kern: Kernel, sym: str) -> list[str]:
    """`stream.executable` sym with export sym: (x [rows, k] f32, w stored_dims bytes, s [groups, n]
    f32, m rows (an index; rows None: a multiple of ROW_BLOCK)) -> y [rows, n] f32; n / kern.columns
    workgroups."""
    rb, groups = kern.row_block, kern.k // kern.group
    fvec = f"vector<{LANES}xf32>"
    # static rows: IREE fuses the rows' producer (a norm) into its own dispatch, which it does
    # not for a dynamic operand (44 more dispatches a 1.1B decode step)
    rows, dyn = (kern.rows, "") if kern.rows else ("?", "{%m}")
    x_t, y_t = f"memref<{rows}x{kern.k}xf32>", f"memref<{rows}x{kern.n}xf32>"
    w_t = kern.weight_bytes
    s_t = f"memref<{groups}x{kern.n}xf32>"
    cols = _accumulator_columns(kern)
    vecs = range(sum(len(a) for a, _ in cols))  # accumulator vectors per row
    accs = [(i, t) for i in range(rb) for t in vecs]

    step, carried = [], {a: f"%a{a[0]}_{a[1]}" for a in accs}
    row_bytes = block_bytes(kern.bits)
    for u in range(UNROLL):
        step.append(f"%k{u} = arith.addi %kb, %c{u} : index")
        lines, names = _widen(kern, u)
        step += lines
        for i in range(rb):
            step += [f"%xs{u}_{i} = memref.load %x[%row{i}, %k{u}] : {x_t}",
                     f"%xb{u}_{i} = vector.broadcast %xs{u}_{i} : f32 to {fvec}"]
            for t in vecs:
                new = f"%n{u}_{i}_{t}"
                step.append(f"{new} = math.fma %xb{u}_{i}, {names[t]}, {carried[(i, t)]} : {fvec}")
                carried[(i, t)] = new

    # after each group: y[row, cols] += (sum over the group of x * q) * s[group, cols]
    fold, zeros = [], []
    mix = [j for pair in zip(range(LANES), range(LANES, 2 * LANES)) for j in pair]
    for i in range(rb):
        for j, (idx, off) in enumerate(cols):
            vt = f"vector<{LANES * len(idx)}xf32>"
            a = [f"%acc#{accs.index((i, t))}" for t in idx]
            if len(a) == 2:  # even and odd columns back in order
                fold.append(f"%z{i}_{j} = vector.shuffle {a[0]}, {a[1]} {mix} : {fvec}, {fvec}")
                z = f"%z{i}_{j}"
            else:
                z = a[0]
            fold += [f"%sv{i}_{j} = vector.load %s[%grp, %col{off}] : {s_t}, {vt}",
                     f"%yv{i}_{j} = vector.load %y[%row{i}, %col{off}] : {y_t}, {vt}",
                     f"%ny{i}_{j} = math.fma {z}, %sv{i}_{j}, %yv{i}_{j} : {vt}",
                     f"vector.store %ny{i}_{j}, %y[%row{i}, %col{off}] : {y_t}, {vt}"]
            zeros.append(f"vector.store %wzero{len(idx)}, %y[%row{i}, %col{off}] : {y_t}, {vt}")

    ftypes = ", ".join([fvec] * len(accs))
    offsets = {off for _, off in cols}
    consts = [f"%c{v} = arith.constant {v} : index"
              for v in sorted({0, 1, kern.lines, kern.columns} | offsets | set(range(max(rb, UNROLL, kern.lines)))
                              | {LANES * p for p in range(row_bytes // LANES)})]
    return (executable_head(sym, kern.n // kern.columns,
                            "%bx: !stream.binding, %bw: !stream.binding, %bs: !stream.binding, %m: index, "
                            "%by: !stream.binding")
            + [f"      {line}" for line in consts]
            + [f"      %cgroup = arith.constant {kern.group} : index",
               f"      %cgroups = arith.constant {groups} : index",
               f"      %crb = arith.constant {rb} : index",
               f"      %cunroll = arith.constant {UNROLL} : index",
               f"      %wzero1 = arith.constant dense<0.0> : {fvec}",
               f"      %wzero2 = arith.constant dense<0.0> : vector<{2 * LANES}xf32>",
               f"      %c4v = arith.constant dense<4> : vector<{LANES}xi32>",
               f"      %lut = arith.constant dense<[{', '.join(str(float(v)) for v in NIBBLES)}]> : {fvec}",
               "      %wg = hal.interface.workgroup.id[0] : index",
               f"      %x = stream.binding.subspan %bx[%c0] : !stream.binding -> {x_t}{dyn}",
               f"      %w = stream.binding.subspan %bw[%c0] : !stream.binding -> {w_t}",
               f"      %s = stream.binding.subspan %bs[%c0] : !stream.binding -> {s_t}",
               f"      %y = stream.binding.subspan %by[%c0] : !stream.binding -> {y_t}{dyn}",
               f"      %col = arith.muli %wg, %c{kern.columns} : index",
               f"      %blk = arith.muli %wg, %c{kern.lines} : index"]
            + [f"      %col{off} = arith.addi %col, %c{off} : index" for off in sorted(offsets)]
            + [f"      %blk{line} = arith.addi %blk, %c{line} : index" for line in range(kern.lines)]
            + ["      scf.for %r = %c0 to %m step %crb {"]
            + [f"        %row{i} = arith.addi %r, %c{i} : index" for i in range(rb)]
            + [f"        {line}" for line in zeros]
            + ["        scf.for %grp = %c0 to %cgroups step %c1 {",
               "          %kg0 = arith.muli %grp, %cgroup : index",
               "          %kg1 = arith.addi %kg0, %cgroup : index",
               f"          %acc:{len(accs)} = scf.for %kb = %kg0 to %kg1 step %cunroll iter_args("
               + ", ".join(f"%a{i}_{t} = %wzero1" for i, t in accs) + f") -> ({ftypes}) {{"]
            + [f"            {line}" for line in step]
            + ["            scf.yield " + ", ".join(carried[a] for a in accs) + f" : {ftypes}",
               "          }"]
            + [f"          {line}" for line in fold]
            + ["        }", "      }", "      return", "    }", "  }", "}"])


def product(e: Emitter, x2: TV, w: TV, s: TV, kern: Kernel, executable: str) -> TV:
    """f32 [m, n] from x2 [m, k] f32 and the weight as loaded (w stored_dims, s [groups, n]); for
    a kernel of any row count the rows are padded to ROW_BLOCK and sliced back."""
    if kern.rows:
        yt = tensor_type((kern.rows, kern.n), "f32")
        raw = e.v(f"flow.dispatch {executable}::{executable}({x2.name}, {w.name}, {s.name}, {e.idx(kern.rows)}) : "
                  f"({x2.type}, {w.type}, {s.type}, index) -> {yt}", "gemv")
        return TV(raw, (kern.rows, kern.n), "f32")
    return row_padded_dispatch(e, executable, [x2], [(w.name, w.type), (s.name, s.type)], kern.row_block, kern.n,
                               "f32", "gemv")
