"""w8a8's int8 product through the lowering's AVX512-VNNI dispatch against IREE's own kernel.

    .venv/bin/python benchmarks/vnni_gemv.py                       # 1 and 128 rows, 2048 -> 5632 and -> 65536
    .venv/bin/python benchmarks/vnni_gemv.py --rows 1 --n 262144 --rounds 4   # 512 MiB: past any L3
    .venv/bin/python benchmarks/vnni_gemv.py --rows 4,128 --n 11264

Why: a w8a8 step multiplies int8 activation rows by int8 weights. IREE 3.13's s8 x s8
data-tiled kernel sign-extends both operands to int16 for vpdpwssd (32 products an
instruction); vpdpbusd multiplies u8 x s8, 64 an instruction. lowering/vnni.py is that kernel,
a `stream.executable` in the vector dialect with `llvm.call_intrinsic` vpdpbusd, reading the
weight in [N/16, K/4, 64] order with the activations + 128 as u8 (the exact int8 product is
that minus 128 x the weight's column sums). This script takes the kernel the lowering plans
for each row count (vnni.plan: few static rows in one block, else 4-row blocks; rows here
static, padded as the lowering pads a dynamic count), checks it exact against numpy, and times
it round-robin in one process against the lowering's fallback, `linalg.matmul` i8 x i8 -> i32
at the same static row count with data tiling (matmul_kernels.module_text).
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
from llmirc.lowering.emitter import tensor_type  # noqa: E402
from llmirc.lowering.vnni import executable_text, pack_weight, plan  # noqa: E402
from llmirc.targets import resolve  # noqa: E402
from llmirc.targets.cpu import has_vnni  # noqa: E402


def vnni_module_text(rows: int, k: int, n: int) -> str:
    """func @mm(xu: [rows, k] u8 as i8) -> [rows, n] i32 through vnni.plan's kernel, the weight
    the parameter "w" in the packed order; rows padded to the kernel's block."""
    kern = plan(rows, k, n)
    mp = -(-rows // kern.rows) * kern.rows
    xt, dx, dy = tensor_type((rows, k), "i8"), tensor_type(("?", k), "i8"), tensor_type(("?", n), "i32")
    pad = (f"  %xd = tensor.pad %xc low[0, 0] high[{mp - rows}, 0] {{\n  ^bb0(%i: index, %j: index):\n"
           f"    tensor.yield %z : i8\n  }} : {dx} to {dx}\n")
    return "\n".join([
        f'util.global private @w = #flow.parameter.named<"model"::"w"> : {kern.packed_type}',
        *executable_text(kern, "@vnni"),
        f"func.func @mm(%x: {xt}) -> {tensor_type((rows, n), 'i32')} {{",
        f"  %z = arith.constant 0 : i8", f"  %m = arith.constant {mp} : index",
        f"  %w = util.global.load @w : {kern.packed_type}",
        f"  %xc = tensor.cast %x : {xt} to {dx}",
        pad.rstrip("\n") if mp != rows else f"  %xd = tensor.cast %xc : {dx} to {dx}",
        f"  %yd = flow.dispatch @vnni::@vnni(%xd, %w, %m) : ({dx}{{%m}}, {kern.packed_type}, index) -> {dy}{{%m}}",
        f"  %y = tensor.extract_slice %yd[0, 0] [{rows}, {n}] [1, 1] : {dy} to {tensor_type((rows, n), 'i32')}",
        f"  return %y : {tensor_type((rows, n), 'i32')}", "}"]) + "\n"


def measure(rows: int, k: int, n: int, rounds: int, device) -> None:
    """Check both products exact against numpy, then time them round-robin and print G products/s
    (rows x weights a second: at one row, the weight bytes streamed)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    x = rng.integers(-127, 128, (rows, k), dtype=np.int8)
    ref = np.concatenate([x.astype(np.int64) @ c.astype(np.int64).T for c in np.array_split(w, max(1, n // 8192))],
                         axis=1)
    flags = list(resolve("cpu").compile_flags(3)) + ["--iree-opt-data-tiling=true"]
    iree_mm = load(compile_iree(module_text(k, n, "i8", rows=rows), flags), w, device)
    vnni_mm = load(compile_iree(vnni_module_text(rows, k, n), flags), pack_weight(w), device)
    xu = (x.astype(np.int16) + 128).astype(np.uint8).view(np.int8)
    colsum = w.astype(np.int64).sum(axis=1)
    fns = {"IREE s8 x s8 (data-tiled)": (iree_mm, x, lambda y: y),
           "VNNI u8 x s8 (lowering/vnni.py)": (vnni_mm, xu, lambda y: y - 128 * colsum)}
    for name, (f, xin, fix) in fns.items():
        if not np.array_equal(fix(np.asarray(f(xin), np.int64)), ref):
            raise SystemExit(f"vnni_gemv: {name} differs from numpy's exact product")
    reps = max(3, int(2e8 / (n * k * max(1, rows // 8))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (f, xin, _) in fns.items():
            for _ in range(reps):
                t = time.perf_counter()
                f(xin)
                times[name].append(time.perf_counter() - t)
    base = min(times["IREE s8 x s8 (data-tiled)"])
    for name, ts in times.items():
        print(f"[{rows}, {k}] x [{k}, {n}] ({n * k / 2**20:.0f} MiB)  {name:32s} best {min(ts) * 1e3:7.2f} ms "
              f"{rows * n * k / min(ts) / 1e9:6.1f} G products/s  median {np.median(ts) * 1e3:7.2f} ms  "
              f"speed-up {base / min(ts):4.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,128", help="activation rows, comma-separated (decode: 1-8, prefill: 128+)")
    ap.add_argument("--k", type=int, default=2048, help="in-features (a multiple of 16)")
    ap.add_argument("--n", default="5632,65536", help="out-features, comma-separated, multiples of 16 "
                                                     "(x in-features x 1 byte: the weight's size)")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    if not has_vnni("host"):
        raise SystemExit("vnni_gemv: this CPU has no avx512_vnni (vpdpbusd); the kernel needs it")
    device = rt.get_device("local-task")
    for rows in (int(v) for v in args.rows.split(",")):
        for n in (int(v) for v in args.n.split(",")):
            measure(rows, args.k, n, args.rounds, device)


if __name__ == "__main__":
    main()
