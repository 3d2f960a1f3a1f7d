"""One linear's matmul through IREE, as -O3 compiles it, against numpy's BLAS on the same cores.

    .venv/bin/python benchmarks/matmul_kernels.py                      # 2048 -> 5632, M = 16,128,512
    .venv/bin/python benchmarks/matmul_kernels.py --k 768 --n 4096 --rows 1,64 \
        --variant ukernels=--iree-llvmcpu-enable-ukernels=mmt4d
    .venv/bin/python benchmarks/matmul_kernels.py --weights f32,f16 --rows 128 --isa

Why: prefill (and batched decode) is a chain of [M, K] x [K, N] products, so how close IREE's
code comes to a tuned sgemm bounds time to first token. The module is the lowering's own
`matmul_transpose_b` (weights [out, in] as a parameter global, as in an artifact), compiled
with the CPU target profile's -O3 flags plus each --variant's extra flags. All variants and
numpy are timed round-robin in one process, round by round, so background load on a shared
machine hits them alike; the report gives GFLOP/s (best and median) and best / numpy's best.
Timings of a matrix that fits in the last-level cache measure compute, not DRAM streaming
(decode is the latter: benchmarks/profile_decode.py).

`--weights f32,f16` times the product with each weight element type (an `--dtype f16`
artifact's linears are f32 activations x f16 weights, accumulated in f32); numpy's reference
uses the same weights widened to f32. `--weights i8` is w8a8's product (i8 activations and
weights, i32 result, exact); with `--static` (M fixed in the module, as in decode_b{B}) it is
the one a w8a8 decode step runs. `--isa` also prints, per module, the instruction mix of
the matmul dispatch's innermost loop (from iree-compile's dumped assembly): where a kernel's
cycles go when it is not the FMAs, e.g. shuffles that broadcast an operand.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import iree.runtime as rt

from llmirc.lowering import compile_iree
from llmirc.lowering.emitter import TV, Emitter, affine_map
from llmirc.lowering.ops import in_row_chunks, matmul_transpose_b
from llmirc.targets import resolve


def module_text(k: int, n: int, weights: str = "f32", rows: int | None = None, chunk: int | None = None) -> str:
    """func @mm(x[rows or ?, k]) = x @ w^T, w = parameter "w" (`weights`)[n, k]: f32 activations and
    result for float weights (the lowering's own matmul_transpose_b; with `chunk`, a dynamic M
    is computed in static row chunks, ops.in_row_chunks); for i8 weights w8a8's product, i8
    activations x i8 weights -> i32 (`_integer_matmul`'s linalg.matmul)."""
    e = Emitter()
    e.function = "mm"
    xt = "i8" if weights == "i8" else "f32"
    x_type = f"tensor<{rows or '?'}x{k}x{xt}>"
    m = e.dims_of("%x", x_type, (rows, k))[0]
    e.emit(f"%w = util.global.load @w : tensor<{n}x{k}x{weights}>")
    x, w = TV("%x", (m, k), xt), TV("%w", (n, k), weights)
    if weights == "i8":
        acc = e.filled((m, n), "i32", 0)
        maps = ", ".join(affine_map(3, ex) for ex in (["d0", "d2"], ["d1", "d2"], ["d0", "d1"]))
        y = TV(e.v(f"linalg.matmul indexing_maps = [{maps}] ins({x.name}, {w.name} : {x.type}, {w.type}) "
                   f"outs({acc.name} : {acc.type}) -> {acc.type}", "imm"), (m, n), "i32")
    elif chunk and rows is None:
        y = in_row_chunks(e, x, n, chunk, lambda xc: matmul_transpose_b(e, xc, w))
    else:
        y = matmul_transpose_b(e, x, w)
    return "\n".join([
        f'util.global private @w = #flow.parameter.named<"model"::"w"> : tensor<{n}x{k}x{weights}>',
        f"func.func @mm(%x: {x_type}) -> {y.type} {{", *e.lines, f"  return {y.name} : {y.type}", "}"])


def weights_as(w: np.ndarray, dtype: str) -> np.ndarray:
    """The f32 weights [n, k] in `dtype`: i8 symmetric per output row (w8a8's layout)."""
    if dtype == "i8":
        return np.round(w * (127 / np.abs(w).max(axis=1, keepdims=True))).astype(np.int8)
    return w.astype({"f32": np.float32, "f16": np.float16}[dtype])


def input_as(x: np.ndarray, dtype: str) -> np.ndarray:
    """The f32 activations in the module's input type: i8 rows quantized per row for i8 weights."""
    if dtype == "i8":
        return np.round(x * (127 / np.abs(x).max(axis=1, keepdims=True))).astype(np.int8)
    return x


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


def inner_loop_mix(text: str, flags: list[str]) -> Counter:
    """Mnemonic counts of the innermost loop of the module's matmul dispatch: of the basic blocks
    that branch back to themselves, the one with the most vector multiply-adds, and of those the
    shortest (the steady-state loop, not a masked tail)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "mm.mlir")
        src.write_text(text)
        subprocess.run(["iree-compile", str(src), *flags, f"--iree-hal-dump-executable-intermediates-to={tmp}",
                        "-o", str(Path(tmp, "mm.vmfb"))], check=True)
        asm = next(Path(tmp).glob("*.s")).read_text()
    body = asm.split("\nmm_dispatch_", 1)[1].split("\n.Lfunc_end", 1)[0]
    blocks = re.split(r"\n(\.LBB\w+):", body)
    loops = []
    for label, block in zip(blocks[1::2], blocks[2::2]):
        lines = [ln.split() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith((".", "#"))]
        back = [i for i, ln in enumerate(lines) if ln[0].startswith("j") and ln[-1] == label]
        if back:  # the loop body: from the label to its backward branch
            mix = Counter(ln[0] for ln in lines[:back[0] + 1])
            fmas = sum(c for op, c in mix.items() if op.startswith(("vfmadd", "vpdp", "vpmadd", "vdpbf16")))
            loops.append((-fmas, back[0], mix))
    return min(loops, key=lambda t: t[:2])[2] if loops else Counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=2048, help="in-features")
    ap.add_argument("--n", type=int, default=5632, help="out-features")
    ap.add_argument("--rows", default="16,128,512", help="M values, comma-separated")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--weights", default="f32", help="weight element types, comma-separated (f32, f16, i8)")
    ap.add_argument("--static", action="store_true", help="M static in each module (as decode_b{B}), not dynamic")
    ap.add_argument("--prefill-rows", default="", metavar="C[,C]",
                    help="also time each float product with a dynamic M in static C-row chunks (as prefill does for "
                         "f16/bf16 weights; lowering/ops.py in_row_chunks)")
    ap.add_argument("--isa", action="store_true", help="print each module's inner-loop instruction mix")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAG[,FLAG]",
                    help="more iree-compile flags on top of -O3's (repeatable)")
    args = ap.parse_args()
    base = list(resolve("cpu").compile_flags(3))
    variants = {"-O3": base} | {v.split("=", 1)[0]: base + v.split("=", 1)[1].split(",") for v in args.variant}
    chunks = [None] + [int(c) for c in args.prefill_rows.split(",") if c]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((args.n, args.k)) * 0.02).astype(np.float32)
    device = rt.get_device("local-task")
    dtypes = args.weights.split(",")
    print(f"[M, {args.k}] x [{args.k}, {args.n}], weights {args.weights} (f32 activations; i8: w8a8's i8 x i8 -> "
          f"i32), M {'static' if args.static else 'dynamic'}; -O3 flags: {' '.join(base)}")
    modules: dict[tuple[str, int | None], Callable] = {}  # (label, static M or None) -> product

    def compiled(label: str, wdt: str, flags: list[str], rows: int | None, chunk: int | None) -> Callable:
        if (label, rows) not in modules:
            text = module_text(args.k, args.n, wdt, rows, chunk)
            modules[label, rows] = load(compile_iree(text, flags), weights_as(w, wdt), device)
            if args.isa:
                mix = inner_loop_mix(text, flags)
                print(f"{label}{f' M={rows}' if rows else ''}: inner loop "
                      + ", ".join(f"{c} {op}" for op, c in mix.most_common()), flush=True)
        return modules[label, rows]

    wt = w.T
    for m in (int(r) for r in args.rows.split(",")):
        x = rng.standard_normal((m, args.k)).astype(np.float32)
        fns = {}  # label -> (product, its input, its reference result)
        for wdt in dtypes:
            xin, wq = input_as(x, wdt), weights_as(w, wdt)
            ref = xin.astype(np.float64) @ wq.astype(np.float64).T
            for name, flags in variants.items():
                for chunk in chunks if wdt != "i8" and not args.static else [None]:
                    label = (name if wdt == "f32" else f"{name} {wdt}") + (f" rows={chunk}" if chunk else "")
                    fns[label] = (compiled(label, wdt, flags, m if args.static else None, chunk), xin, ref)
        fns["numpy"] = ((lambda v: v @ wt), x, x.astype(np.float64) @ wt.astype(np.float64))
        for name, (f, xin, ref) in fns.items():
            err = np.abs(f(xin) - ref).max() / np.abs(ref).max()
            assert err < 1e-4, f"{name} at M={m}: relative error {err:.1e}"
        flop = 2 * m * args.k * args.n
        reps = max(2, int(1e9 / flop))
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, (f, xin, _) in fns.items():
                for _ in range(reps):
                    t = time.perf_counter()
                    f(xin)
                    times[name].append(time.perf_counter() - t)
        best_numpy = flop / min(times["numpy"])
        for name, ts in times.items():
            best = flop / min(ts)
            print(f"M={m:5d}  {name:16s} best {best / 1e9:6.1f} GFLOP/s  median {flop / np.median(ts) / 1e9:6.1f}"
                  f"  best / numpy {best / best_numpy:4.2f}", flush=True)

if __name__ == "__main__":
    main()
