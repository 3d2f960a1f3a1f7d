"""End-to-end check of GPU target artifacts on a machine that has the GPU.

    # everything on the GPU machine (iree-compile needs no GPU):
    python benchmarks/gpu_target_check.py --targets cuda:sm_80,cuda:sm_90
    # or compile here, carry out/gpu-check to the GPU machine, run there:
    python benchmarks/gpu_target_check.py --compile-only --out out/gpu-check
    python benchmarks/gpu_target_check.py --run-only --out out/gpu-check [--device cuda://0]

Builds the tiny random-weight test checkpoint (tests/conftest.py TINY), compiles it for
cpu:host (the reference, whose tokens tests/e2e match against transformers) and for each
--targets profile, then runs every artifact on its manifest driver (or --device): greedy
tokens of 3 prompts x 32 new tokens must equal the CPU artifact's (and transformers' when
torch is installed), and prefill/decode logits must agree within 1e-3. Prints one JSON
report (compile seconds, max logit difference, median decode-step ms) and exits 1 on any
mismatch or error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

PROMPTS = [[1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8], [1, 250, 3], [1, 44, 45, 46, 47, 48]]
NEW_TOKENS = 32
REFERENCE = "cpu:haswell"  # portable x86-64 AVX2 code: runs on the GPU machine's CPU too


def build(out: Path, targets: list[str]) -> dict:
    from llmirc.compiler import CompileOptions, compile_checkpoint
    from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

    spec = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=300, max_seq_len=128,
                          seed=0)
    ckpt = out / "ckpt"
    if not (ckpt / "config.json").is_file():
        make_checkpoint(ckpt, spec)
    seconds = {}
    for target in [REFERENCE] + targets:
        t = time.perf_counter()
        compile_checkpoint(CompileOptions(ckpt, out / target.replace(":", "-"), target=target), progress=None)
        seconds[target] = round(time.perf_counter() - t, 1)
        print(f"compiled {target} in {seconds[target]} s", file=sys.stderr, flush=True)
    (out / "targets.json").write_text(json.dumps({"targets": targets, "compile_seconds": seconds}))
    return seconds


def _greedy(engine) -> list[list[int]]:
    from llmirc.runtime import LLMEngine, SamplingParams, SchedulerConfig

    llm = LLMEngine(engine, SchedulerConfig())
    for i, p in enumerate(PROMPTS):
        llm.add_request(str(i), list(p), SamplingParams(max_tokens=NEW_TOKENS, stop_token_ids=()))
    outs: list[list[int]] = [[] for _ in PROMPTS]
    while llm.has_unfinished_requests():
        for out in llm.step():
            outs[int(out.request_id)] = out.outputs[0].token_ids
    return outs


def _probe(engine) -> tuple[np.ndarray, np.ndarray, float]:
    """Prefill + decode logits on fixed inputs, and the median decode-step time (ms)."""
    tokens, lens, tables = np.array([[1, 5, 9, 13], [1, 2, 0, 0]]), np.array([4, 2]), np.array([[1], [2]])
    pre = engine.prefill(tokens, lens, tables)
    dec = engine.decode(np.array([7, 3]), np.array([4, 2]), tables)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        engine.decode(np.array([7, 3]), np.array([4, 2]), tables)
        times.append((time.perf_counter() - t) * 1e3)
    return pre, dec, statistics.median(times)


def run(out: Path, device: str | None) -> dict:
    from llmirc.runtime import Engine

    info = json.loads((out / "targets.json").read_text())
    ref_engine = Engine(out / REFERENCE.replace(":", "-"), num_pages=33)
    ref_tokens = _greedy(ref_engine)
    ref_pre, ref_dec, ref_ms = _probe(Engine(out / REFERENCE.replace(":", "-"), num_pages=33))
    report = {"reference": {"target": REFERENCE, "decode_ms": round(ref_ms, 3)}, "targets": {}, "ok": True}
    try:
        from tests.reference import hf_greedy, hf_model

        hf = hf_model(out / "ckpt")
        report["reference"]["matches_transformers"] = [hf_greedy(hf, p, NEW_TOKENS)[0] for p in PROMPTS] == ref_tokens
    except ImportError as e:
        report["reference"]["matches_transformers"] = f"not checked ({e})"
    for target in info["targets"]:
        art = out / target.replace(":", "-")
        row: dict = {"compile_seconds": info["compile_seconds"].get(target)}
        try:
            engine = Engine(art, num_pages=None if "tpu" in target else 33, device=device)
            row["device"] = engine.device_uri
            row["same_greedy_tokens"] = _greedy(engine) == ref_tokens
            pre, dec, ms = _probe(Engine(art, num_pages=None if "tpu" in target else 33, device=device))
            row["max_logit_diff"] = float(max(np.abs(pre - ref_pre).max(), np.abs(dec - ref_dec).max()))
            row["decode_ms"] = round(ms, 3)
            row["ok"] = row["same_greedy_tokens"] and row["max_logit_diff"] < 1e-3
        except Exception as e:  # report every target, even when one fails
            row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        report["targets"][target] = row
        report["ok"] &= row["ok"]
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="cuda:sm_80,cuda:sm_90", help="comma-separated target profiles")
    ap.add_argument("--out", type=Path, default=Path("out/gpu-check"))
    ap.add_argument("--device", help="runtime device override (default: each manifest's driver), e.g. cuda://0")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--run-only", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.run_only:
        build(args.out, [t for t in args.targets.split(",") if t])
    if args.compile_only:
        return 0
    report = run(args.out, args.device)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
