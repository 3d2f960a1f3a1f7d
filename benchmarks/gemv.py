"""The weight-only decode kernel (llmirc/lowering/gemv.py) alone: GB/s of weight bytes at one
row, int4 and int8, on a weight that stays in L3 between calls and on one that does not.

    .venv/bin/python benchmarks/gemv.py                  # [1, 2048] x [2048, N], N = 11264 and 65536
    .venv/bin/python benchmarks/gemv.py --n 262144 --bits 4

All shapes in one process, round-robin, so the ratio between sizes says whether the kernel is
bound by its instructions (the same rate on both) or by the DRAM stream (slower on the large
one). Each result is checked against numpy first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import iree.runtime as rt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmirc.artifacts.params import pack_int4  # noqa: E402
from llmirc.lowering import compile_iree, gemv  # noqa: E402
from llmirc.lowering.emitter import tensor_type  # noqa: E402
from llmirc.targets import resolve  # noqa: E402

GROUP = 128


def module_text(kern: gemv.Kernel) -> str:
    """@mm(x [1, k] f32, s [groups, n] f32) -> [1, n], the weight (blocks as bytes) the parameter "w"."""
    wt = tensor_type(kern.byte_dims, "i8")
    st = tensor_type((kern.k // kern.group, kern.n), "f32")
    xt, yt = tensor_type((1, kern.k), "f32"), tensor_type((1, kern.n), "f32")
    return "\n".join([f'util.global private @w = #flow.parameter.named<"model"::"w"> : {wt}',
                      *gemv.executable_text(kern, "@gemv"),
                      f"func.func @mm(%x: {xt}, %s: {st}) -> {yt} {{",
                      f"  %w = util.global.load @w : {wt}",
                      "  %one = arith.constant 1 : index",
                      f"  %y = flow.dispatch @gemv::@gemv(%x, %w, %s, %one) : ({xt}, {wt}, {st}, index) -> {yt}",
                      f"  return %y : {yt}", "}"]) + "\n"


def load(k: int, n: int, bits: int, device):
    """The compiled kernel with a random weight, checked against numpy; returns (call, x, s)."""
    kern = gemv.Kernel(1, k, n, GROUP, bits)
    rng = np.random.default_rng(0)
    lim = 1 << (bits - 1)
    w = rng.integers(-lim, lim, (n, k))  # IR [out, in]
    s = rng.uniform(0.5, 2.0, (k // GROUP, n)).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    blocks = gemv.pack_weight(w)
    stored = pack_int4(blocks) if bits == 4 else blocks.astype(np.int8)
    inst = rt.VmInstance()
    index = rt.ParameterIndex()
    index.add_buffer("w", np.ascontiguousarray(stored).tobytes())
    main = rt.VmModule.copy_buffer(inst, compile_iree(module_text(kern), list(resolve("cpu").compile_flags(3))))
    ctx = rt.VmContext(inst, modules=[rt.create_hal_module(inst, device),
                                      rt.create_io_parameters_module(inst, index.create_provider(scope="model")),
                                      main])
    fn = rt.FunctionInvoker(ctx, device, main.lookup_function("mm"))
    want = x.astype(np.float64) @ (w.T * np.repeat(s.astype(np.float64), GROUP, axis=0))
    got = np.asarray(fn(x, s).to_host())
    if np.abs(got - want).max() > 1e-5 * np.abs(want).max():
        raise SystemExit(f"gemv: the int{bits} kernel differs from numpy at n {n}")
    return fn, x, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", default="11264,65536", help="out-features, comma-separated, multiples of 64")
    ap.add_argument("--bits", default="4,8", help="weight bits, comma-separated (4, 8)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="calls a round")
    args = ap.parse_args()
    device = rt.get_device("local-task")
    fns = {(n, bits): load(args.k, n, bits, device) for n in map(int, args.n.split(","))
           for bits in map(int, args.bits.split(","))}
    times: dict = {key: [] for key in fns}
    for _ in range(args.rounds):
        for key, (fn, x, s) in fns.items():
            for _ in range(args.calls):
                t = time.perf_counter()
                fn(x, s)
                times[key].append(time.perf_counter() - t)
    for (n, bits), ts in times.items():
        weight = args.k * n * bits // 8
        print(f"[1, {args.k}] x [{args.k}, {n}] int{bits} ({weight / 2**20:.1f} MiB): "
              f"best {min(ts) * 1e3:.3f} ms {weight / min(ts) / 1e9:5.1f} GB/s, "
              f"median {np.median(ts) * 1e3:.3f} ms {weight / np.median(ts) / 1e9:5.1f} GB/s", flush=True)


if __name__ == "__main__":
    main()
