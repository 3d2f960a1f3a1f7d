"""Prefill and decode tokens/s of one checkpoint compiled at -O0, -O1, -O2 and -O3.

    .venv/bin/python benchmarks/opt_levels.py                  # ~100M-parameter random Llama
    .venv/bin/python benchmarks/opt_levels.py --size small     # seconds, for a smoke run

Builds the checkpoint offline (fixed seed), compiles it once per level for this CPU,
then times each artifact through the runtime Engine: prefill of --prompt tokens
(batch 1) and --steps greedy decode steps (batch 1). Levels are measured round-robin,
repetition by repetition, so background load hits every level alike; the median of
the repetitions is reported. Prints a markdown table with ratios to -O0 and writes it to
docs/performance-levels.md (with --write-docs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.runtime import Engine
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

SIZES = {
    # ~100M parameters: 12 layers x 7.1M + 2 x 8192 x 768 embeddings/head = 97.6M
    "100m": CheckpointSpec(layers=12, hidden=768, heads=12, kv_heads=4, intermediate=2048, vocab=8192,
                           max_seq_len=1024, seed=0),
    "small": CheckpointSpec(layers=4, hidden=256, heads=8, kv_heads=4, intermediate=688, vocab=2048,
                            max_seq_len=512, seed=0),
}


def n_params(spec: CheckpointSpec) -> int:
    h, i, d = spec.hidden, spec.intermediate, spec.hidden // spec.heads
    per_layer = h * d * (spec.heads * 2 + spec.kv_heads * 2) + 3 * h * i + 2 * h
    return spec.layers * per_layer + 2 * spec.vocab * h + h


class Timer:
    """Prefill and decode of one artifact; every call's wall time goes into lists."""

    def __init__(self, artifact: Path, prompt: int, steps: int):
        self.engine = Engine(artifact, num_pages=2 + (prompt + steps) // 16 + 1)
        self.prompt, self.steps = prompt, steps
        pages = -(-(prompt + steps) // self.engine.page_size)
        self.table = np.arange(1, 1 + pages, dtype=np.int64)[None]
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []

    def run_once(self) -> None:
        tokens = np.arange(3, 3 + self.prompt, dtype=np.int64)[None] % 1000
        t0 = time.perf_counter()
        logits = self.engine.prefill(tokens, np.array([self.prompt], np.int64), self.table)
        self.prefill_s.append(time.perf_counter() - t0)
        pos = np.array([self.prompt], np.int64)
        t0 = time.perf_counter()
        for _ in range(self.steps):
            logits = self.engine.decode(logits.argmax(-1).astype(np.int64), pos, self.table)
            pos += 1
        self.decode_s.append((time.perf_counter() - t0) / self.steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="100m")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--levels", default="0,1,2,3")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    spec = SIZES[args.size]
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "ckpt", spec)
        timers, compile_s = {}, {}
        for level in levels:
            t0 = time.perf_counter()
            art = Path(tmp) / f"O{level}"
            compile_checkpoint(CompileOptions(ckpt, art, opt_level=level), progress=None)
            compile_s[level] = time.perf_counter() - t0
            timers[level] = Timer(art, args.prompt, args.steps)
            print(f"compiled -O{level} in {compile_s[level]:.1f} s", flush=True)
        for level in levels:  # warm-up
            timers[level].run_once()
        for _ in range(args.reps):
            for level in levels:
                timers[level].run_once()
    base = timers[levels[0]]
    rows = [f"Random-weight Llama ({args.size}: {n_params(spec) / 1e6:.1f}M parameters, f32, {spec.layers} layers, "
            f"hidden {spec.hidden}, {spec.heads}/{spec.kv_heads} heads, vocab {spec.vocab}); CPU llvm-cpu host; "
            f"batch 1, prefill of {args.prompt} tokens, {args.steps} decode steps; median of {args.reps} "
            "round-robin repetitions.", "",
            "| level | compile s | prefill tok/s | x O0 | decode tok/s | x O0 |", "|---|---|---|---|---|---|"]
    for level in levels:
        t = timers[level]
        pre = args.prompt / statistics.median(t.prefill_s)
        dec = 1 / statistics.median(t.decode_s)
        pre0 = args.prompt / statistics.median(base.prefill_s)
        dec0 = 1 / statistics.median(base.decode_s)
        rows.append(f"| -O{level} | {compile_s[level]:.1f} | {pre:.1f} | {pre / pre0:.2f} | {dec:.2f} | "
                    f"{dec / dec0:.2f} |")
    table = "\n".join(rows)
    print(table)
    if args.write_docs:
        doc = Path(__file__).resolve().parent.parent / "docs" / "performance-levels.md"
        doc.write_text("# -O levels on this CPU\n\nWritten by `benchmarks/opt_levels.py --write-docs`.\n\n"
                       + table + "\n")
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
