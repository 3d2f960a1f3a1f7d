"""Per-token cost of the structured-output mask against the unconstrained engine step.

For each model (the embedded default model, 2048-token vocabulary; and a random-weight model
of the same shape with a ~32k-token byte-level BPE trained here, offline, on the Python
standard library's source) and each constraint kind (the 6-field JSON schema of
tests/e2e/test_structured_output.py, a regex, json_object), it measures, batch 1, greedy:

- the unconstrained decode step (`LLMEngine.step`, median over the decode steps of a run),
- the same run with the constraint (what the mask adds inside the engine step),
- the mask alone: `SequenceGrammar.mask` (fill the bitmask, apply it) and `consume`, replayed
  over the constrained run's tokens (medians, µs per token).

    .venv/bin/python benchmarks/structured_mask.py [--tokens 48] [--write-docs]

`--write-docs` writes the table into docs/structured-output.md (section structured-mask).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import ROOT, write_doc_section  # noqa: E402

from llmirc.runtime.llm_engine import LLMEngine  # noqa: E402
from llmirc.runtime.sampling import SamplingParams  # noqa: E402
from llmirc.runtime.structured import Constraint, GrammarCompiler  # noqa: E402
from llmirc.testing.structured import SIX_FIELD_SCHEMA as SCHEMA  # noqa: E402

KINDS = {
    "json schema (6 fields)": Constraint("json", SCHEMA),
    "regex": Constraint("regex", r"([A-Z][a-z]{2,8} [0-9]{1,3}:[0-9]{1,3}, ){0,6}[A-Z][a-z]{2,8}"),
    "json_object": Constraint("json_object"),
}
BIG_VOCAB = 32000


def compile_to(checkpoint: Path, out: Path) -> Path:
    from llmirc.compiler import CompileOptions, compile_checkpoint

    compile_checkpoint(CompileOptions(checkpoint, out), progress=None)
    return out


def stdlib_text(limit_bytes: int = 12 << 20) -> list[str]:
    """Python standard library sources: plenty of English and code, on every machine."""
    texts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        size += len(text)
        if size > limit_bytes:
            break
    return texts


def big_vocab_checkpoint(directory: Path) -> Path:
    """The default model's shape with random weights and a 32k BPE tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

    spec = CheckpointSpec(layers=4, hidden=128, heads=8, kv_heads=4, intermediate=344, vocab=BIG_VOCAB,
                          max_seq_len=256, seed=0)
    make_checkpoint(directory, spec)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BIG_VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(stdlib_text(), trainer)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def step_times(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> tuple[list[float], list[int]]:
    """(µs of each decode step, the generated ids) of one request alone in the engine."""
    engine.add_request("bench", prompt, params)
    times, tokens = [], []
    first = True
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        outs = engine.step()
        dt = (time.perf_counter() - t0) * 1e6
        if not first:
            times.append(dt)
        first = False
        for out in outs:
            tokens = list(out.outputs[0].token_ids)
    return times, tokens


def mask_times(compiler: GrammarCompiler, constraint: Constraint, tokens: list[int], vocab: int,
               repeats: int = 5) -> tuple[float, float]:
    """Median µs of mask and of consume per token, replaying `tokens` through fresh matchers."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(vocab).astype(np.float32)
    masks, consumes = [], []
    for _ in range(repeats):
        g = compiler.compile(constraint)
        for tok in tokens:
            t0 = time.perf_counter()
            g.mask(logits)
            t1 = time.perf_counter()
            ok = g.consume(tok)
            t2 = time.perf_counter()
            masks.append((t1 - t0) * 1e6)
            consumes.append((t2 - t1) * 1e6)
            if not ok or g.done:
                break
    return statistics.median(masks), statistics.median(consumes)


def measure(name: str, artifact: Path, tokens: int) -> list[dict]:
    engine = LLMEngine.from_artifact(artifact, max_num_seqs=1)
    prompt = [1] + engine.tokenizer.encode("And God said", add_special_tokens=False).ids
    free, _ = step_times(engine, prompt, SamplingParams(max_tokens=tokens, ignore_eos=True))
    free, _ = step_times(engine, prompt, SamplingParams(max_tokens=tokens, ignore_eos=True))  # warm
    compiler = GrammarCompiler(engine.tokenizer, engine.vocab_size, engine.eos_token_ids)
    rows = []
    for kind, constraint in KINDS.items():
        step_times(engine, prompt, SamplingParams(max_tokens=tokens, structured=constraint))  # warm the compile
        constrained, out = step_times(engine, prompt, SamplingParams(max_tokens=tokens, structured=constraint))
        mask_us, consume_us = mask_times(compiler, constraint, out, engine.vocab_size)
        step_free = statistics.median(free)
        rows.append({"model": name, "vocab": engine.vocab_size, "kind": kind, "tokens": len(out),
                     "step_us": step_free, "step_constrained_us": statistics.median(constrained) if constrained
                     else float("nan"), "mask_us": mask_us, "consume_us": consume_us,
                     "share": (mask_us + consume_us) / step_free})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | vocab | constraint | tokens | unconstrained step (µs) | constrained step (µs) | "
             "added per step (µs) | mask (µs/token) | consume (µs/token) | mask + consume / step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['vocab']} | {r['kind']} | {r['tokens']} | {r['step_us']:.0f} | "
                     f"{r['step_constrained_us']:.0f} | {r['step_constrained_us'] - r['step_us']:.0f} | {r['mask_us']:.1f} | {r['consume_us']:.1f} | "
                     f"{100 * r['share']:.1f} % |")
    import platform

    lines.append("")
    lines.append(f"Batch 1, greedy, CPU ({platform.machine()}, {__import__('os').cpu_count()} cores), medians over "
                 "the decode steps of one run; mask and consume replayed 5 times over that run's tokens. "
                 "\"added per step\" is the constrained step minus the unconstrained one: the mask plus the "
                 "engine's own work around it (the -inf copy, the all-masked check, consume), and noise. The "
                 "32k model has the default model's shape with random weights (its text is noise that the "
                 "mask keeps valid) and a 32k-wide lm_head.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens per run")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    from llmirc.cli import DEFAULT_MODEL

    rows = []
    with tempfile.TemporaryDirectory(prefix="structured-mask-") as tmp:
        tmp = Path(tmp)
        rows += measure("default (KJV)", compile_to(DEFAULT_MODEL, tmp / "default"), args.tokens)
        big = big_vocab_checkpoint(tmp / "big-ckpt")
        rows += measure("random, 32k BPE", compile_to(big, tmp / "big"), args.tokens)
    text = table(rows)
    print(text)
    if args.write_docs:
        write_doc_section(ROOT / "docs" / "structured-output.md", "structured-mask", text)


if __name__ == "__main__":
    main()
