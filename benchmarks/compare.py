"""llmirc vs Hugging Face transformers (eager, torch CPU) vs the hardware limit, side by side.

    .venv/bin/pip install -q -e '.[test,bench]'
    .venv/bin/python benchmarks/compare.py              # ~100M and ~1B models, writes docs/performance.md
    .venv/bin/python benchmarks/compare.py --sizes small --no-docs   # a one-minute smoke run

For each model size (random weights, fixed seed, made offline) it measures, in this one
process and with the same thread count for everyone:
- the roofline (llmirc/runtime/roofline.py): streaming-read bandwidth (the faster of numpy
  sums on all threads and a BLAS gemv) -> decode bound batch * bandwidth / bytes read per
  step (every weight but the embedding table); sgemm -> prefill bound sgemm / (2 * params);
- llmirc at -O0 and -O3 through the runtime Engine (llmirc.runtime.bench);
- transformers LlamaForCausalLM, eager attention, KV cache, torch.set_num_threads(threads).
It prints ratios (llmirc / transformers, llmirc / roofline) and writes docs/performance.md
with the table and docs/performance-decode.png (decode tok/s vs batch, roofline as a line).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.runtime import roofline
from llmirc.runtime.bench import bench_artifact
from llmirc.testing.checkpoints import PRESETS, make_large_checkpoint, n_params

from docs_section import ROOT, write_doc_section

WARMUP_STEPS = 3  # torch's first decode steps at a new batch size are several times slower
BATCHES = {"small": (1, 2, 4, 8), "100m": (1, 2, 4, 8), "1b": (1, 4)}


# ---- transformers ------------------------------------------------------------------------

def hf_bench(ckpt: Path, prompt_len: int, steps: int, batches, reps: int, threads: int) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32, attn_implementation="eager").eval()
    prompt = (torch.arange(prompt_len) * 7 + 3) % (model.config.vocab_size - 3) + 3
    out: dict = {"prefill_ms": [], "decode": {}}
    with torch.no_grad():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            model(prompt[None], use_cache=True)
            if i:
                out["prefill_ms"].append((time.perf_counter() - t0) * 1e3)
        for b in batches:
            res = model(prompt[None].repeat(b, 1), use_cache=True)
            cache, nxt = res.past_key_values, res.logits[:, -1].argmax(-1, keepdim=True)
            times = []
            for i in range(steps + WARMUP_STEPS):
                t0 = time.perf_counter()
                res = model(nxt, past_key_values=cache, use_cache=True)
                cache, nxt = res.past_key_values, res.logits[:, -1].argmax(-1, keepdim=True)
                if i >= WARMUP_STEPS:
                    times.append((time.perf_counter() - t0) * 1e3)
            out["decode"][b] = statistics.median(times)
    del model
    return out


# ---- driver ------------------------------------------------------------------------------

@dataclass
class Row:
    size: str
    params: int
    weight_bytes: int
    compile_s: dict = field(default_factory=dict)
    artifact_mib: dict = field(default_factory=dict)
    llmirc: dict = field(default_factory=dict)  # level -> BenchReport dict
    hf: dict = field(default_factory=dict)


def run_size(size: str, args, tmp: Path) -> Row:
    spec = PRESETS[size]
    t0 = time.perf_counter()
    ckpt = make_large_checkpoint(tmp / size / "ckpt", spec)
    print(f"[{size}] checkpoint in {time.perf_counter() - t0:.0f} s", flush=True)
    # decode reads every weight but the embedding table (one row of it)
    row = Row(size, n_params(spec), 4 * (n_params(spec) - spec.vocab * spec.hidden))
    for level in args.levels:
        art = tmp / size / f"O{level}"
        t0 = time.perf_counter()
        compile_checkpoint(CompileOptions(ckpt, art, opt_level=level), progress=None)
        row.compile_s[level] = time.perf_counter() - t0
        row.artifact_mib[level] = {p.name: p.stat().st_size / 2**20 for p in art.iterdir()}
        rep = bench_artifact(art, args.prompt, args.steps, BATCHES[size], args.reps)
        row.llmirc[level] = rep.to_dict()
        print(f"[{size}] -O{level}: compile {row.compile_s[level]:.0f} s, prefill {rep.prefill_tokens_per_s:.1f} "
              f"tok/s, decode " + ", ".join(f"b{d.batch} {d.tokens_per_s:.2f}" for d in rep.decode), flush=True)
    row.hf = hf_bench(ckpt, args.prompt, args.steps, BATCHES[size], args.reps, args.threads)
    print(f"[{size}] transformers: prefill {statistics.median(row.hf['prefill_ms']):.1f} ms, decode "
          + ", ".join(f"b{b} {ms:.1f} ms" for b, ms in row.hf["decode"].items()), flush=True)
    return row


def table(rows: list[Row], roof: roofline.Roofline, args) -> str:
    out = [f"Machine: {os.cpu_count()} cores; measured {roof.describe()} "
           f"(numpy, {args.threads} threads). f32 weights, batch-1 prefill of {args.prompt} tokens, decode steps "
           f"at context {args.prompt}..{args.prompt + args.steps}; medians. transformers: eager attention, "
           f"KV cache, torch threads = {args.threads}.", "",
           "| model | system | prefill tok/s | decode tok/s (batch: value) | decode b1 / roofline | "
           "decode b1 / transformers | prefill / transformers |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        roof_dec = roof.decode_tokens_per_s(r.weight_bytes)
        roof_pre = roof.prefill_tokens_per_s(r.params)
        hf_pre = args.prompt / (statistics.median(r.hf["prefill_ms"]) / 1e3)
        hf_dec = {b: b / (ms / 1e3) for b, ms in r.hf["decode"].items()}
        name = f"{r.size} ({r.params / 1e6:.0f}M)"
        for level in args.levels:
            rep = r.llmirc[level]
            dec = {d["batch"]: d["tokens_per_s"] for d in rep["decode"]}
            out.append(f"| {name} | llmirc -O{level} | {rep['prefill_tokens_per_s']:.1f} | "
                       + ", ".join(f"{b}: {v:.2f}" for b, v in dec.items())
                       + f" | {dec[1] / roof_dec:.2f} | {dec[1] / hf_dec[1]:.2f} | "
                       f"{rep['prefill_tokens_per_s'] / hf_pre:.2f} |")
        out.append(f"| {name} | transformers | {hf_pre:.1f} | " + ", ".join(f"{b}: {v:.2f}" for b, v in hf_dec.items())
                   + f" | {hf_dec[1] / roof_dec:.2f} | 1.00 | 1.00 |")
        out.append(f"| {name} | roofline | {roof_pre:.1f} | "
                   + ", ".join(f"{b}: {min(b * roof_dec, roof_pre):.2f}" for b in hf_dec) + " | 1.00 | | |")
    out += ["", "Compile time and artifact size (weights external in model.irpa):", "",
            "| model | level | compile s | model.vmfb MiB | model.irpa MiB |", "|---|---|---|---|---|"]
    for r in rows:
        for level in args.levels:
            files = r.artifact_mib[level]
            out.append(f"| {r.size} | -O{level} | {r.compile_s[level]:.1f} | {files.get('model.vmfb', 0):.2f} | "
                       f"{files.get('model.irpa', 0):.1f} |")
    return "\n".join(out)


def plot(rows: list[Row], roof: roofline.Roofline, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4.5), squeeze=False)
    for ax, r in zip(axes[0], rows):
        bs = sorted(r.hf["decode"])
        for level in args.levels:
            dec = {d["batch"]: d["tokens_per_s"] for d in r.llmirc[level]["decode"]}
            ax.plot(bs, [dec[b] for b in bs], "o-", label=f"llmirc -O{level}")
        ax.plot(bs, [b / (r.hf["decode"][b] / 1e3) for b in bs], "s-", label="transformers (eager)")
        ax.plot(bs, [roof.decode_tokens_per_s(r.weight_bytes, b, r.params) for b in bs], "k--", label="roofline")
        ax.set(title=f"{r.size} ({r.params / 1e6:.0f}M params, f32)", xlabel="batch size", ylabel="decode tokens/s",
               xscale="log", yscale="log")
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.minorticks_off()
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100m,1b")
    ap.add_argument("--levels", default="0,3")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    roof = roofline.measure(args.threads)
    print(f"roofline inputs: {roof.describe()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            rows.append(run_size(size, args, Path(tmp)))
    text = table(rows, roof, args)
    print(text)
    if not args.no_docs:
        (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
        (ROOT / "benchmarks" / "results" / "compare.json").write_text(json.dumps(
            {"roofline": roof.__dict__, "rows": [r.__dict__ for r in rows]}, indent=1, default=str))
        plot(rows, roof, args, ROOT / "docs" / "performance-decode.png")
        write_doc_section(ROOT / "docs" / "performance.md", "compare", text)
        print("wrote docs/performance.md, docs/performance-decode.png, benchmarks/results/compare.json")


if __name__ == "__main__":
    main()
