"""The weight-only int4 decode kernel (llmirc/lowering/gemv.py) alone: GB/s of weight bytes at
one row, on a weight that stays in L3 between calls and on one that does not.

    .venv/bin/python benchmarks/gemv_int4.py                  # [1, 2048] x [2048, N], N = 11264 and 65536
    .venv/bin/python benchmarks/gemv_int4.py --n 11264 --prefetch 0,16

Both sizes in one process, round-robin, so the ratio between them says whether the kernel is
bound by its instructions (the same rate on both) or by the DRAM walk (slower on the large
one). --prefetch compiles the kernel at each of those PREFETCH distances (rows ahead) too.
The result is checked against numpy first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import iree.runtime as rt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmirc.lowering import compile_iree, gemv  # noqa: E402
from llmirc.lowering.emitter import tensor_type  # noqa: E402
from llmirc.targets import resolve  # noqa: E402

GROUP = 128


def module_text(kern: gemv.Kernel) -> str:
    """@mm(x [1, k] f32, s [groups, n] f32) -> [1, n], the weight (bytes [k, n/2]) the parameter "w"."""
    wt, st = tensor_type((kern.k, kern.n // 2), "i8"), tensor_type((kern.k // kern.group, kern.n), "f32")
    xt, yt = tensor_type((kern.rows, kern.k), "f32"), tensor_type((kern.rows, kern.n), "f32")
    return "\n".join([f'util.global private @w = #flow.parameter.named<"model"::"w"> : {wt}',
                      *gemv.executable_text(kern, "@gemv"),
                      f"func.func @mm(%x: {xt}, %s: {st}) -> {yt} {{",
                      f"  %w = util.global.load @w : {wt}",
                      f"  %y = flow.dispatch @gemv::@gemv(%x, %w, %s) : ({xt}, {wt}, {st}) -> {yt}",
                      f"  return %y : {yt}", "}"]) + "\n"


def load(k: int, n: int, prefetch: int, device):
    """The compiled kernel with a random weight, checked against numpy; returns (call, x, s)."""
    gemv.PREFETCH = prefetch  # read when the text is written
    kern = gemv.Kernel(1, k, n, GROUP)
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (k, n))
    s = rng.uniform(0.5, 2.0, (k // GROUP, n)).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    packed = ((q[:, 0::2] & 15) | ((q[:, 1::2] & 15) << 4)).astype(np.uint8)
    inst = rt.VmInstance()
    index = rt.ParameterIndex()
    index.add_buffer("w", packed.tobytes())
    main = rt.VmModule.copy_buffer(inst, compile_iree(module_text(kern), list(resolve("cpu").compile_flags(3))))
    ctx = rt.VmContext(inst, modules=[rt.create_hal_module(inst, device),
                                      rt.create_io_parameters_module(inst, index.create_provider(scope="model")),
                                      main])
    fn = rt.FunctionInvoker(ctx, device, main.lookup_function("mm"))
    want = x.astype(np.float64) @ (q * np.repeat(s.astype(np.float64), GROUP, axis=0))
    got = np.asarray(fn(x, s).to_host())
    if np.abs(got - want).max() > 1e-5 * np.abs(want).max():
        raise SystemExit(f"gemv_int4: the kernel differs from numpy at n {n}")
    return fn, x, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", default="11264,65536", help="out-features, comma-separated, multiples of 64")
    ap.add_argument("--prefetch", default=str(gemv.PREFETCH), help="PREFETCH distances, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="calls a round")
    args = ap.parse_args()
    device = rt.get_device("local-task")
    fns = {(n, pf): load(args.k, n, pf, device) for n in map(int, args.n.split(","))
           for pf in map(int, args.prefetch.split(","))}
    times: dict = {key: [] for key in fns}
    for _ in range(args.rounds):
        for key, (fn, x, s) in fns.items():
            for _ in range(args.calls):
                t = time.perf_counter()
                fn(x, s)
                times[key].append(time.perf_counter() - t)
    for (n, pf), ts in times.items():
        weight = args.k * n // 2
        print(f"[1, {args.k}] x [{args.k}, {n}] int4 ({weight / 2**20:.1f} MiB), prefetch {pf:2d}: "
              f"best {min(ts) * 1e3:.3f} ms {weight / min(ts) / 1e9:5.1f} GB/s, "
              f"median {np.median(ts) * 1e3:.3f} ms {weight / np.median(ts) / 1e9:5.1f} GB/s", flush=True)


if __name__ == "__main__":
    main()
