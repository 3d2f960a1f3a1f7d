"""Prefill and decode tokens/s of one checkpoint compiled at -O0, -O1, -O2 and -O3.

    .venv/bin/python benchmarks/opt_levels.py                  # ~100M-parameter random Llama
    .venv/bin/python benchmarks/opt_levels.py --size small     # seconds, for a smoke run

Builds the checkpoint offline (fixed seed), compiles it once per level for this CPU,
then times each artifact through the runtime Engine: prefill of --prompt tokens
(batch 1) and --steps greedy decode steps (batch 1). Levels are measured round-robin,
repetition by repetition, so background load hits every level alike; the median of
the repetitions is reported. Prints a markdown table with ratios to -O0 and writes it to
docs/performance.md (with --write-docs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.runtime.bench import StepTimer, round_robin
from llmirc.testing.checkpoints import PRESETS, make_checkpoint, n_params

from docs_section import ROOT, write_doc_section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(PRESETS), default="100m")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--levels", default="0,1,2,3")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    spec = PRESETS[args.size]
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "ckpt", spec)
        timers, compile_s = {}, {}
        for level in levels:
            t0 = time.perf_counter()
            art = Path(tmp) / f"O{level}"
            compile_checkpoint(CompileOptions(ckpt, art, opt_level=level), progress=None)
            compile_s[level] = time.perf_counter() - t0
            timers[level] = StepTimer(art, args.prompt, args.steps)
            print(f"compiled -O{level} in {compile_s[level]:.1f} s", flush=True)
        round_robin(timers, args.reps)
    pre0, dec0 = timers[levels[0]].prefill_tokens_per_s(), timers[levels[0]].decode_tokens_per_s()
    rows = [f"Random-weight Llama ({args.size}: {n_params(spec) / 1e6:.1f}M parameters, f32, {spec.layers} layers, "
            f"hidden {spec.hidden}, {spec.heads}/{spec.kv_heads} heads, vocab {spec.vocab}); CPU llvm-cpu host; "
            f"batch 1, prefill of {args.prompt} tokens, {args.steps} decode steps; median of {args.reps} "
            "round-robin repetitions.", "",
            "| level | compile s | prefill tok/s | x O0 | decode tok/s | x O0 |", "|---|---|---|---|---|---|"]
    for level in levels:
        pre, dec = timers[level].prefill_tokens_per_s(), timers[level].decode_tokens_per_s()
        rows.append(f"| -O{level} | {compile_s[level]:.1f} | {pre:.1f} | {pre / pre0:.2f} | {dec:.2f} | "
                    f"{dec / dec0:.2f} |")
    table = "\n".join(rows)
    print(table)
    if args.write_docs:
        write_doc_section(ROOT / "docs" / "performance.md", f"opt-levels-{args.size}", table)


if __name__ == "__main__":
    main()
