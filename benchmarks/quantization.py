"""Artifact size, decode and prefill tokens/s of one Llama with f32, f16, int8 and int4 weights.

    .venv/bin/python benchmarks/quantization.py                 # ~1.1B parameters (TinyLlama's shape)
    .venv/bin/python benchmarks/quantization.py --size small    # a minute, for a smoke run
    .venv/bin/python benchmarks/quantization.py --accuracy      # + f32/int8/int4 accuracy of the trained model
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
import concurrent.futures
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.runtime import Engine
from llmirc.testing.checkpoints import CheckpointSpec, _config, write_tokenizer
from llmirc.frontend.llama import weight_shapes

SIZES = {
    # TinyLlama-1.1B's shape: 22 layers x 44.0M + 2 x 65.5M embeddings/head = 1.10B parameters
    "1b": CheckpointSpec(layers=22, hidden=2048, heads=32, kv_heads=4, intermediate=5632, vocab=32000,
                         max_seq_len=512, seed=0),
    "small": CheckpointSpec(layers=4, hidden=512, heads=8, kv_heads=4, intermediate=1408, vocab=4096,
                            max_seq_len=256, seed=0),
}
PRECISIONS = {"f32": {}, "f16": {"dtype": "f16"}, "int8": {"quantize": "int8"}, "int4": {"quantize": "int4"}}
DOC = Path(__file__).resolve().parent.parent / "docs" / "quantization.md"


def n_params(spec: CheckpointSpec) -> int:
    return sum(int(np.prod(s)) for s in weight_shapes(_config(spec)).values())


def write_checkpoint(directory: Path, spec: CheckpointSpec) -> Path:
    """model.safetensors written one tensor at a time (normal(0, 0.02) matrices, norms near 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    shapes = weight_shapes(_config(spec))
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(spec.seed)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                w = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            else:
                w = rng.standard_normal(shape, dtype=np.float32)
                w *= np.float32(0.02)
            f.write(np.ascontiguousarray(w, np.float32).tobytes())
            del w
    (directory / "config.json").write_text(json.dumps(spec.hf_config(), indent=2))
    write_tokenizer(directory, spec.vocab)
    return directory


def read_bandwidth(nbytes: int = 1 << 30, threads: int = 2, reps: int = 5) -> tuple[float, float]:
    """Streaming-read bandwidth in bytes/s over a 1 GiB f32 buffer, best of `reps`, two ways:
    `threads` numpy sums over parts of it, and a matrix-vector product (BLAS, its own threads)."""
    a = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(a, threads)
    best_sum = best_gemv = float("inf")
    matrix, v = a.reshape(-1, 4096), np.ones(4096, np.float32)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best_sum = min(best_sum, time.perf_counter() - t0)
            t0 = time.perf_counter()
            matrix @ v
            best_gemv = min(best_gemv, time.perf_counter() - t0)
    return a.nbytes / best_sum, a.nbytes / best_gemv


def decode_bytes(artifact: Path) -> int:
    """Bytes of the parameters one decode step reads: all but the embedding table."""
    from llmirc.artifacts.params import read_params

    return sum(a.nbytes for name, a in read_params(artifact / "model.irpa").items()
               if not name.startswith("model.embed_tokens.weight"))


class Timer:
    def __init__(self, artifact: Path, prompt: int, steps: int):
        t0 = time.perf_counter()
        self.engine = Engine(artifact, num_pages=2 + (prompt + steps) // 16 + 1, verify_checksums=False)
        self.load_s = time.perf_counter() - t0
        self.prompt, self.steps = prompt, steps
        pages = -(-(prompt + steps) // self.engine.page_size)
        self.table = np.arange(1, 1 + pages, dtype=np.int64)[None]
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []

    def run_once(self) -> None:
        tokens = (np.arange(3, 3 + self.prompt, dtype=np.int64) % 1000)[None]
        t0 = time.perf_counter()
        logits = self.engine.prefill(tokens, np.array([self.prompt], np.int64), self.table)
        self.prefill_s.append(time.perf_counter() - t0)
        pos = np.array([self.prompt], np.int64)
        for _ in range(self.steps):
            t0 = time.perf_counter()
            logits = self.engine.decode(logits.argmax(-1).astype(np.int64), pos, self.table)
            self.decode_s.append(time.perf_counter() - t0)
            pos += 1


def speed(args, tmp: Path) -> str:
    spec = SIZES[args.size]
    t0 = time.perf_counter()
    ckpt = write_checkpoint(tmp / "ckpt", spec)
    print(f"wrote a {n_params(spec) / 1e9:.2f}B-parameter checkpoint in {time.perf_counter() - t0:.0f} s",
          flush=True)
    bw_sum, bw_gemv = read_bandwidth()
    bw = max(bw_sum, bw_gemv)
    print(f"streaming read: {bw_sum / 1e9:.1f} GB/s (numpy sum, 2 threads), {bw_gemv / 1e9:.1f} GB/s (gemv)",
          flush=True)
    rows, timers = {}, {}
    for name in args.precisions.split(","):
        t0 = time.perf_counter()
        art = tmp / name
        compile_checkpoint(CompileOptions(ckpt, art, opt_level=3, **PRECISIONS[name]), progress=None)
        compile_s = time.perf_counter() - t0
        rows[name] = {"compile_s": compile_s, "irpa": (art / "model.irpa").stat().st_size,
                      "decode_bytes": decode_bytes(art)}
        timers[name] = Timer(art, args.prompt, args.steps)
        print(f"{name}: compiled in {compile_s:.0f} s, {rows[name]['irpa'] / 1e9:.2f} GB, loaded in "
              f"{timers[name].load_s:.1f} s", flush=True)
    for t in timers.values():  # warm-up
        t.run_once()
        t.prefill_s.clear(), t.decode_s.clear()
    for _ in range(args.reps):
        for t in timers.values():
            t.run_once()
    dec = {n: 1 / statistics.median(t.decode_s) for n, t in timers.items()}
    pre = {n: args.prompt / statistics.median(t.prefill_s) for n, t in timers.items()}

    def vs_f32(values: dict, name: str) -> str:
        return f"{values[name] / values['f32']:.2f}" if "f32" in values else "-"

    size = {n: r["irpa"] for n, r in rows.items()}
    lines = [f"Random-weight Llama, {n_params(spec) / 1e9:.2f}B parameters ({spec.layers} layers, "
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
        roof = bw / r["decode_bytes"]
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


def write_doc_section(tag: str, table: str) -> None:
    text = DOC.read_text()
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    if begin not in text:
        raise SystemExit(f"{DOC} has no {begin} marker")
    head, rest = text.split(begin, 1)
    DOC.write_text(head + begin + "\n" + table + "\n" + end + rest.split(end, 1)[1])
    print(f"wrote the {tag} table into {DOC}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="1b")
    ap.add_argument("--precisions", default="f32,f16,int8,int4")
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
                write_doc_section(f"speed-{args.size}", table)
        if args.accuracy:
            table = accuracy_table(Path(tmp))
            print(table, flush=True)
            if args.write_docs:
                write_doc_section("accuracy", table)
        print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
