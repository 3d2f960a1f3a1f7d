"""Measure a compiled artifact: time to first token, prefill and decode throughput, memory.

Timings go through the same Engine calls `llmirc run` makes (device pool in place,
block tables from a PagePool), after warm-up calls, repeated; each figure is the median
with the min/max spread. Decode is timed as steps of a running batch: tokens/s is
batch / step time.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .engine import Engine
from .page_pool import PagePool


@dataclass
class Stat:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, xs: list[float]) -> "Stat":
        return cls(statistics.median(xs), min(xs), max(xs))


@dataclass
class DecodePoint:
    batch: int
    step_ms: Stat
    tokens_per_s: float


@dataclass
class BenchReport:
    artifact: str
    target: str
    opt_level: int
    prompt_len: int
    ttft_ms: Stat
    prefill_tokens_per_s: float
    decode: list[DecodePoint] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    pool_pages: int = 0
    pool_pages_used: int = 0
    pool_mib: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _tables(pool: PagePool, batch: int, tokens: int) -> tuple[np.ndarray, list[list[int]]]:
    pages = [pool.allocate(pool.pages_for(tokens)) for _ in range(batch)]
    return np.array(pages, np.int64), pages


def bench_artifact(artifact: Path, prompt_len: int = 128, decode_steps: int = 32, batches: tuple[int, ...] = (1,),
                   reps: int = 5, warmup: int = 1, num_pages: int | None = None, device: str | None = None) -> BenchReport:
    """Benchmark `artifact` (see the module docstring). Prompt tokens are fixed, non-special ids."""
    longest = prompt_len + decode_steps + warmup + 1
    engine = Engine(artifact, num_pages=num_pages, device=device)  # default pool: 8 full-length sequences
    pool = PagePool(engine.num_pages, engine.page_size)
    if longest > engine.max_seq_len:
        raise ValueError(f"prompt {prompt_len} + {decode_steps} steps exceed the model's {engine.max_seq_len}")
    vocab = engine.vocab_size
    prompt = (np.arange(prompt_len, dtype=np.int64) * 7 + 3) % max(vocab - 3, 1) + 3

    # Time to first token and prefill throughput: batch 1, a fresh sequence each repetition.
    ttft = []
    for i in range(warmup + reps):
        table, pages = _tables(pool, 1, prompt_len)
        t0 = time.perf_counter()
        logits = engine.prefill(prompt[None], np.array([prompt_len], np.int64), table)
        int(logits[0].argmax())
        if i >= warmup:
            ttft.append(time.perf_counter() - t0)
        for p in pages:
            pool.release(p)
    ttft_stat = Stat.of([t * 1e3 for t in ttft])
    report = BenchReport(str(artifact), f"{engine.manifest.target.name}:{engine.manifest.target.variant}",
                         engine.manifest.opt_level, prompt_len, ttft_stat,
                         prefill_tokens_per_s=prompt_len / (ttft_stat.median / 1e3))

    used = 0
    for batch in batches:
        table, pages = _tables(pool, batch, prompt_len + decode_steps + warmup)
        used = max(used, sum(map(len, pages)))
        logits = engine.prefill(np.repeat(prompt[None], batch, 0), np.full(batch, prompt_len, np.int64), table)
        pos = np.full(batch, prompt_len, np.int64)
        steps = []
        for i in range(warmup + decode_steps):
            nxt = logits.argmax(-1).astype(np.int64)
            t0 = time.perf_counter()
            logits = engine.decode(nxt, pos, table)
            if i >= warmup:
                steps.append((time.perf_counter() - t0) * 1e3)
            pos += 1
        st = Stat.of(steps)
        report.decode.append(DecodePoint(batch, st, batch / (st.median / 1e3)))
        for p in pages:
            pool.release(p)
    report.pool_pages, report.pool_pages_used = engine.num_pages, used
    report.pool_mib = float(np.prod(engine.pool_shape)) * np.dtype(np.float32).itemsize / 2**20
    report.peak_rss_mib = _peak_rss_mib()
    return report


def format_report(r: BenchReport) -> str:
    lines = [f"artifact    {r.artifact} ({r.target}, -O{r.opt_level})",
             f"TTFT        {r.ttft_ms.median:.2f} ms (min {r.ttft_ms.min:.2f}, max {r.ttft_ms.max:.2f}) "
             f"for a {r.prompt_len}-token prompt",
             f"prefill     {r.prefill_tokens_per_s:.1f} tokens/s"]
    for d in r.decode:
        lines.append(f"decode b={d.batch:<3} {d.tokens_per_s:.2f} tokens/s (step {d.step_ms.median:.2f} ms, "
                     f"min {d.step_ms.min:.2f}, max {d.step_ms.max:.2f})")
    lines.append(f"memory      peak RSS {r.peak_rss_mib:.0f} MiB; pool {r.pool_pages} pages ({r.pool_mib:.1f} MiB), "
                 f"at most {r.pool_pages_used} in use")
    return "\n".join(lines)


class StepTimer:
    """Batch-1 prefill of `prompt` tokens then `steps` greedy decode steps, one artifact.

    Benchmarks that compare artifacts (O-levels, weight precisions) call `run_once` on each
    in turn, repetition by repetition, so background load hits every artifact alike.
    """

    def __init__(self, artifact: Path, prompt: int, steps: int):
        t0 = time.perf_counter()
        self.engine = Engine(artifact, num_pages=2 + (prompt + steps) // 16 + 1, verify_checksums=False)
        self.load_s = time.perf_counter() - t0
        self.prompt, self.steps = prompt, steps
        pages = -(-(prompt + steps) // self.engine.page_size)
        self.table = np.arange(1, 1 + pages, dtype=np.int64)[None]
        self.prefill_s: list[float] = []
        self.decode_s: list[float] = []  # one entry per step

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

    def clear(self) -> None:
        self.prefill_s.clear()
        self.decode_s.clear()

    def prefill_tokens_per_s(self) -> float:
        return self.prompt / statistics.median(self.prefill_s)

    def decode_tokens_per_s(self) -> float:
        return 1 / statistics.median(self.decode_s)


def round_robin(timers: dict, reps: int) -> None:
    """One warm-up pass, then `reps` passes over every timer in turn."""
    for t in timers.values():
        t.run_once()
        t.clear()
    for _ in range(reps):
        for t in timers.values():
            t.run_once()
