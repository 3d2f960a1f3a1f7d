"""Decode step time with a sliding window against the same model attending to everything.

    .venv/bin/python benchmarks/sliding_window.py                       # window 256, contexts 512..4096

Builds one random-weight checkpoint twice: as Mistral with `sliding_window` (every layer
windowed) and as Llama (no window), same weights. Both go through the -O2 pipeline and
are compiled for the host CPU; `decode` is then timed at each context, the two models'
calls alternating so machine noise hits both alike. A windowed decode reads the pages
inside its window only (lowering/kv.py `_window_view`), so its step time should stay
flat as the context grows while the full model's grows with it; the ratio column is
windowed / full. Results are recorded in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attention_strategy  # noqa: E402
from attention_strategy import Runner, time_interleaved  # noqa: E402


def build(args, directory: Path, window: int):
    """attention_strategy.build at -O2, as Mistral with `window` in every layer (0: as Llama)."""
    extra = dict(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=window) if window else {}
    directory.mkdir(parents=True, exist_ok=True)
    return attention_strategy.build(argparse.Namespace(**vars(args), opt_level=2, prefill_len=0), directory, extra)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=1376)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()

    from llmirc.lowering import CPU_FLAGS, compile_iree, lower_to_iree

    with tempfile.TemporaryDirectory() as tmp:
        runners, cfg = {}, None
        for name, window in (("windowed", args.window), ("full", 0)):
            module, weights, cfg = build(args, Path(tmp) / f"window-{window}", window)
            runners[name] = Runner(compile_iree(lower_to_iree(module), CPU_FLAGS), weights, "local-task")
        print(f"model: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads / "
              f"{cfg.num_kv_heads} kv heads; page size {args.block_size}; window {args.window}; -O2, host CPU")
        print(f"\nmedian decode step over {args.iters} calls")
        print(f"{'batch':>5} {'context':>7} {'windowed ms':>12} {'full ms':>9} {'windowed/full':>14}")
        for batch in args.batches:
            for ctx in args.contexts:
                steps = {n: r.step(cfg, args.block_size, "decode", batch, ctx) for n, r in runners.items()}
                t = time_interleaved(steps, args.iters, args.warmup, statistics.median)
                print(f"{batch:5d} {ctx:7d} {t['windowed'] * 1e3:12.2f} {t['full'] * 1e3:9.2f} "
                      f"{t['windowed'] / t['full']:14.2f}", flush=True)


if __name__ == "__main__":
    main()
