"""Artifact size, decode and prefill tokens/s of one Llama with f32, f16, int8, int4, w8a8, w4a8 and w4a16 weights.

    .venv/bin/python benchmarks/quantization.py                 # ~1.1B parameters (TinyLlama's shape)
    .venv/bin/python benchmarks/quantization.py --size small    # a minute, for a smoke run
    .venv/bin/python benchmarks/quantization.py --accuracy      # + the accuracy of each on the trained model
    ... --write-docs                                            # put the tables into docs/quantization.md

The random-weight checkpoint is written tensor by tensor (never all in memory: the 1.1B f32
checkpoint is 4.4 GB), compiled once per precision at -O3 for this CPU, and every artifact is
timed through the runtime Engine: prefill of --prompt tokens, then --steps greedy decode steps
(batch 1). Precisions are measured round-robin, repetition by repetition, so background load
hits them alike; medians are reported. The roofline of decode is the streaming-read bandwidth
(measured here with numpy on two threads) divided by the bytes one decode step must read: every
weight except the embedding table, of which one row is read.

--accuracy compiles the shipped trained model (llmirc/assets/default_model) in f32, int8 and
int4 and runs each artifact teacher-forced over Genesis 1 (KJV): top-1 agreement with f32 and
perplexity (llmirc/testing/accuracy.py).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.runtime import roofline
from llmirc.runtime.bench import StepTimer, round_robin
from llmirc.testing.checkpoints import PRESETS, make_large_checkpoint, n_params

from docs_section import write_doc_section

PRECISIONS = {"f32": {}, "f16": {"dtype": "f16"}, "int8": {"quantize": "int8"}, "int4": {"quantize": "int4"},
              "w8a8": {"quantize": "w8a8"}, "w4a8": {"quantize": "w4a8"}, "w4a16": {"quantize": "w4a16"},
              "int4-lm_head-int8": {"quantize": "int4", "lm_head": "int8"}}
DOC = Path(__file__).resolve().parent.parent / "docs" / "quantization.md"


def decode_bytes(artifact: Path) -> int:
    """Bytes of the parameters one decode step reads: all but the embedding table."""
    from llmirc.artifacts.params import read_params

    return sum(a.nbytes for name, a in read_params(artifact / "model.irpa").items()
               if not name.startswith("model.embed_tokens.weight"))


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def speed(args, tmp: Path) -> str:
    spec = PRESETS[args.size]
    t0 = time.perf_counter()
    ckpt = make_large_checkpoint(tmp / "ckpt", spec)
    print(f"wrote a {_count(n_params(spec))}-parameter checkpoint in {time.perf_counter() - t0:.0f} s",
          flush=True)
    machine = roofline.measure(threads=2)
    bw_sum, bw_gemv, bw = machine.read_sum_bps, machine.read_gemv_bps, machine.read_bps
    print(machine.describe(), flush=True)
    rows, timers = {}, {}
    for name in args.precisions.split(","):
        t0 = time.perf_counter()
        art = tmp / name
        compile_checkpoint(CompileOptions(ckpt, art, opt_level=3, **PRECISIONS[name]), progress=None)
        compile_s = time.perf_counter() - t0
        rows[name] = {"compile_s": compile_s, "irpa": (art / "model.irpa").stat().st_size,
                      "decode_bytes": decode_bytes(art)}
        timers[name] = StepTimer(art, args.prompt, args.steps)
        print(f"{name}: compiled in {compile_s:.0f} s, {rows[name]['irpa'] / 1e9:.2f} GB, loaded in "
              f"{timers[name].load_s:.1f} s", flush=True)
    round_robin(timers, args.reps)
    dec = {n: t.decode_tokens_per_s() for n, t in timers.items()}
    pre = {n: t.prefill_tokens_per_s() for n, t in timers.items()}

    def vs_f32(values: dict, name: str) -> str:
        return f"{values[name] / values['f32']:.2f}" if "f32" in values else "-"

    size = {n: r["irpa"] for n, r in rows.items()}
    lines = [f"Random-weight Llama, {_count(n_params(spec))} parameters ({spec.layers} layers, "
             f"hidden {spec.hidden}, {spec.heads}/{spec.kv_heads} heads, intermediate {spec.intermediate}, "
             f"vocab {spec.vocab}); -O3, llvm-cpu on this 2-core CPU; batch 1: prefill of {args.prompt} tokens, "
             f"then {args.steps} decode steps, {args.reps} round-robin repetitions, medians. Quantized: group 128, "
             f"symmetric, embeddings and lm_head f32. Streaming read bandwidth {bw / 1e9:.1f} GB/s (the faster "
             f"of a 2-thread numpy sum, {bw_sum / 1e9:.1f} GB/s, and a numpy gemv, {bw_gemv / 1e9:.1f} GB/s, "
             "over 1 GiB); roofline = bandwidth / bytes read per decode step.", "",
             "| weights | artifact GB | x f32 | bytes/step GB | roofline tok/s | decode tok/s | x f32 | % roofline "
             "| prefill tok/s | x f32 | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        roof = machine.decode_tokens_per_s(r["decode_bytes"])
        lines.append(f"| {name} | {r['irpa'] / 1e9:.3f} | {vs_f32(size, name)} | {r['decode_bytes'] / 1e9:.3f} | "
                     f"{roof:.2f} | {dec[name]:.2f} | {vs_f32(dec, name)} | {100 * dec[name] / roof:.0f} % | "
                     f"{pre[name]:.1f} | {vs_f32(pre, name)} | {r['compile_s']:.0f} |")
    return "\n".join(lines)


def accuracy_table(tmp: Path) -> str:
    from tokenizers import Tokenizer

    from llmirc.cli import DEFAULT_MODEL
    from llmirc.testing import accuracy

    ids = Tokenizer.from_file(str(DEFAULT_MODEL / "tokenizer.json")).encode(accuracy.GENESIS_1,
                                                                            add_special_tokens=False).ids
    windows = accuracy.windows(ids, bos=1, length=256)
    target = accuracy.targets(windows)
    variants = {"f32": {}, "int8 (g128, sym)": {"quantize": "int8"}, "int4 (g128, sym)": {"quantize": "int4"},
                "int4 (g32, asym)": {"quantize": "int4", "group_size": 32, "symmetric": False},
                "int8 (g128, sym), lm_head too": {"quantize": "int8", "keep_float": "embed"},
                "int4 (g128, sym), lm_head too": {"quantize": "int4", "keep_float": "embed"},
                "int4 (g128, sym), --lm-head int8": {"quantize": "int4", "lm_head": "int8"},
                "w8a8 (two planes on down_proj)": {"quantize": "w8a8"},
                "w4a8 (g128, int8 activation groups)": {"quantize": "w4a8"},
                "w4a16 (g128, int16 activations)": {"quantize": "w4a16"},
                "f16": {"dtype": "f16"}, "bf16": {"dtype": "bf16"}}
    logits = {}
    for name, kw in variants.items():
        art = tmp / re.sub(r"\W+", "_", name)
        compile_checkpoint(CompileOptions(DEFAULT_MODEL, art, opt_level=3, **kw), progress=None)
        logits[name] = accuracy.teacher_forced(accuracy.engine_steps(art, num_pages=17), windows)
        print(f"accuracy: {name} done", flush=True)
    ref = logits["f32"]
    lines = [f"Trained default model (1.25M parameters), compiled artifacts (-O3, llvm-cpu), teacher-forced over "
             f"Genesis 1 (KJV): {len(target)} next-token predictions in {len(windows)} windows of up to 256 tokens. "
             "Agreement: share of positions whose top-1 token equals the f32 artifact's.", "",
             "| weights | top-1 agreement with f32 | perplexity | delta vs f32 |", "|---|---|---|---|"]
    for name, lg in logits.items():
        s = accuracy.compare(ref, lg, target)
        lines.append(f"| {name} | {100 * s.agreement:.2f} % | {s.perplexity:.3f} | {s.perplexity_delta:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(PRESETS), default="1b")
    ap.add_argument("--precisions", default="f32,f16,int8,int4,w8a8,w4a8,w4a16")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--accuracy", action="store_true", help="also measure the trained model's accuracy")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed benchmark")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--workdir", type=Path, help="where checkpoint and artifacts go (default: a temporary dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        if not args.no_speed:
            table = speed(args, Path(tmp))
            print(table, flush=True)
            if args.write_docs:
                write_doc_section(DOC, f"speed-{args.size}", table)
        if args.accuracy:
            table = accuracy_table(Path(tmp))
            print(table, flush=True)
            if args.write_docs:
                write_doc_section(DOC, "accuracy", table)
        print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
