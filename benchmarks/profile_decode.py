"""Where one decode step's time goes: IREE's per-dispatch profile of an artifact's `decode`.

    .venv/bin/python benchmarks/profile_decode.py                     # 100M random Llama, -O3
    .venv/bin/python benchmarks/profile_decode.py --artifact OUT/ --batch 4 --context 256

Runs `iree-benchmark-module` on the artifact's `decode` function (the same vmfb and
parameter archive the runtime loads, inputs written as .npy: tokens, positions, block
tables and a page pool) with HAL dispatch profiling on, then reduces `iree-profile dispatch
--format=jsonl` to one row per executable function: calls and microseconds per step, share
of the step, and -- for matmul-like dispatches, whose weight bytes their name tells -- the
bandwidth each reached, against the machine's measured streaming-read bandwidth.

Also prints iree-benchmark-module's own time per call, which includes what the dispatches
do not: VM and HAL overhead between them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llmirc.artifacts.manifest import read_manifest
from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.runtime import roofline
from llmirc.testing.checkpoints import PRESETS, make_checkpoint

BIN = Path(sys.executable).parent


def write_inputs(artifact: Path, batch: int, context: int, directory: Path) -> list[str]:
    """.npy inputs for decode: `batch` sequences at position `context`, pages 1.. in order."""
    m = read_manifest(artifact)
    page = m.kv.page_size
    per_seq = -(-(context + 1) // page)
    tables = 1 + np.arange(batch * per_seq, dtype=np.int64).reshape(batch, per_seq)
    pool = np.zeros((1 + batch * per_seq, m.model.num_layers, 2, page, m.model.num_kv_heads, m.model.head_dim),
                    np.float32)
    arrays = {"tokens": np.full(batch, 5, np.int64), "positions": np.full(batch, context, np.int64),
              "tables": tables, "pool": pool}
    for name, a in arrays.items():
        np.save(directory / f"{name}.npy", a)
    return [f"--input=@{directory / name}.npy" for name in arrays]


def decode_function(artifact: Path, batch: int) -> str:
    """The function the runtime calls for this batch: a static-batch one when compiled (-O3)."""
    return read_manifest(artifact).entry_points["decode"].get("batch_functions", {}).get(str(batch), "decode")


def run_profile(artifact: Path, function: str, inputs: list[str], calls: int, prof: Path) -> float:
    """Profile `calls` decode calls; returns iree-benchmark-module's mean wall ms per call."""
    cmd = [str(BIN / "iree-benchmark-module"), f"--module={artifact / 'model.vmfb'}",
           f"--parameters=model={artifact / 'model.irpa'}", "--device=local-task", f"--function={function}",
           *inputs, f"--benchmark_min_time={calls}x", "--benchmark_format=json",
           "--device_profiling_mode=host-execution", f"--device_profiling_output={prof}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    bench = json.loads(out[out.index("{"):])["benchmarks"][0]
    return bench["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0}[bench["time_unit"]]


def dispatch_rows(prof: Path) -> list[dict]:
    out = subprocess.run([str(BIN / "iree-profile"), "dispatch", "--format=jsonl", str(prof)],
                         check=True, capture_output=True, text=True).stdout
    return [r for r in map(json.loads, out.splitlines()) if r.get("type") == "host_dispatch_group"]


ELEMENT_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "i8": 1}  # of a weight's type in a dispatch name


def weight_bytes(name: str) -> int | None:
    """Bytes of the weight a batch-small matmul dispatch streams, from IREE's dispatch name
    (`..._matmul_like_4x2048x768_f32` or `..._matmul_transpose_b_1x2048x768_f32`: MxNxK) or
    lowering/gemv.py's (`gemv_i4_1x2048x11264_g128`: rows (D: any) x K x N, int4 or int8 values and
    f32 scales) or a
    one-row weight-only int8 product's (`..._matvec_like_32000x2048_f32xi8xf32`: N x K, values only)."""
    g = re.search(r"gemv_i(4|8)_(?:D|\d+)x(\d+)x(\d+)_g(\d+)", name)
    if g:
        bits, k, n, group = int(g[1]), int(g[2]), int(g[3]), int(g[4])
        return k * n * bits // 8 + k // group * n * 4
    v = re.search(r"matvec_like_(\d+)x(\d+)_f32x(f32|f16|bf16|i8)", name)  # one row: N x K, the weight's type
    if v:
        return int(v[1]) * int(v[2]) * ELEMENT_BYTES[v[3]]
    m = re.search(r"matmul(?:_like|_transpose_b)?_(D|\d+)x(\d+)x(\d+)_(f32|f16|bf16|i8)", name)
    if not m:
        return None
    n, k, dtype = int(m[2]), int(m[3]), m[4]
    return n * k * ELEMENT_BYTES[dtype]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, help="a compiled artifact (default: compile the --size model)")
    ap.add_argument("--size", choices=list(PRESETS), default="100m")
    ap.add_argument("-O", dest="opt_level", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=128, help="position of the decoded token")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        artifact = args.artifact
        if artifact is None:
            artifact = tmp / "art"
            t0 = time.perf_counter()
            compile_checkpoint(CompileOptions(make_checkpoint(tmp / "ckpt", PRESETS[args.size]), artifact,
                                              opt_level=args.opt_level), progress=None)
            print(f"compiled {args.size} -O{args.opt_level} in {time.perf_counter() - t0:.0f} s", flush=True)
        inputs = write_inputs(artifact, args.batch, args.context, tmp)
        args.function = decode_function(artifact, args.batch)
        call_ms = run_profile(artifact, args.function, inputs, args.calls, tmp / "decode.ireeprof")
        rows = dispatch_rows(tmp / "decode.ireeprof")
    bw = roofline.measure(threads=2).read_bps
    report(rows, call_ms, bw, args)


def report(rows: list[dict], call_ms: float, bw: float, args) -> None:
    """host_dispatch_group rows (one per executable function, local-task's host-execution
    timing): key = function name, count, total_ns, total_tile_count = workgroups run."""
    calls = max(1, args.calls)
    per_step = sorted(((r["key"], r["count"] / calls, r["total_ns"] / calls / 1e3, r["total_tile_count"] / r["count"])
                       for r in rows if r["count"]), key=lambda x: -x[2])
    busy_us = sum(us for _, _, us, _ in per_step)
    weights = sum((weight_bytes(n) or 0) * c for n, c, _, _ in per_step)
    print(f"@{args.function}, batch {args.batch} at context {args.context}: {call_ms:.2f} ms per call "
          f"(iree-benchmark-module), dispatches busy {busy_us / 1e3:.2f} ms, "
          f"{sum(c for _, c, _, _ in per_step):.0f} dispatches per call")
    print(f"matmul weight bytes per step {weights / 1e6:.1f} MB -> at {bw / 1e9:.1f} GB/s "
          f"{weights / bw * 1e3:.2f} ms; the step took {call_ms:.2f} ms ({weights / bw * 1e3 / call_ms:.0%} "
          "of the bandwidth bound)\n")
    print("| dispatch | per step | us/step | share | workgroups | GB/s |\n|---|---|---|---|---|---|")
    for name, count, us, tiles in per_step[:args.top]:
        wb = weight_bytes(name)
        gbs = f"{wb * count / (us * 1e-6) / 1e9:.1f}" if wb and us else ""
        print(f"| `{name}` | {count:.0f} | {us:.1f} | {us / busy_us:.1%} | {tiles:.0f} | {gbs} |")
    if args.json:
        args.json.write_text(json.dumps({"call_ms": call_ms, "read_bps": bw, "rows": [
            {"name": n, "per_step": c, "us": us, "workgroups": t, "weight_bytes": weight_bytes(n)}
            for n, c, us, t in per_step]}, indent=1))


if __name__ == "__main__":
    main()
