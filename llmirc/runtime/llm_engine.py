"""LLMEngine: requests in, RequestOutputs out, one scheduler step at a time.

    engine = LLMEngine.from_artifact("out/tiny")
    engine.add_request("a", prompt_ids, SamplingParams(max_tokens=32))
    while engine.has_unfinished_requests():
        for out in engine.step(): ...

Each `step` asks the Scheduler which tokens to compute, runs them on the executor (at most
two calls: one `decode` for sequences that compute one token, one `extend` for the rest),
then samples every sequence whose last token was computed, detokenizes incrementally and
applies the stop conditions. The engine is not thread-safe: one thread calls every method
(a server steps it in its own thread and hands it add/abort calls).

The executor is `llmirc.runtime.engine.Engine` or anything with its attributes and
`decode`, plus `extend` (ABI v2). Without `extend` (an ABI v1 artifact, whose Engine says
`supports_extend = False`) the engine builds extend from `prefill` (chunks at position 0)
and one `decode` per position (anything else): slower, the same tokens. The same decode
loop gives every position's logits (prompt logprobs) where `extend_all` is missing
(static-shape targets).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmirc.errors import ArtifactError, PoolExhaustedError, PromptTooLongError, RequestError, SchedulerConfigError

from .page_pool import PagePool
from .sampling import SamplingError, SamplingParams, sample, top_logprobs
from .scheduler import ScheduledSeq, Scheduler, SchedulerConfig, Sequence, block_tables
from .stop import StopStringMatcher
from .structured import GrammarCompiler, SequenceGrammar

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class CompletionOutput:
    index: int  # 0..n-1
    token_ids: list[int]  # cumulative generated ids (a stop token included)
    text: str  # cumulative detokenized text ("" without tokenizer), stop string cut off
    new_token_ids: list[int]  # since this request's previous RequestOutput
    new_text: str
    logprobs: list[dict[int, float]] | None  # per generated token: top-k plus the sampled one
    finish_reason: str | None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None  # the stop token id or stop string that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, float] | None] | None  # first entry None (no logprob for token 0)
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int  # prompt tokens served from the prefix cache (or shared within an n > 1 request)


@dataclass
class EngineStats:
    """Now (running/waiting sequences: an n > 1 request counts n; pages) and cumulative
    counters (preemptions; tokens: prefix-cache queries count every token looked up at each
    admission, hits the tokens found cached)."""

    num_running: int
    num_waiting: int
    num_pages_used: int  # pages held by sequences (cached pages only the cache holds count as free)
    num_pages_total: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    prompt_tokens: int
    generation_tokens: int


@dataclass
class _Completion:
    """Engine-side state of one sequence: random stream, text, logprobs, what was sent."""

    seq: Sequence
    rng: np.random.Generator
    stop_ids: frozenset[int]
    detok: Any | None  # tokenizers DecodeStream
    matcher: StopStringMatcher
    text: str = ""
    logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    sent_tokens: int = 0
    sent_text: int = 0
    grammar: SequenceGrammar | None = None  # structured output: masks each step, ends at the grammar's end


@dataclass
class _Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    completions: list[_Completion]
    prompt_logprobs: list[dict[int, float] | None] | None = None
    dirty: bool = False  # something to report in this step's outputs

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.completions)


@dataclass
class _Rows:
    """Per scheduled row: the logits of its last new token, and of every new position when
    prompt logprobs need them."""

    last: list[np.ndarray] = field(default_factory=list)
    every: list[np.ndarray | None] = field(default_factory=list)


class LLMEngine:
    """Continuous batching over `executor` with the scheduler limits of `config`."""

    def __init__(self, executor, config: SchedulerConfig, tokenizer=None, eos_token_ids: tuple[int, ...] = ()) -> None:
        self.executor = executor
        self.config = config
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        if config.max_model_len is not None and config.max_model_len > executor.max_seq_len:
            raise SchedulerConfigError(f"max_model_len {config.max_model_len} is more than the model's max_seq_len "
                                       f"{executor.max_seq_len} (fixed at compile time); give at most that")
        self.max_model_len: int = config.max_model_len or executor.max_seq_len
        self.vocab_size: int = executor.vocab_size
        self.pool = PagePool(executor.num_pages, executor.page_size)
        chunk = getattr(executor, "max_prefill_len", None)  # static-shape targets: longest compiled chunk
        if chunk is not None and chunk < self.max_model_len and not config.long_prefill_token_threshold:
            config = _replace(config, long_prefill_token_threshold=int(chunk))
        self.scheduler = Scheduler(config, self.pool)
        # Engine says whether its artifact has them (ABI v2; `extend_all` is not compiled for
        # static-shape targets); any other executor has them when it has the method.
        has_extend = callable(getattr(executor, "extend", None))
        self._has_extend: bool = bool(getattr(executor, "supports_extend", has_extend))
        self._has_all_logits: bool = self._has_extend and bool(getattr(executor, "supports_all_logits", True))
        self._requests: dict[str, _Request] = {}
        self._grammars: GrammarCompiler | None = None  # built at the first structured request
        self._prompt_tokens = 0
        self._generation_tokens = 0

    @classmethod
    def from_artifact(cls, artifact_dir: str | Path, num_pages: int | None = None, device: str | None = None,
                      ray: bool | str = False, **scheduler_kwargs) -> LLMEngine:
        """Load an artifact (its Engine, tokenizer and eos ids); `ray`: engine.open_engine's;
        `scheduler_kwargs` are SchedulerConfig fields."""
        from .engine import open_engine

        executor = open_engine(artifact_dir, num_pages=num_pages, device=device, ray=ray)
        config = SchedulerConfig(**scheduler_kwargs)
        return cls(executor, config, load_tokenizer(Path(artifact_dir)),
                   tuple(executor.manifest.model.eos_token_id or ()))

    # ---- requests ----------------------------------------------------------------------

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Queue a request; raises LlmircError (RequestError, SamplingError,
        PromptTooLongError, PoolExhaustedError) before queueing anything when it cannot run."""
        try:
            prompt = [int(t) for t in prompt_token_ids]
        except (TypeError, ValueError):
            raise RequestError(f"request {request_id!r}: the prompt must be a list of token ids (integers)") from None
        grammar = self.check_request(request_id, prompt, params)  # compiled once, there
        stop_ids = self._stop_ids(params)
        leader = None
        completions = []
        for i in range(params.n):
            seq = Sequence(request_id, i, prompt, params, leader=leader)
            leader = leader or seq
            completions.append(_Completion(seq, params.rng(i), stop_ids, self._decode_stream(prompt),
                                           StopStringMatcher(params.stop),
                                           logprobs=[] if params.logprobs is not None else None,
                                           grammar=grammar.copy() if grammar is not None else None))
        req = _Request(request_id, prompt, params, completions,
                       prompt_logprobs=[None] * len(prompt) if params.prompt_logprobs is not None else None)
        self._requests[request_id] = req
        self._prompt_tokens += len(prompt)
        for c in completions:
            self.scheduler.add(c.seq)

    def check_request(self, request_id: str, prompt: Seq[int], params: SamplingParams) -> SequenceGrammar | None:
        """The checks of add_request, without queueing (a client can check a batch first);
        returns the compiled structured-output matcher (None without a constraint), so that
        add_request does not compile it a second time."""
        if not isinstance(params, SamplingParams):
            raise SamplingError(f"request {request_id!r}: params must be SamplingParams, got {type(params).__name__}")
        if request_id in self._requests:
            raise RequestError(f"request id {request_id!r} is already in use; give each request its own id")
        n, limit = len(prompt), self.max_model_len
        if n == 0:
            raise RequestError(f"request {request_id!r} has an empty prompt; give at least one token")
        if n > limit:
            raise PromptTooLongError(f"request {request_id!r} has {n} prompt tokens but the model's max length is "
                                     f"{limit}; shorten the prompt")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"request {request_id!r} has token id {bad[0]} outside the vocabulary "
                               f"(0..{self.vocab_size - 1})")
        if params.stop and self.tokenizer is None:
            raise SamplingError(f"request {request_id!r}: stop strings need a tokenizer and this engine has none; "
                                "use stop_token_ids")
        if params.structured is not None and self.tokenizer is None:
            raise SamplingError(f"request {request_id!r}: structured output needs the model's tokenizer.json and "
                                "this engine has none")
        worst = self.worst_case_pages(n, params.max_tokens)
        if worst > self.pool.capacity:
            raise PoolExhaustedError(
                f"request {request_id!r} needs up to {worst} KV pages ({n} prompt tokens + up to "
                f"{params.max_tokens} new, {self.pool.page_size} tokens a page) but the pool has only "
                f"{self.pool.capacity}; raise --num-pages (now {self.pool.num_pages}) or lower max_tokens")
        return self._grammar(params)  # an invalid schema / regex / grammar fails here, before queueing

    def worst_case_pages(self, prompt_len: int, max_tokens: int) -> int:
        """Pages one sequence may ever hold: every token but the last sampled one is computed."""
        new = min(max_tokens, max(1, self.max_model_len - prompt_len))
        return self.pool.pages_for(prompt_len + new - 1)

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its pages; the next `step` reports it finished with
        finish_reason "abort". An unknown or finished id is a no-op."""
        req = self._requests.get(request_id)
        if req is None:
            return
        for c in req.completions:
            if c.finish_reason is None:
                self._finish(req, c, "abort", None)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    @property
    def stats(self) -> EngineStats:
        s, cache = self.scheduler, self.scheduler.cache
        free = self.pool.free_pages + (cache.unreferenced_pages() if cache is not None else 0)
        return EngineStats(
            num_running=len(s.running), num_waiting=len(s.waiting),
            num_pages_used=self.pool.capacity - free, num_pages_total=self.pool.capacity,
            num_preemptions=s.num_preemptions,
            prefix_cache_queries=cache.queries if cache is not None else 0,
            prefix_cache_hits=cache.hits if cache is not None else 0,
            prompt_tokens=self._prompt_tokens, generation_tokens=self._generation_tokens)

    def reset_prefix_cache(self) -> int:
        """Empty the prefix cache (only its own references: pages that running sequences
        hold stay theirs); returns how many pages the cache held."""
        cache = self.scheduler.cache
        return cache.clear() if cache is not None else 0

    # ---- one step ----------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One scheduler step: compute the scheduled tokens, sample, and report every request
        that got new tokens or finished (aborts included)."""
        sched = self.scheduler.schedule()
        if sched.scheduled:
            rows = self._execute(sched.scheduled)
            self.scheduler.update(sched)
            for row, last, every in zip(sched.scheduled, rows.last, rows.every):
                req = self._requests[row.seq.request_id]
                if every is not None:
                    self._record_prompt_logprobs(req, row, every)
                if row.completes:
                    self._sample(req, req.completions[row.seq.index], last)
        return self._collect_outputs()

    def _execute(self, rows: list[ScheduledSeq]) -> _Rows:
        """Run the scheduled rows: one `decode` for one-token rows, one `extend` for the rest."""
        out = _Rows([None] * len(rows), [None] * len(rows))  # type: ignore[list-item]
        ones = [i for i, r in enumerate(rows) if r.num_new_tokens == 1]
        many = [i for i, r in enumerate(rows) if r.num_new_tokens > 1]
        if ones:
            tables = block_tables([rows[i].seq for i in ones])
            logits = self.executor.decode(np.array([rows[i].token_ids[0] for i in ones], np.int64),
                                          np.array([rows[i].start for i in ones], np.int64), tables)
            for j, i in enumerate(ones):
                out.last[i] = logits[j]
                out.every[i] = logits[j][None] if rows[i].seq.wants_prompt_logprobs else None
        if many:
            sub = [rows[i] for i in many]
            all_logits = any(r.seq.wants_prompt_logprobs for r in sub)
            logits = self._extend(sub, all_logits)
            for j, i in enumerate(many):
                n = rows[i].num_new_tokens
                out.last[i] = logits[j, n - 1] if all_logits else logits[j]
                out.every[i] = logits[j, :n] if all_logits and rows[i].seq.wants_prompt_logprobs else None
        return out

    def _extend(self, rows: list[ScheduledSeq], all_logits: bool) -> np.ndarray:
        width = max(r.num_new_tokens for r in rows)
        tokens = np.zeros((len(rows), width), np.int64)
        for t, r in zip(tokens, rows):
            t[:r.num_new_tokens] = r.token_ids
        start = np.array([r.start for r in rows], np.int64)
        lens = np.array([r.num_new_tokens for r in rows], np.int64)
        tables = block_tables([r.seq for r in rows])
        if self._has_extend and (self._has_all_logits or not all_logits):
            return self.executor.extend(tokens, start, lens, tables, all_logits=all_logits)
        return extend_with_v1(self.executor, tokens, start, lens, tables, all_logits)

    # ---- sampling and stop conditions ----------------------------------------------------

    def _grammar(self, params: SamplingParams) -> SequenceGrammar | None:
        """A fresh matcher for `params.structured` (SamplingError when it is invalid)."""
        if params.structured is None:
            return None
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_token_ids)
        return self._grammars.compile(params.structured)

    def _sample(self, req: _Request, c: _Completion, logits: np.ndarray) -> None:
        seq, params = c.seq, req.params
        needs_seen = params.repetition_penalty != 1.0
        needs_out = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        raw = logits
        if c.grammar is not None:
            logits = c.grammar.mask(logits)
            if not np.isfinite(logits).any():  # the grammar allows nothing (it is complete)
                self._finish(req, c, "stop", None)
                return
        token = int(sample(logits[None], params, c.rng, seen=[seq.all_token_ids] if needs_seen else None,
                           outputs=[seq.output_token_ids] if needs_out else None)[0])
        logits = raw  # logprobs are the model's, before the mask (as vLLM reports them)
        seq.output_token_ids.append(token)
        self._generation_tokens += 1
        req.dirty = True
        if c.logprobs is not None:
            c.logprobs.append(top_logprobs(logits, params.logprobs, token))
        piece = self._detok_step(c, token)
        c.text += c.matcher.feed(piece) if params.stop else piece
        refused = c.grammar is not None and not c.grammar.consume(token)
        if token in c.stop_ids:
            self._finish(req, c, "stop", token)
        elif c.grammar is not None and (refused or c.grammar.done):
            self._finish(req, c, "stop", None)
        elif c.matcher.stopped:
            self._finish(req, c, "stop", c.matcher.stop_string)
        elif len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            self._finish(req, c, "length", None)

    def _finish(self, req: _Request, c: _Completion, reason: str, stop_reason: int | str | None) -> None:
        c.finish_reason, c.stop_reason = reason, stop_reason
        if req.params.stop and not c.matcher.stopped:
            c.text += c.matcher.flush()
        self.scheduler.finish(c.seq)
        req.dirty = True

    def _record_prompt_logprobs(self, req: _Request, row: ScheduledSeq, every: np.ndarray) -> None:
        """Logits at position p give the logprob of prompt token p + 1."""
        prompt, k = req.prompt_token_ids, req.params.prompt_logprobs
        for j in range(row.num_new_tokens):
            p = row.start + j
            if p + 1 < len(prompt):
                req.prompt_logprobs[p + 1] = top_logprobs(every[j], k, prompt[p + 1])

    def _stop_ids(self, params: SamplingParams) -> frozenset[int]:
        if params.stop_token_ids is not None:
            return frozenset(params.stop_token_ids)
        return frozenset() if params.ignore_eos else frozenset(self.eos_token_ids)

    def _decode_stream(self, prompt: list[int]):
        if self.tokenizer is None:
            return None
        from tokenizers.decoders import DecodeStream

        # Started on the prompt, so the first piece is decoded in context: a tokenizer that
        # drops a word's leading space at the start of a text (Metaspace) keeps it here.
        return DecodeStream(ids=list(prompt), skip_special_tokens=True)

    def _detok_step(self, c: _Completion, token: int) -> str:
        if c.detok is None:
            return ""
        return c.detok.step(self.tokenizer, token) or ""

    # ---- outputs -----------------------------------------------------------------------

    def _collect_outputs(self) -> list[RequestOutput]:
        outs = []
        for rid in [rid for rid, r in self._requests.items() if r.dirty]:
            req = self._requests[rid]
            outs.append(self._output(req))
            req.dirty = False
            if req.finished:
                del self._requests[rid]
        return outs

    def _output(self, req: _Request) -> RequestOutput:
        completions = []
        for c in req.completions:
            ids = c.seq.output_token_ids
            completions.append(CompletionOutput(
                index=c.seq.index, token_ids=list(ids), text=c.text, new_token_ids=ids[c.sent_tokens:],
                new_text=c.text[c.sent_text:], logprobs=list(c.logprobs) if c.logprobs is not None else None,
                finish_reason=c.finish_reason, stop_reason=c.stop_reason))
            c.sent_tokens, c.sent_text = len(ids), len(c.text)
        leader = req.completions[0].seq
        return RequestOutput(
            request_id=req.request_id, prompt_token_ids=list(req.prompt_token_ids),
            prompt_logprobs=list(req.prompt_logprobs) if req.prompt_logprobs is not None else None,
            outputs=completions, finished=req.finished, num_cached_tokens=leader.num_cached_tokens or 0)


def extend_with_v1(executor, tokens: np.ndarray, start_pos: np.ndarray, new_lens: np.ndarray,
                   block_tables: np.ndarray, all_logits: bool = False) -> np.ndarray:
    """`extend` on an ABI v1 executor: `prefill` when every row starts at 0 and only last
    logits are wanted, else one `decode` per column (decode at position p attends to 0..p,
    so the columns in order compute exactly what extend does)."""
    b, t = tokens.shape
    if not all_logits and not start_pos.any():
        return executor.prefill(tokens, new_lens, block_tables)
    every: np.ndarray | None = None
    last: np.ndarray | None = None
    for j in range(t):
        active = np.flatnonzero(new_lens > j)
        logits = executor.decode(tokens[active, j], start_pos[active] + j, block_tables[active])
        if last is None:
            last = np.zeros((b, logits.shape[-1]), np.float32)
            every = np.zeros((b, t, logits.shape[-1]), np.float32) if all_logits else None
        if every is not None:
            every[active, j] = logits
        done = new_lens[active] == j + 1
        last[active[done]] = logits[done]
    return every if all_logits else last


def load_tokenizer(artifact_dir: Path):
    """The artifact's tokenizer.json as a `tokenizers.Tokenizer`, or None when it has none."""
    path = artifact_dir / TOKENIZER_FILE
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own Exception subclass
        raise ArtifactError(f"{path} cannot be read by `tokenizers` ({e}); "
                            "re-run `llmirc compile` to rebuild the artifact") from None


def _replace(config: SchedulerConfig, **changes) -> SchedulerConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)
