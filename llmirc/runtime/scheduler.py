"""Scheduler: which tokens of which requests the next model step computes (vLLM v1's design).

There is no prefill or decode phase. Each sequence knows how many of its tokens
(prompt + output) have K/V in the pool, `num_computed_tokens`; a step gives each running
sequence some new tokens to compute, under two limits: `max_num_batched_tokens` tokens in
all and `max_num_seqs` sequences. A long prompt is thereby computed in chunks across steps
while other sequences keep decoding one token a step. A sequence is sampled from only when
a step computes its last token.

    running first  - in admission order, each gets min(its remaining tokens, the budget
                     left); its pages are allocated as its tokens are scheduled (optimistic
                     admission: nobody reserves a worst case up front).
    preemption     - when a page cannot be had (even after evicting unreferenced cached
                     pages), the NEWEST running sequence is preempted by recompute: its pages
                     are released (its full pages stay in the prefix cache, which holds its
                     own references), num_computed_tokens goes back to 0 and it goes to the
                     FRONT of the waiting queue, so it resumes first. The oldest running
                     sequence is never preempted for a newer one, so it always progresses.
    then waiting   - if nothing was preempted this step, waiting sequences are admitted in
                     order while the budget, max_num_seqs and the pool allow; each first
                     takes the longest cached prefix of its tokens (a hit is capped at its
                     length - 1: the last token is always computed, for its logits).

It never hangs: LLMEngine refuses, at add time, a request whose worst case does not fit the
whole pool; every other one fits when it runs alone, and the oldest always runs.

Sampling, detokenizing and stop conditions live in LLMEngine; the scheduler only moves
sequences between queues and pages between the pool, the prefix cache and sequences.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from llmirc.errors import SchedulerConfigError

from .page_pool import SCRATCH_PAGE, PagePool
from .prefix_cache import PageNode, PrefixCache
from .sampling import SamplingParams


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one step. max_model_len None means the executor's max_seq_len (a smaller
    value caps every sequence); long_prefill_token_threshold > 0 caps the tokens one
    sequence gets in a step (0: only the budget caps it)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    max_model_len: int | None = None
    long_prefill_token_threshold: int = 0

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise SchedulerConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise SchedulerConfigError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise SchedulerConfigError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.long_prefill_token_threshold < 0:
            raise SchedulerConfigError(f"long_prefill_token_threshold must be >= 0 (0 = off), "
                                       f"got {self.long_prefill_token_threshold}")


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One completion of one request: its tokens, how many have K/V, and its pages.

    `index` is the completion index (0..n-1); completions i > 0 of an n > 1 request have
    `leader` = completion 0, whose prompt pages they share.
    """

    request_id: str
    index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    leader: Sequence | None = None
    num_cached_tokens: int | None = None  # prompt tokens served from the cache at the first admission
    num_preemptions: int = 0
    cache_node: PageNode | None = None  # trie node of block_table[num_cached_pages - 1]
    num_cached_pages: int = 0  # leading pages known to the prefix cache (hit or inserted)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, lo: int, hi: int) -> list[int]:
        """all_token_ids[lo:hi] without building the whole list (prompts can be long)."""
        n = len(self.prompt_token_ids)
        if hi <= n:
            return self.prompt_token_ids[lo:hi]
        if lo >= n:
            return self.output_token_ids[lo - n:hi - n]
        return self.prompt_token_ids[lo:] + self.output_token_ids[:hi - n]

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt logprobs still to compute: they need logits at every prompt position, so
        such a sequence takes no cached prefix (vLLM does the same)."""
        return self.params.prompt_logprobs is not None and self.index == 0 and not self.output_token_ids


def block_tables(seqs: list[Sequence]) -> np.ndarray:
    """The block tables of `seqs` as i64[B, P], P = the longest table (at least 1), padded
    with the scratch page (docs/abi.md)."""
    width = max([1] + [len(s.block_table) for s in seqs])
    out = np.full((len(seqs), width), SCRATCH_PAGE, np.int64)
    for row, s in zip(out, seqs):
        row[:len(s.block_table)] = s.block_table
    return out


@dataclass(frozen=True)
class ScheduledSeq:
    """`num_new_tokens` tokens of `seq` from position `start` are computed this step."""

    seq: Sequence
    start: int
    num_new_tokens: int

    @property
    def token_ids(self) -> list[int]:
        return self.seq.token_slice(self.start, self.start + self.num_new_tokens)

    @property
    def completes(self) -> bool:
        """Whether this step computes the sequence's last token (then it is sampled from)."""
        return self.start + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    """Waiting and running queues over one PagePool (and its PrefixCache when enabled)."""

    def __init__(self, config: SchedulerConfig, pool: PagePool) -> None:
        self.config = config
        self.pool = pool
        self.page_size = pool.page_size
        self.cache: PrefixCache | None = PrefixCache(pool) if config.enable_prefix_caching else None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: the newest is last
        self.num_preemptions = 0

    # ---- queues ------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Take `seq` out of its queue and release its pages (cached full pages stay cached)."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        self._free(seq)
        seq.status = Status.FINISHED

    # ---- one step ----------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's tokens: running sequences first, then (if none had to be
        preempted) waiting ones, all under the token budget."""
        out = SchedulerOutput()
        budget = self._schedule_running(self.config.max_num_batched_tokens, out)
        if not out.preempted:
            self._schedule_waiting(budget, out)
        return out

    def update(self, out: SchedulerOutput) -> None:
        """After the executor ran `out`: advance num_computed_tokens and cache the pages
        that became full."""
        for s in out.scheduled:
            s.seq.num_computed_tokens = s.start + s.num_new_tokens
            self._cache_full_pages(s.seq)

    def _schedule_running(self, budget: int, out: SchedulerOutput) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = self._num_new_tokens(seq, budget)
            if not self._make_room(seq, n, out):
                break  # `seq` itself was the newest and is preempted now
            out.scheduled.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
            i += 1
        return budget

    def _make_room(self, seq: Sequence, n: int, out: SchedulerOutput) -> bool:
        """Allocate pages for `n` more tokens of running `seq`, preempting the newest running
        sequences until it works; False if `seq` had to be preempted itself."""
        while not self._allocate(seq, seq.num_computed_tokens + n):
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _schedule_waiting(self, budget: int, out: SchedulerOutput) -> None:
        skipped: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting.popleft()
            if not self._ready(seq):
                skipped.append(seq)
                continue
            hit = self._attach_prefix(seq)
            n = self._num_new_tokens(seq, budget)
            if not self._allocate(seq, seq.num_computed_tokens + n):
                self._free(seq)  # give the prefix back; it is looked up again next time
                self.waiting.appendleft(seq)
                break
            self._admit(seq, hit)
            out.scheduled.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
        self.waiting.extendleft(reversed(skipped))  # back at the front, in their order

    def _num_new_tokens(self, seq: Sequence, budget: int) -> int:
        n = min(seq.num_tokens - seq.num_computed_tokens, budget)
        if self.config.long_prefill_token_threshold:
            n = min(n, self.config.long_prefill_token_threshold)
        return n

    def _admit(self, seq: Sequence, hit_tokens: int) -> None:
        if self.cache is not None:
            self.cache.record(seq.num_tokens, hit_tokens)
        if seq.num_cached_tokens is None:
            seq.num_cached_tokens = hit_tokens
        seq.status = Status.RUNNING
        self.running.append(seq)

    def _ready(self, seq: Sequence) -> bool:
        """Completions i > 0 wait until their leader has computed the prompt pages they can
        share (they fork its block table instead of computing the prompt again)."""
        leader = seq.leader
        if leader is None or leader.finished or seq.output_token_ids:
            return True
        shareable = self._shareable_pages(seq) * self.page_size
        return shareable == 0 or (leader.status is Status.RUNNING and leader.num_computed_tokens >= shareable)

    def _shareable_pages(self, seq: Sequence) -> int:
        """Full prompt pages a sequence may take from elsewhere (never its last token)."""
        return min(len(seq.prompt_token_ids), seq.num_tokens - 1) // self.page_size

    # ---- pages -------------------------------------------------------------------------

    def _attach_prefix(self, seq: Sequence) -> int:
        """Start `seq` (holding no pages) on the longest prefix it can share: its leader's
        prompt pages or the prefix cache's pages, whichever is longer. Returns the tokens hit."""
        pages, node = [], None
        if self.cache is not None and not seq.wants_prompt_logprobs:
            hit = self.cache.lookup(seq.all_token_ids)
            pages, node = hit.pages, hit.node
        leader = seq.leader
        if leader is not None and leader.status is Status.RUNNING:
            k = min(self._shareable_pages(seq), leader.num_computed_tokens // self.page_size, len(leader.block_table))
            if k > len(pages):
                pages, node = leader.block_table[:k], None
        self.pool.retain(pages)
        seq.block_table = list(pages)
        seq.num_computed_tokens = len(pages) * self.page_size
        seq.cache_node, seq.num_cached_pages = node, (len(pages) if node is not None else 0)
        if seq.cache_node is None and self.cache is not None and not pages:
            seq.cache_node = self.cache.root
        return seq.num_computed_tokens

    def _allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq`'s block table to hold `num_tokens` positions; False if the pool (after
        evicting unreferenced cached pages) is short."""
        need = self.pool.pages_for(num_tokens) - len(seq.block_table)
        if need <= 0:
            return True
        short = need - self.pool.free_pages
        if short > 0 and self.cache is not None:
            self.cache.evict(short)
        if need > self.pool.free_pages:
            return False
        seq.block_table += self.pool.allocate(need)
        return True

    def _cache_full_pages(self, seq: Sequence) -> None:
        if self.cache is None or seq.cache_node is None:
            return
        ps = self.page_size
        while seq.num_cached_pages < seq.num_computed_tokens // ps:
            i = seq.num_cached_pages
            seq.cache_node = self.cache.insert(seq.cache_node, seq.token_slice(i * ps, (i + 1) * ps),
                                               seq.block_table[i])
            seq.num_cached_pages += 1

    def _preempt(self, seq: Sequence) -> None:
        self._free(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _free(self, seq: Sequence) -> None:
        if seq.block_table:
            self.pool.release(seq.block_table)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.cache_node, seq.num_cached_pages = None, 0
