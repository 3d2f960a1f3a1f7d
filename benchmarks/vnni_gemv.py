"""w8a8's batch-1 product with a hand-written AVX512-VNNI dispatch against IREE's own kernel.

    .venv/bin/python benchmarks/vnni_gemv.py                    # 2048 -> 5632 and -> 65536
    .venv/bin/python benchmarks/vnni_gemv.py --n 262144 --rounds 4    # 512 MiB: past a 300 MiB L3
    .venv/bin/python benchmarks/vnni_gemv.py --n 11264 --rounds 10

Why: a w8a8 decode step is [1, K] x [K, N] int8 products, and IREE 3.13's s8 x s8 data-tiled
kernel (1x16x2 tile) sign-extends both operands to int16 for vpdpwssd: it is compute-bound
near the DRAM rate on this 2-core machine (docs/performance.md). VNNI's vpdpbusd multiplies
u8 x s8 in one instruction, 64 products an instruction, so a kernel built on it should be
bound by DRAM alone. This script measures whether that holds before the lowering takes it on.

The custom dispatch is a `stream.executable` written in the vector dialect with one
`llvm.call_intrinsic` (llvm.x86.avx512.vpdpbusd.512), the way IREE lets a program mix a
hand-written dispatch with generated ones. The weight is a parameter global in the layout the
instruction wants, [N/16][K/4][16][4] (16 output columns of 4 in-features a 64-byte vector);
the activations are the int8 row plus 128 (as u8), so the product is sum (x + 128) * w and
the exact int8 product is that minus 128 * (column sums of w), checked here against numpy.
IREE's kernel is the lowering's w8a8 product at a static M = 1 (matmul_kernels.module_text),
its weight packed at load by data tiling. Both are timed round-robin in one process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import iree.runtime as rt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_kernels import load, module_text  # noqa: E402

from llmirc.lowering import compile_iree  # noqa: E402
from llmirc.targets import resolve  # noqa: E402

TILES_PER_WORKGROUP = 16  # 256 output columns a workgroup
UNROLL = 4  # independent accumulator chains over K (vpdpbusd latency)


def vnni_module_text(k: int, n: int) -> str:
    """func @mm(xu: [K/4] i32, four u8 a word) -> [N] i32 = sum_k xu[k] * w[n, k], w the
    parameter "w" packed [N/16, K/4, 16] i32 (four s8 a word)."""
    kb, tiles = k // 4, n // 16
    groups = tiles // TILES_PER_WORKGROUP
    chains = ", ".join(f"%a{i} = %zero" for i in range(UNROLL))
    types = ", ".join(["vector<16xi32>"] * UNROLL)
    step = []
    for i in range(UNROLL):
        step += [f"%k{i} = arith.addi %k, %c{i} : index",
                 f"%xs{i} = memref.load %x[%k{i}] : memref<{kb}xi32>",
                 f"%xb{i} = vector.broadcast %xs{i} : i32 to vector<16xi32>",
                 f"%xv{i} = vector.bitcast %xb{i} : vector<16xi32> to vector<64xi8>",
                 f"%wi{i} = vector.load %w[%tile, %k{i}, %c0] : memref<{tiles}x{kb}x16xi32>, vector<16xi32>",
                 f"%wv{i} = vector.bitcast %wi{i} : vector<16xi32> to vector<64xi8>",
                 f'%r{i} = llvm.call_intrinsic "llvm.x86.avx512.vpdpbusd.512"(%a{i}, %xv{i}, %wv{i}) : '
                 "(vector<16xi32>, vector<64xi8>, vector<64xi8>) -> vector<16xi32>"]
    body = "\n              ".join(step)
    consts = "\n        ".join(f"%c{i} = arith.constant {i} : index" for i in range(UNROLL))
    results = ", ".join(f"%r{i}" for i in range(UNROLL))
    sums, total = [], "%acc#0"  # the chains added into one vector
    for i in range(1, UNROLL):
        sums.append(f"%s{i} = arith.addi {total}, %acc#{i} : vector<16xi32>")
        total = f"%s{i}"
    sums_text = "\n          ".join(sums)
    return f"""
util.global private @w = #flow.parameter.named<"model"::"w"> : tensor<{tiles}x{kb}x16xi32>
stream.executable private @vnni {{
  stream.executable.export public @gemv workgroups() -> (index, index, index) {{
    %g = arith.constant {groups} : index
    %one = arith.constant 1 : index
    stream.return %g, %one, %one : index, index, index
  }}
  builtin.module {{
    func.func @gemv(%bx: !stream.binding, %bw: !stream.binding, %by: !stream.binding) {{
        {consts}
        %cu = arith.constant {UNROLL} : index
        %ckb = arith.constant {kb} : index
        %c16 = arith.constant 16 : index
        %ctiles = arith.constant {TILES_PER_WORKGROUP} : index
        %zero = arith.constant dense<0> : vector<16xi32>
        %wg = hal.interface.workgroup.id[0] : index
        %x = stream.binding.subspan %bx[%c0] : !stream.binding -> memref<{kb}xi32>
        %w = stream.binding.subspan %bw[%c0] : !stream.binding -> memref<{tiles}x{kb}x16xi32>
        %y = stream.binding.subspan %by[%c0] : !stream.binding -> memref<{n}xi32>
        %t0 = arith.muli %wg, %ctiles : index
        scf.for %t = %c0 to %ctiles step %c1 {{
          %tile = arith.addi %t0, %t : index
          %acc:{UNROLL} = scf.for %k = %c0 to %ckb step %cu iter_args({chains}) -> ({types}) {{
              {body}
              scf.yield {results} : {types}
          }}
          {sums_text}
          %off = arith.muli %tile, %c16 : index
          vector.store {total}, %y[%off] : memref<{n}xi32>, vector<16xi32>
        }}
        return
    }}
  }}
}}
func.func @mm(%x: tensor<{kb}xi32>) -> tensor<{n}xi32> {{
  %w = util.global.load @w : tensor<{tiles}x{kb}x16xi32>
  %y = flow.dispatch @vnni::@gemv(%x, %w) : (tensor<{kb}xi32>, tensor<{tiles}x{kb}x16xi32>) -> tensor<{n}xi32>
  return %y : tensor<{n}xi32>
}}
"""


def packed(w: np.ndarray) -> np.ndarray:
    """int8 [N, K] -> [N/16, K/4, 16, 4]: 16 columns x 4 in-features a 64-byte vector."""
    n, k = w.shape
    return np.ascontiguousarray(w.reshape(n // 16, 16, k // 4, 4).transpose(0, 2, 1, 3))


def measure(k: int, n: int, rounds: int, device) -> None:
    """Check both products exact against numpy, then time them round-robin and print G weights/s."""
    if n % (16 * TILES_PER_WORKGROUP) or k % (4 * UNROLL):
        raise SystemExit(f"vnni_gemv: --n must be a multiple of {16 * TILES_PER_WORKGROUP}, --k of {4 * UNROLL}")
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    x = rng.integers(-127, 128, (1, k), dtype=np.int8)
    ref = np.concatenate([x.astype(np.int64) @ c.astype(np.int64).T for c in np.array_split(w, max(1, n // 8192))], axis=1)
    flags = list(resolve("cpu").compile_flags(3))
    iree_mm = load(compile_iree(module_text(k, n, "i8", rows=1), flags), w, device)
    vnni_mm = load(compile_iree(vnni_module_text(k, n), flags), packed(w), device)
    xu = (x.astype(np.int16) + 128).astype(np.uint8).reshape(-1).view(np.int32)
    colsum = w.astype(np.int64).sum(axis=1)
    fns = {"IREE s8 x s8 (data-tiled)": (iree_mm, x, lambda y: y),
           "VNNI u8 x s8 (custom)": (vnni_mm, xu, lambda y: y - 128 * colsum)}
    for name, (f, xin, fix) in fns.items():
        if not np.array_equal(fix(np.asarray(f(xin), np.int64).reshape(1, -1)), ref):
            raise SystemExit(f"vnni_gemv: {name} differs from numpy's exact product")
    reps = max(3, int(2e8 / (n * k)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (f, xin, _) in fns.items():
            for _ in range(reps):
                t = time.perf_counter()
                f(xin)
                times[name].append(time.perf_counter() - t)
    base = min(times["IREE s8 x s8 (data-tiled)"])
    for name, ts in times.items():
        print(f"[1, {k}] x [{k}, {n}] ({n * k / 2**20:.0f} MiB)  {name:26s} best {n * k / min(ts) / 1e9:5.1f} "
              f"G weights/s  median {n * k / np.median(ts) / 1e9:5.1f}  speed-up {base / min(ts):4.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=2048, help="in-features")
    ap.add_argument("--n", default="5632,65536", help="out-features, comma-separated (x 2048 in-features x 1 byte: the weight's size)")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    if "avx512_vnni" not in Path("/proc/cpuinfo").read_text():
        raise SystemExit("vnni_gemv: this CPU has no avx512_vnni (vpdpbusd); the custom dispatch needs it")
    device = rt.get_device("local-task")
    for n in (int(v) for v in args.n.split(",")):
        measure(args.k, n, args.rounds, device)


if __name__ == "__main__":
    main()
