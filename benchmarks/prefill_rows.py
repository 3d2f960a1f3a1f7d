"""Prefill of f16/bf16 artifacts: the row-chunked `prefill_r64` against the plain `prefill` of the
same artifact, with f32 as the reference.

    .venv/bin/python benchmarks/prefill_rows.py                          # 100m preset, about 6 min
    .venv/bin/python benchmarks/prefill_rows.py --preset small --lens 64,128 --rounds 3

-O3 CPU artifacts with f16 or bf16 linears export both functions (docs/abi.md); the runtime
calls `prefill_r64` for calls of 64 or more token rows. This compiles the preset's checkpoint at
-O3 with each --dtypes, then times a batch-1 prefill of each --lens, round-robin over every
(artifact, function) in one process so that load from elsewhere hits all alike, and prints
median tokens/s, the ratio of the plain function's time to the chunked one's, the ratio to the
f32 artifact's prefill, and the largest logit difference between the two functions (0 when
each row is one product either way). Results: docs/performance.md ("f16 and bf16 prefill").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="100m", help="checkpoint preset (llmirc.testing.checkpoints.PRESETS)")
    ap.add_argument("--dtypes", default="f32,f16,bf16", help="--dtype values to compile (f32: the reference)")
    ap.add_argument("--lens", default="100,128,256,512", help="prompt lengths, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", type=Path, help="keep the checkpoint and artifacts here (default: a temp dir)")
    args = ap.parse_args()

    from llmirc.compiler import CompileOptions, compile_checkpoint
    from llmirc.runtime import Engine
    from llmirc.testing.checkpoints import PRESETS, make_large_checkpoint

    lens = [int(t) for t in args.lens.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prefill-rows-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"ckpt-{args.preset}"
    if not (ckpt / "config.json").exists():
        make_large_checkpoint(ckpt, PRESETS[args.preset])
    engines = {}
    for dtype in args.dtypes.split(","):
        out = work / f"{args.preset}-{dtype}-o3"
        if not (out / "manifest.json").exists():
            t = time.perf_counter()
            compile_checkpoint(CompileOptions(ckpt, out, opt_level=3, dtype=dtype), progress=None)
            print(f"compiled {out.name} in {time.perf_counter() - t:.0f} s", flush=True)
        engines[dtype] = Engine(out, num_pages=max(lens) // 16 + 8)
    rng = np.random.default_rng(0)
    print(f"{args.preset}, batch-1 prefill, median of {args.rounds} rounds after a warm-up; "
          "x plain = plain prefill time / this one's; x f32 = f32 prefill time / this one's")
    for n in lens:
        tokens = rng.integers(3, 200, size=(1, n)).astype(np.int64)
        seq_lens = np.array([n], np.int64)
        calls = {}  # label -> (engine, function)
        for dtype, e in engines.items():
            tables = np.arange(1, 2 + n // e.page_size, dtype=np.int64)[None]
            calls[f"{dtype} prefill"] = (e, e._prefill, tables)
            if e._prefill_by_rows and n >= min(e._prefill_by_rows):
                calls[f"{dtype} prefill_r{min(e._prefill_by_rows)}"] = (e, e._prefill_by_rows[min(e._prefill_by_rows)],
                                                                         tables)
        times: dict[str, list[float]] = {k: [] for k in calls}
        logits = {}
        for r in range(args.rounds + 1):
            for label, (e, fn, tables) in calls.items():
                t = time.perf_counter()
                logits[label] = e._call(fn, tokens, seq_lens, tables)
                if r:  # round 0 warms up
                    times[label].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        for label in calls:
            dtype, fn = label.split(" ")
            plain = f"{dtype} prefill"
            diff = "" if fn == "prefill" else f"  max |logit diff| {float(np.abs(logits[label] - logits[plain]).max()):.1e}"
            f32 = f"  x f32 {med['f32 prefill'] / med[label]:.2f}" if "f32 prefill" in med else ""
            print(f"T={n:5d}  {label:22s} {n / med[label]:8.1f} tok/s  x plain {med[plain] / med[label]:.2f}{f32}{diff}",
                  flush=True)


if __name__ == "__main__":
    main()
