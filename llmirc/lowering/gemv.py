"""Weight-only int4 products of a few static rows (decode_b{B}) as a hand-written dispatch for
AVX-512 CPUs (the targets with `vnni`).

Why: IREE 3.13 runs a weight-only int4 matvec as a contraction that widens every weight inside
its inner loop, sums per group and reduces the groups in a second dispatch; on the 2-core AMD
EPYC of docs/performance.md that decode is compute-bound (1.1B: 13.9 tok/s, 0.37x llama.cpp's
Q4_0). Weight-only decode is a matvec: each weight is used once per row, so the work that
matters is turning a nibble into an f32 and one FMA per row.

How (docs/quantization.md, "int4 decode"):
- The weight is read as the archive already stores it for the weight-only kernel ([in, out]:
  values [K, N] two per byte along N, column 2j in the low nibble; scales [groups, N]), so
  prefill's dequantize-first path and the dynamic-batch kernel read the same bytes.
- Each workgroup owns `columns` output columns (64 x lines). For each in-feature k it loads
  the block's bytes of weight row k, zero-extends each byte to i32 and turns both nibbles into
  f32 with one vpermps each from a 16-entry table of the signed values (the byte itself picks
  the low nibble, the even column; the byte shifted right by 4 the high one, the odd column),
  then adds x[row, k] * q into f32 accumulators per row, even and odd columns apart. After each
  group it interleaves them back into column order and adds acc x s[group] into y in memory.
- The rows of a block are a page or more apart (a [K, N] weight), where the hardware
  prefetchers do not follow: the kernel prefetches PREFETCH rows ahead itself.
- Symmetric weights only (no zero points), groups a multiple of UNROLL, N a multiple of 64;
  everything else keeps IREE's kernel.

Measured (1.1B, decode_b1, the slower of the 2-core EPYCs): 815 us per gate/up call against
IREE's 964 + 256 (its second, reducing dispatch), at 15 GB/s of weight bytes. That was the
instructions of the kernel's first form, which took nibbles apart with shifts (per 32 weights:
widen, 3 shifts, 2 conversions besides the FMAs); alone (benchmarks/gemv_int4.py) it ran at the
same rate on a weight that stays in L3 as on one that does not. The table lookup takes 4 ops
(widen, 1 shift, 2 lookups): on a faster EPYC, 31-35 GB/s against 25-26 on an L3-resident
[2048, 11264] weight; on DRAM-sized ones, and in the 1.1B model, both forms run at the rate of
the strided [K, N] walk there (30-32 GB/s in the model, 64 % of its streaming read). An int8
form of the same loop ran at 12.6 GB/s in the model, below IREE's int8 kernel (25 GB/s on the
same walk), so int8 keeps IREE's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .emitter import TV, Emitter, executable_head, tensor_type

LANES = 16  # f32 lanes of a 512-bit vector
BLOCK = 64  # output columns of one "line" of the block: 32 weight bytes a row, 4 accumulator vectors
UNROLL = 4  # in-features a step of the inner loop
ROW_BLOCK = 4  # rows sharing one widened weight row: 16 accumulators at most (rows x 4 x lines)
MAX_ROWS = 8  # static row counts up to this take the kernel (decode_b1 .. decode_b8)
MIN_WORKGROUPS = 8  # enough workgroups to keep every worker busy
# a signed nibble's value by its bits 0..15 (two's complement), the table vpermps reads
NIBBLES = tuple(range(8)) + tuple(range(-8, 0))
PERMUTE = '"llvm.x86.avx512.permvar.sf.512"'  # vpermps: lane i of the result = table[index[i] & 15]
PREFETCH = 16  # weight rows ahead of the one multiplied that the kernel prefetches (0 or 8: slower)


@dataclass(frozen=True)
class Kernel:
    """y [rows, n] f32 = x [rows, k] f32 times the symmetric int4 weight [k, n] with f32 scales
    [k / group, n]."""

    rows: int
    k: int
    n: int
    group: int

    @property
    def row_block(self) -> int:
        """Rows a pass over the weight block: the largest divisor of rows <= ROW_BLOCK."""
        return max(d for d in range(1, ROW_BLOCK + 1) if self.rows % d == 0)

    @property
    def lines(self) -> int:
        """BLOCK-column lines a workgroup: as many as 16 accumulators allow while MIN_WORKGROUPS
        remain. More bytes of a weight row per visit stream better (measured on the loop's int8
        form, an L3-resident weight: 23 GB/s with one 64-byte line a row, 36 with four)."""
        return next(v for v in (4, 2, 1) if v * self.row_block <= ROW_BLOCK and self.n % (BLOCK * v) == 0
                    and (self.n // (BLOCK * v) >= MIN_WORKGROUPS or v == 1))

    @property
    def columns(self) -> int:
        return BLOCK * self.lines

    @property
    def name(self) -> str:
        return f"gemv_i4_{self.rows}x{self.k}x{self.n}_g{self.group}"


def fits(rows: object, k: int, n: int, group: int) -> bool:
    """The kernel takes this product: few static rows, whole column blocks and unrolled steps."""
    return (isinstance(rows, int) and 1 <= rows <= MAX_ROWS and n % BLOCK == 0
            and k % group == 0 and group % UNROLL == 0)


def takes_decode(vnni: bool, bits: int, symmetric: bool) -> bool:
    """Whether a weight-only scheme's products go through the kernel in static-batch decode
    functions, which then pay (without it IREE's kernel is faster with a dynamic batch:
    TargetProfile.decode_batches)."""
    return vnni and bits == 4 and symmetric


def executable_text(kern: Kernel, sym: str) -> list[str]:
    """`stream.executable` sym with export sym: (x [rows, k] f32, q [k, n] int4 as bytes [k, n / 2],
    s [groups, n] f32) -> y [rows, n] f32; n / kern.columns workgroups."""
    rb, groups = kern.row_block, kern.k // kern.group
    fvec, ivec, bvec = f"vector<{LANES}xf32>", f"vector<{LANES}xi32>", f"vector<{LANES}xi8>"
    wide = f"vector<{2 * LANES}xf32>"
    x_t, y_t = f"memref<{kern.rows}x{kern.k}xf32>", f"memref<{kern.rows}x{kern.n}xf32>"
    w_t = f"memref<{kern.k}x{kern.n // 2}xi8>"
    s_t = f"memref<{groups}x{kern.n}xf32>"
    vecs = range(kern.columns // LANES)  # accumulator vectors per row: pair t // 2 of 32 columns, even / odd t % 2
    pairs = range(len(vecs) // 2)
    accs = [(i, t) for i in range(rb) for t in vecs]

    step, carried = [], {a: f"%a{a[0]}_{a[1]}" for a in accs}
    row_bytes = kern.columns // 2  # of one weight row a workgroup reads
    prefetch_lines = -(-row_bytes // 64)  # 64-byte lines (one block of 64 columns: half a line)
    for u in range(UNROLL):
        step.append(f"%k{u} = arith.addi %kb, %c{u} : index")
        # the rows PREFETCH ahead, line by line: each weight row of a block is on another page,
        # where the hardware prefetchers do not follow
        step += [f"%pk{u}a = arith.addi %k{u}, %cpf : index", f"%pk{u} = arith.minui %pk{u}a, %clast : index"]
        step += [f"memref.prefetch %w[%pk{u}, %pb{j}], read, locality<3>, data : {w_t}"
                 for j in range(prefetch_lines)]
        for p in pairs:
            # the bytes of 32 columns zero-extended to i32; vpermps reads the low 4 bits of each
            # lane, so the byte picks its low nibble's value (the even column) from the table and
            # the byte shifted right by 4 its high one (the odd column), already as f32
            step += [f"%b{u}_{p} = vector.load %w[%k{u}, %byte{p}] : {w_t}, {bvec}",
                     f"%e{u}_{p} = arith.extui %b{u}_{p} : {bvec} to {ivec}",
                     f"%h{u}_{p} = arith.shrui %e{u}_{p}, %c4v : {ivec}",
                     f"%f{u}_{2 * p} = llvm.call_intrinsic {PERMUTE}(%lut, %e{u}_{p}) : ({fvec}, {ivec}) -> {fvec}",
                     f"%f{u}_{2 * p + 1} = llvm.call_intrinsic {PERMUTE}(%lut, %h{u}_{p}) : ({fvec}, {ivec}) -> {fvec}"]
        for i in range(rb):
            step += [f"%xs{u}_{i} = memref.load %x[%row{i}, %k{u}] : {x_t}",
                     f"%xb{u}_{i} = vector.broadcast %xs{u}_{i} : f32 to {fvec}"]
            for t in vecs:
                new = f"%n{u}_{i}_{t}"
                step.append(f"{new} = math.fma %xb{u}_{i}, %f{u}_{t}, {carried[(i, t)]} : {fvec}")
                carried[(i, t)] = new

    # after each group: y[row, cols] += (sum over the group of x * q) * s[group, cols]
    fold, zeros = [], []
    mix = [j for pair in zip(range(LANES), range(LANES, 2 * LANES)) for j in pair]
    for i in range(rb):
        for p in pairs:
            ev, od = f"%acc#{accs.index((i, 2 * p))}", f"%acc#{accs.index((i, 2 * p + 1))}"
            fold += [f"%z{i}_{p} = vector.shuffle {ev}, {od} {mix} : {fvec}, {fvec}",  # columns in order
                     f"%sv{i}_{p} = vector.load %s[%grp, %col{2 * p}] : {s_t}, {wide}",
                     f"%yv{i}_{p} = vector.load %y[%row{i}, %col{2 * p}] : {y_t}, {wide}",
                     f"%ny{i}_{p} = math.fma %z{i}_{p}, %sv{i}_{p}, %yv{i}_{p} : {wide}",
                     f"vector.store %ny{i}_{p}, %y[%row{i}, %col{2 * p}] : {y_t}, {wide}"]
            zeros.append(f"vector.store %wzero, %y[%row{i}, %col{2 * p}] : {y_t}, {wide}")

    ftypes = ", ".join([fvec] * len(accs))
    offsets = {t * LANES for t in vecs}
    consts = [f"%c{v} = arith.constant {v} : index"
              for v in sorted({0, 1, 2, kern.columns} | offsets | {64 * j for j in range(prefetch_lines)}
                              | set(range(max(rb, UNROLL))))]
    return (executable_head(sym, kern.n // kern.columns,
                            "%bx: !stream.binding, %bw: !stream.binding, %bs: !stream.binding, %by: !stream.binding")
            + [f"      {line}" for line in consts]
            + [f"      %cgroup = arith.constant {kern.group} : index",
               f"      %cgroups = arith.constant {groups} : index",
               f"      %crows = arith.constant {kern.rows} : index",
               f"      %crb = arith.constant {rb} : index",
               f"      %cunroll = arith.constant {UNROLL} : index",
               f"      %fzero = arith.constant dense<0.0> : {fvec}",
               f"      %wzero = arith.constant dense<0.0> : {wide}",
               f"      %c4v = arith.constant dense<4> : {ivec}",
               f"      %lut = arith.constant dense<[{', '.join(str(float(v)) for v in NIBBLES)}]> : {fvec}",
               "      %wg = hal.interface.workgroup.id[0] : index",
               f"      %x = stream.binding.subspan %bx[%c0] : !stream.binding -> {x_t}",
               f"      %w = stream.binding.subspan %bw[%c0] : !stream.binding -> {w_t}",
               f"      %s = stream.binding.subspan %bs[%c0] : !stream.binding -> {s_t}",
               f"      %y = stream.binding.subspan %by[%c0] : !stream.binding -> {y_t}",
               f"      %col = arith.muli %wg, %c{kern.columns} : index"]
            + [f"      %col{t} = arith.addi %col, %c{t * LANES} : index" for t in vecs]
            + [f"      %byte{p} = arith.divui %col{2 * p}, %c2 : index" for p in pairs]
            + [f"      %cpf = arith.constant {PREFETCH} : index", f"      %clast = arith.constant {kern.k - 1} : index"]
            + [f"      %pb{j} = arith.addi %byte0, %c{64 * j} : index" for j in range(prefetch_lines)]
            + ["      scf.for %r = %c0 to %crows step %crb {"]
            + [f"        %row{i} = arith.addi %r, %c{i} : index" for i in range(rb)]
            + [f"        {line}" for line in zeros]
            + ["        scf.for %grp = %c0 to %cgroups step %c1 {",
               "          %kg0 = arith.muli %grp, %cgroup : index",
               "          %kg1 = arith.addi %kg0, %cgroup : index",
               f"          %acc:{len(accs)} = scf.for %kb = %kg0 to %kg1 step %cunroll iter_args("
               + ", ".join(f"%a{i}_{t} = %fzero" for i, t in accs) + f") -> ({ftypes}) {{"]
            + [f"            {line}" for line in step]
            + ["            scf.yield " + ", ".join(carried[a] for a in accs) + f" : {ftypes}",
               "          }"]
            + [f"          {line}" for line in fold]
            + ["        }", "      }", "      return", "    }", "  }", "}"])


def product(e: Emitter, x2: TV, q: TV, s: TV, kern: Kernel, executable: str) -> TV:
    """f32 [rows, n] from x2 [rows, k] f32 and the weight's int4 values q [k, n] and scales s
    [groups, n] as loaded (stored [in, out])."""
    yt = tensor_type((kern.rows, kern.n), "f32")
    raw = e.v(f"flow.dispatch {executable}::{executable}({x2.name}, {q.name}, {s.name}) : "
              f"({x2.type}, {q.type}, {s.type}) -> {yt}", "gemv")
    return TV(raw, (kern.rows, kern.n), "f32")
