"""One f32 linear's matmul through IREE, as -O3 compiles it, against numpy's BLAS on the same cores.

    .venv/bin/python benchmarks/matmul_kernels.py                      # 2048 -> 5632, M = 16,128,512
    .venv/bin/python benchmarks/matmul_kernels.py --k 768 --n 4096 --rows 1,64 \
        --variant ukernels=--iree-llvmcpu-enable-ukernels=mmt4d

Why: prefill (and batched decode) is a chain of [M, K] x [K, N] products, so how close IREE's
code comes to a tuned sgemm bounds time to first token. The module is the lowering's own
`matmul_transpose_b` (weights [out, in] as a parameter global, as in an artifact), compiled
with the CPU target profile's -O3 flags plus each --variant's extra flags. All variants and
numpy are timed round-robin in one process, round by round, so background load on a shared
machine hits them alike; the report gives GFLOP/s (best and median) and best / numpy's best.
Timings of a matrix that fits in the last-level cache measure compute, not DRAM streaming
(decode is the latter: benchmarks/profile_decode.py).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import iree.runtime as rt

from llmirc.lowering import compile_iree
from llmirc.lowering.emitter import TV, Emitter
from llmirc.lowering.ops import matmul_transpose_b
from llmirc.targets import resolve


def module_text(k: int, n: int) -> str:
    """func @mm(x: f32[?, k]) -> f32[?, n] = x @ w^T, w = parameter "w" f32[n, k]."""
    e = Emitter()
    e.function = "mm"
    m = e.dims_of("%x", f"tensor<?x{k}xf32>", (None, k))[0]
    e.emit(f"%w = util.global.load @w : tensor<{n}x{k}xf32>")
    y = matmul_transpose_b(e, TV("%x", (m, k), "f32"), TV("%w", (n, k), "f32"))
    return "\n".join([
        f'util.global private @w = #flow.parameter.named<"model"::"w"> : tensor<{n}x{k}xf32>',
        f"func.func @mm(%x: tensor<?x{k}xf32>) -> {y.type} {{", *e.lines, f"  return {y.name} : {y.type}", "}"])


def load(vmfb: bytes, w: np.ndarray, device):
    inst = rt.VmInstance()
    index = rt.ParameterIndex()
    index.add_buffer("w", w.tobytes())
    main = rt.VmModule.copy_buffer(inst, vmfb)
    ctx = rt.VmContext(inst, modules=[rt.create_hal_module(inst, device),
                                      rt.create_io_parameters_module(inst, index.create_provider(scope="model")),
                                      main])
    fn = rt.FunctionInvoker(ctx, device, main.lookup_function("mm"))
    return lambda x: np.asarray(fn(x).to_host())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=2048, help="in-features")
    ap.add_argument("--n", type=int, default=5632, help="out-features")
    ap.add_argument("--rows", default="16,128,512", help="M values, comma-separated")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAG[,FLAG]",
                    help="more iree-compile flags on top of -O3's (repeatable)")
    args = ap.parse_args()
    base = list(resolve("cpu").compile_flags(3))
    variants = {"-O3": base} | {v.split("=", 1)[0]: base + v.split("=", 1)[1].split(",") for v in args.variant}
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((args.n, args.k)) * 0.02).astype(np.float32)
    device = rt.get_device("local-task")
    text = module_text(args.k, args.n)
    fns = {name: load(compile_iree(text, flags), w, device) for name, flags in variants.items()}
    wt = w.T
    fns["numpy"] = lambda x: x @ wt
    print(f"[M, {args.k}] x [{args.k}, {args.n}] f32; -O3 flags: {' '.join(base)}")
    for m in (int(r) for r in args.rows.split(",")):
        x = rng.standard_normal((m, args.k)).astype(np.float32)
        for name, f in fns.items():
            err = np.abs(f(x) - x @ wt).max() / np.abs(x @ wt).max()
            assert err < 1e-4, f"{name} at M={m}: relative error {err:.1e}"
        flop = 2 * m * args.k * args.n
        reps = max(2, int(1e9 / flop))
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, f in fns.items():
                for _ in range(reps):
                    t = time.perf_counter()
                    f(x)
                    times[name].append(time.perf_counter() - t)
        best_numpy = flop / min(times["numpy"])
        for name, ts in times.items():
            best = flop / min(ts)
            print(f"M={m:5d}  {name:12s} best {best / 1e9:6.1f} GFLOP/s  median {flop / np.median(ts) / 1e9:6.1f}"
                  f"  best / numpy {best / best_numpy:4.2f}", flush=True)


if __name__ == "__main__":
    main()
