"""Decode-step time with a small page pool vs one 8x larger: the pool must not be copied per step.

The pool is a device buffer updated in place (`iree.abi.output`); if any step
copied it, step time would grow with the pool. Prints both medians and the ratio.

    python benchmarks/pool_size.py [--layers 4 --hidden 256] [--steps 50]
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


def step_times(artifact: Path, num_pages: int, steps: int, batch: int) -> list[float]:
    engine = Engine(artifact, num_pages=num_pages)
    per_seq = 8
    tables = np.arange(1, 1 + batch * per_seq, dtype=np.int64).reshape(batch, per_seq)
    logits = engine.prefill(np.full((batch, 16), 5, np.int64), np.full(batch, 16, np.int64), tables)
    positions = np.full(batch, 16, np.int64)
    times = []
    for _ in range(steps):
        nxt = logits.argmax(-1).astype(np.int64)
        t0 = time.perf_counter()
        logits = engine.decode(nxt, positions, tables)
        times.append(time.perf_counter() - t0)
        positions += 1
    return times[5:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--small-pages", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "ckpt", CheckpointSpec(
            layers=args.layers, hidden=args.hidden, heads=8, kv_heads=4, intermediate=4 * args.hidden,
            vocab=2048, max_seq_len=1024))
        art = Path(tmp) / "art"
        compile_checkpoint(CompileOptions(ckpt, art, opt_level=2), progress=None)
        small = step_times(art, args.small_pages, args.steps, args.batch)
        big = step_times(art, 8 * args.small_pages, args.steps, args.batch)
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    pool_mib = lambda n: n * args.layers * 2 * 16 * 4 * (args.hidden // 8) * 4 / 2**20  # noqa: E731
    print(f"decode step, pool of {args.small_pages} pages ({pool_mib(args.small_pages):.1f} MiB): "
          f"median {ms(small):.3f} ms (p10 {1e3 * np.percentile(small, 10):.3f}, p90 {1e3 * np.percentile(small, 90):.3f})")
    print(f"decode step, pool of {8 * args.small_pages} pages ({pool_mib(8 * args.small_pages):.1f} MiB): "
          f"median {ms(big):.3f} ms (p10 {1e3 * np.percentile(big, 10):.3f}, p90 {1e3 * np.percentile(big, 90):.3f})")
    print(f"ratio big/small: {statistics.median(big) / statistics.median(small):.3f}")


if __name__ == "__main__":
    main()
