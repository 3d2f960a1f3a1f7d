"""Decode step time of the two attention lowerings (decomposed vs fused) on this machine's CPU.

    .venv/bin/python benchmarks/attention_strategy.py                 # 4 layers, hidden 512
    .venv/bin/python benchmarks/attention_strategy.py --stat min --extra-flags=--iree-opt-data-tiling=true

Builds a random-weight Llama checkpoint, runs blockify-kv-cache, lowers with each
strategy, compiles for llvm-cpu (host), then times `decode` with a page pool and block
tables that cover `context` positions (each row attends to `context` keys), and one
`prefill` of --prefill-len tokens. Calls of the two strategies alternate, so load from
other processes hits both alike; `--stat min` estimates the uncontended time.
Prints compile times, step times and the fused/decomposed ratio.
Results are recorded in docs/attention-strategy.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build(args, directory: Path, extra_config: dict | None = None):
    """(paged llm module at --opt-level, {weight name: array} it references, config);
    `extra_config` is merged into config.json (e.g. another architecture)."""
    from llmirc.dialect.context import weight_names
    from llmirc.frontend import import_checkpoint
    from llmirc.pipelines import PassManager, WeightStore, pipeline_for_level
    from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

    spec = CheckpointSpec(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                          intermediate=args.intermediate, vocab=args.vocab,
                          max_seq_len=max(args.contexts + [args.prefill_len]) + 16, extra_config=extra_config or {})
    m = import_checkpoint(make_checkpoint(directory / "ckpt", spec))
    store = WeightStore.from_arrays(m.weights())
    PassManager(pipeline_for_level(args.opt_level, block_size=args.block_size), weights=store).run(m.module)
    return m.module, {n: store[n] for n in weight_names(m.module)}, m.config


class Runner:
    """One compiled module with its weights, on `driver`."""

    def __init__(self, vmfb: bytes, weights: dict[str, np.ndarray], driver: str):
        import iree.runtime as rt

        self.device = rt.get_device(driver)
        inst = rt.VmInstance()
        index = rt.ParameterIndex()
        for name, w in weights.items():
            index.add_buffer(name, np.ascontiguousarray(w).tobytes())
        main = rt.VmModule.copy_buffer(inst, vmfb)
        ctx = rt.VmContext(inst, modules=[rt.create_hal_module(inst, self.device),
                                          rt.create_io_parameters_module(inst, index.create_provider(scope="model")),
                                          main])
        self.fns = {n: rt.FunctionInvoker(ctx, self.device, main.lookup_function(n)) for n in ("prefill", "decode")}

    def step(self, cfg, block_size: int, kind: str, batch: int, length: int):
        """A zero-argument callable: decode at position length-1, or prefill of `length` tokens."""
        import iree.runtime as rt

        pages = -(-length // block_size)
        pool = np.random.default_rng(0).standard_normal(
            (1 + batch * pages, cfg.num_layers, 2, block_size, cfg.num_kv_heads, cfg.head_dim)).astype(np.float32)
        dpool = rt.asdevicearray(self.device, pool)
        tables = (1 + np.arange(batch * pages, dtype=np.int64)).reshape(batch, pages)
        if kind == "decode":
            args = (np.arange(batch, dtype=np.int64) + 5, np.full(batch, length - 1, np.int64), tables, dpool)
        else:
            tokens = (np.arange(batch * length, dtype=np.int64) % (cfg.vocab_size - 3) + 3).reshape(batch, length)
            args = (tokens, np.full(batch, length, np.int64), tables, dpool)
        fn = self.fns[kind]

        def run():
            logits, _ = fn(*args)
            logits.to_host()

        return run


def time_interleaved(steps: dict, iters: int, warmup: int, stat) -> dict[str, float]:
    """Seconds per call; the strategies alternate so machine noise hits them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - t0)
    return {name: stat(v) for name, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1376)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--opt-level", type=int, default=2, help="llm pipeline level (2 is llmirc compile's default)")
    p.add_argument("--contexts", type=int, nargs="+", default=[128, 512])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--prefill-len", type=int, default=128, help="0 skips the prefill timing")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--driver", default="local-task")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="min estimates the uncontended time on a shared machine")
    p.add_argument("--flags", nargs="*", default=None, help="iree-compile flags (default: host CPU)")
    p.add_argument("--extra-flags", nargs="*", default=[],
                   help="appended to the flags; use the = form: --extra-flags=--iree-opt-data-tiling=true")
    p.add_argument("--strategies", nargs="+", default=["decomposed", "fused"], choices=["decomposed", "fused"])
    args = p.parse_args()

    from llmirc.lowering import CPU_FLAGS, compile_iree, lower_to_iree

    flags = (CPU_FLAGS if args.flags is None else args.flags) + args.extra_flags
    stat = statistics.median if args.stat == "median" else min
    with tempfile.TemporaryDirectory() as tmp:
        module, weights, cfg = build(args, Path(tmp))
        print(f"model: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads / "
              f"{cfg.num_kv_heads} kv heads, head_dim {cfg.head_dim}, vocab {cfg.vocab_size}; "
              f"page size {args.block_size}; -O{args.opt_level}; driver {args.driver}")
        print(f"flags: {' '.join(flags)}")
        runners = {}
        for strategy in args.strategies:
            text = lower_to_iree(module, attention=strategy)
            t0 = time.perf_counter()
            vmfb = compile_iree(text, flags)
            print(f"compile {strategy:10s}: {time.perf_counter() - t0:6.1f} s  ({len(vmfb) / 1e6:.2f} MB vmfb)")
            runners[strategy] = Runner(vmfb, weights, args.driver)

        both = len(runners) == 2
        print(f"\n{args.stat} time per call over {args.iters} calls")
        print(f"{'call':>8} {'batch':>5} {'context':>7}" + "".join(f" {s + ' ms':>14}" for s in runners)
              + (f" {'fused/decomposed':>17}" if both else ""))
        cases = [("decode", b, c) for b in args.batches for c in args.contexts]
        if args.prefill_len:
            cases.append(("prefill", 1, args.prefill_len))
        for kind, batch, length in cases:
            steps = {s: r.step(cfg, args.block_size, kind, batch, length) for s, r in runners.items()}
            t = time_interleaved(steps, args.iters if kind == "decode" else max(3, args.iters // 5),
                                 args.warmup, stat)
            print(f"{kind:>8} {batch:5d} {length:7d}" + "".join(f" {t[s] * 1e3:14.2f}" for s in runners)
                  + (f" {t['fused'] / t['decomposed']:17.2f}" if both else ""))


if __name__ == "__main__":
    main()
