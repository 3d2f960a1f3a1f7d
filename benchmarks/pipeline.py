"""What pipeline parallelism costs on one CPU: PP=2 (two local-task devices) against PP=1 of the
same checkpoint, and micro-batches against one batch.

    .venv/bin/python benchmarks/pipeline.py                  # the "small" preset (4 layers, hidden 256)
    .venv/bin/python benchmarks/pipeline.py --preset 100m --rounds 5

Compiles the checkpoint at -O2 with --pp 1 and --pp 2, then times, round-robin in one process
(so load from elsewhere hits every variant alike): a prefill of --batch prompts of --prompt-len
tokens and a decode step of the same batch, for PP=1, PP=2 and PP=2 with 2 micro-batches.
Prints medians and the ratios to PP=1. The two devices share this machine's cores, so this
measures the stage hop (hidden state to the host and back) and how much two stages overlap,
not a speed-up from a second device. Results: docs/parallel.md.
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
    ap.add_argument("--preset", default="small", help="checkpoint preset (llmirc.testing.checkpoints.PRESETS)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from llmirc.compiler import CompileOptions, compile_checkpoint
    from llmirc.runtime import Engine
    from llmirc.runtime.pipeline import PipelineEngine
    from llmirc.testing.checkpoints import PRESETS, make_large_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="llmirc-pp-bench-"))
    ckpt = make_large_checkpoint(tmp / "ckpt", PRESETS[args.preset])
    arts = {}
    for pp in (1, 2):
        t = time.perf_counter()
        arts[pp] = tmp / f"pp{pp}"
        compile_checkpoint(CompileOptions(ckpt, arts[pp], opt_level=2, pp=pp), progress=None)
        print(f"compile --pp {pp}: {time.perf_counter() - t:.1f} s", flush=True)

    b, t_len = args.batch, args.prompt_len
    engines = {"PP=1": Engine(arts[1]), "PP=2": Engine(arts[2]),
               "PP=2, 2 micro-batches": PipelineEngine(arts[2], micro_batches=2)}
    page = engines["PP=1"].page_size
    pages = -(-(t_len + 1) // page)
    if 1 + b * pages > engines["PP=1"].num_pages:
        raise SystemExit(f"--batch {b} x --prompt-len {t_len} needs {1 + b * pages} pages; lower one of them")
    tables = (1 + np.arange(b * pages, dtype=np.int64)).reshape(b, pages)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, engines["PP=1"].vocab_size, size=(b, t_len), dtype=np.int64)
    lens = np.full(b, t_len, np.int64)
    step = tokens[:, -1].copy()

    times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in engines}
    for _ in range(args.rounds):
        for name, e in engines.items():
            t = time.perf_counter()
            e.prefill(tokens, lens, tables)
            times[name]["prefill"].append(time.perf_counter() - t)
            t = time.perf_counter()
            e.decode(step, lens, tables)
            times[name]["decode"].append(time.perf_counter() - t)
    base = {k: statistics.median(v) for k, v in times["PP=1"].items()}
    print(f"\n{args.preset}: batch {b}, prompt {t_len} tokens, median of {args.rounds} rounds")
    print(f"{'':24} {'prefill ms':>11} {'x PP=1':>7} {'decode ms':>10} {'x PP=1':>7}")
    for name, v in times.items():
        p, d = statistics.median(v["prefill"]), statistics.median(v["decode"])
        print(f"{name:24} {p * 1e3:11.2f} {p / base['prefill']:7.2f} {d * 1e3:10.2f} {d / base['decode']:7.2f}")


if __name__ == "__main__":
    main()
