"""Generator: run several prompts through an Engine and stream the sampled tokens.

The schedule is the simplest one that never fails half-way:

    admit  - take waiting prompts in order while the pool can cover their worst case
             (prompt + max_tokens, capped by max_seq_len); pages for the prompt are
             allocated now, the rest is promised and allocated one page at a time.
    prefill - all newly admitted prompts in one batch (padded to the longest).
    decode - one step for every running sequence, growing block tables as needed.
    finish - a stop token, a stop string (the caller's `text_stop`), max_tokens or
             max_seq_len ends a sequence; its pages go back to the pool at once, so
             waiting prompts can be admitted.

Because growth is promised at admission, a running sequence never finds the pool empty;
a prompt whose worst case exceeds the whole pool is refused up front with
PoolExhaustedError. Preemption (swapping sequences out to admit more) is a later step.
"""

from __future__ import annotations

from collections import deque
import time
from collections.abc import Callable, Iterator, Sequence as Seq
from dataclasses import dataclass

import numpy as np

from llmirc.errors import LlmircError, PoolExhaustedError, PromptTooLongError

from .engine import Engine
from .page_pool import PagePool
from .sampling import SamplingParams, sample
from .sequence import Sequence, block_tables


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token of prompt `seq_index`; `finish_reason` is set on its last token."""

    seq_index: int
    token_id: int
    finish_reason: str | None = None


@dataclass
class GenerationStats:
    """What one `generate` call did, for `llmirc run`'s summary line: token counts, time to
    the first sampled token (prefill of the first batch) and generated tokens per second
    over the whole call (prefill included)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float | None = None
    elapsed_s: float = 0.0

    @property
    def tokens_per_s(self) -> float | None:
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 and self.generated_tokens else None

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "ttft_s": self.ttft_s, "elapsed_s": self.elapsed_s, "tokens_per_s": self.tokens_per_s}


# Called with (prompt index, token id) for every sampled token; True ends that sequence with
# finish_reason "stop" (stop strings: the caller holds the detokenizer, see runtime/stop.py).
TextStop = Callable[[int, int], bool]


class Generator:
    """Drives `engine` with pages from `pool` (a fresh PagePool over the engine's pool if None).

    One `generate` call at a time per Generator: the page promises are per instance.
    """

    def __init__(self, engine: Engine, pool: PagePool | None = None) -> None:
        self.engine = engine
        self.pool = pool if pool is not None else PagePool(engine.num_pages, engine.page_size)
        if (self.pool.num_pages, self.pool.page_size) != (engine.num_pages, engine.page_size):
            raise ValueError(f"PagePool({self.pool.num_pages}, {self.pool.page_size}) does not match the engine's "
                             f"device pool ({engine.num_pages} pages of {engine.page_size})")
        self._promised = 0  # pages promised to running sequences but not yet allocated
        self.stats = GenerationStats()  # of the latest generate call, complete once it is consumed
        self._text_stop: TextStop | None = None
        self._t0 = 0.0

    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams,
                 text_stop: TextStop | None = None) -> Iterator[TokenEvent]:
        """Validate every prompt now (errors are raised here, not on the first `next`), then
        return an iterator of TokenEvents in the order tokens are produced."""
        seqs = [Sequence(i, [int(t) for t in p]) for i, p in enumerate(prompts)]
        for s in seqs:
            self._check_prompt(s, params)
        stop_ids = frozenset(self.engine.manifest.model.eos_token_id if params.stop_token_ids is None
                             else params.stop_token_ids)
        self._text_stop = text_stop
        self.stats = GenerationStats(prompt_tokens=sum(len(s.prompt_ids) for s in seqs))
        return self._run(seqs, params, stop_ids)

    def _run(self, seqs: list[Sequence], params: SamplingParams, stop_ids: frozenset[int]) -> Iterator[TokenEvent]:
        rng = np.random.default_rng(params.seed)
        self._t0 = t0 = time.perf_counter()
        waiting: deque[Sequence] = deque(seqs)
        running: list[Sequence] = []
        try:
            while waiting or running:
                admitted = self._admit(waiting, params)
                if admitted:
                    running += admitted
                    yield from self._prefill(admitted, params, stop_ids, rng)
                elif not running:  # only when someone else holds pages of this pool
                    raise PoolExhaustedError(
                        f"prompt {waiting[0].id} needs {self._worst_case_pages(waiting[0], params)} KV pages but only "
                        f"{self.pool.free_pages - self._promised} are free; raise --num-pages (now "
                        f"{self.pool.num_pages})")
                running = self._retire(running)
                if running:
                    yield from self._decode_step(running, params, stop_ids, rng)
                    running = self._retire(running)
        finally:  # also on error or when the consumer stops iterating early
            self.stats.elapsed_s = time.perf_counter() - t0
            for s in running:
                self._free(s)

    def _admit(self, waiting: deque[Sequence], params: SamplingParams) -> list[Sequence]:
        admitted = []
        while waiting:
            s = waiting[0]
            worst = self._worst_case_pages(s, params)
            if self.pool.free_pages - self._promised < worst:
                break
            waiting.popleft()
            s.block_table = self.pool.allocate(self.pool.pages_for(len(s.prompt_ids)))
            s.max_pages = worst
            self._promised += worst - len(s.block_table)
            admitted.append(s)
        return admitted

    def _prefill(self, seqs: list[Sequence], params: SamplingParams, stop_ids: frozenset[int],
                 rng: np.random.Generator) -> Iterator[TokenEvent]:
        lens = np.array([len(s.prompt_ids) for s in seqs], dtype=np.int64)
        tokens = np.zeros((len(seqs), int(lens.max())), dtype=np.int64)
        for row, s in zip(tokens, seqs):
            row[: len(s.prompt_ids)] = s.prompt_ids
        logits = self.engine.prefill(tokens, lens, block_tables(seqs))
        for s in seqs:
            s.cached_len = len(s.prompt_ids)
        yield from self._take(seqs, self._sample(logits, seqs, params, rng), params, stop_ids)

    def _decode_step(self, seqs: list[Sequence], params: SamplingParams, stop_ids: frozenset[int],
                     rng: np.random.Generator) -> Iterator[TokenEvent]:
        for s in seqs:
            if s.cached_len == len(s.block_table) * self.pool.page_size:
                s.block_table += self.pool.allocate(1)  # always succeeds: it was promised
                self._promised -= 1
        tokens = np.array([s.generated_ids[-1] for s in seqs], dtype=np.int64)
        positions = np.array([s.cached_len for s in seqs], dtype=np.int64)
        logits = self.engine.decode(tokens, positions, block_tables(seqs))
        for s in seqs:
            s.cached_len += 1
        yield from self._take(seqs, self._sample(logits, seqs, params, rng), params, stop_ids)

    def _sample(self, logits: np.ndarray, seqs: list[Sequence], params: SamplingParams,
                rng: np.random.Generator) -> np.ndarray:
        seen = [s.token_ids for s in seqs] if params.repetition_penalty != 1.0 else None
        ids = sample(logits, params, rng, seen)
        if self.stats.ttft_s is None:
            self.stats.ttft_s = time.perf_counter() - self._t0
        return ids

    def _take(self, seqs: list[Sequence], next_ids: np.ndarray, params: SamplingParams,
              stop_ids: frozenset[int]) -> Iterator[TokenEvent]:
        """Append each sampled token, decide whether its sequence is done, and emit it."""
        for s, token in zip(seqs, next_ids.tolist()):
            s.generated_ids.append(token)
            self.stats.generated_tokens += 1
            if token in stop_ids:
                s.finish_reason = "stop"
            elif self._text_stop is not None and self._text_stop(s.id, token):
                s.finish_reason = "stop"
            elif len(s.generated_ids) >= params.max_tokens or s.length >= self.engine.max_seq_len:
                s.finish_reason = "length"
        for s in seqs:  # free finished pages before the consumer sees the events
            if s.finished:
                self._free(s)
        for s in seqs:
            yield TokenEvent(s.id, s.generated_ids[-1], s.finish_reason)

    def _retire(self, running: list[Sequence]) -> list[Sequence]:
        return [s for s in running if not s.finished]

    def _free(self, s: Sequence) -> None:
        if s.block_table:
            self._promised -= s.max_pages - len(s.block_table)
            self.pool.release(s.block_table)
            s.block_table = []

    def _worst_case_pages(self, s: Sequence, params: SamplingParams) -> int:
        """Pages the sequence may ever hold: every token but the last sampled one is cached."""
        n = len(s.prompt_ids)
        new_tokens = min(params.max_tokens, max(1, self.engine.max_seq_len - n))
        return self.pool.pages_for(n + new_tokens - 1)

    def _check_prompt(self, s: Sequence, params: SamplingParams) -> None:
        n, limit = len(s.prompt_ids), self.engine.max_seq_len
        if n == 0:
            raise LlmircError(f"prompt {s.id} is empty; give at least one token")
        if n > limit:
            raise PromptTooLongError(f"prompt {s.id} has {n} tokens but the model's max_seq_len is {limit}; "
                                     "shorten the prompt")
        longest = getattr(self.engine, "max_prefill_len", limit)  # static-shape targets: compiled buckets
        if n > longest:
            raise PromptTooLongError(f"prompt {s.id} has {n} tokens but the longest compiled prefill bucket of this "
                                     f"artifact is {longest} tokens; shorten the prompt or recompile with "
                                     f"--buckets len=...,{n}")
        bad = [t for t in s.prompt_ids if not 0 <= t < self.engine.vocab_size]
        if bad:
            raise LlmircError(f"prompt {s.id} has token id {bad[0]} outside the vocabulary "
                              f"(0..{self.engine.vocab_size - 1})")
        worst = self._worst_case_pages(s, params)
        if worst > self.pool.capacity:
            raise PoolExhaustedError(
                f"prompt {s.id} needs up to {worst} KV pages ({n} prompt tokens + up to {params.max_tokens} new, "
                f"{self.pool.page_size} tokens a page) but the pool has only {self.pool.capacity}; "
                f"raise --num-pages (now {self.pool.num_pages}) or lower max_tokens")
