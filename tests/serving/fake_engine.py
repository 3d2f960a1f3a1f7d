"""A host-only engine with LLMEngine's contract (llmirc/runtime/llm_engine.py), for server tests.

Tokens come from a hash of the sequence so far (deterministic, different per choice index,
sampled from a seeded RNG when temperature > 0); pages are counted as the real scheduler
counts them (ceil(tokens / page_size) per sequence, page 0 excluded), and a sequence that
cannot grow preempts the newest running one, so the server's accounting and metrics paths
see the same events as on a real artifact. `gate`, when set, makes every step wait for it:
tests use it to show that HTTP keeps answering while the engine is inside a step.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from llmirc.errors import LlmircError, PromptTooLongError


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    text: str
    new_token_ids: list[int]
    new_text: str
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None
    stop_reason: int | str | None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0


@dataclass
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    num_pages_used: int = 0
    num_pages_total: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0


@dataclass
class _Choice:
    index: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent_tokens: int = 0
    sent_text: int = 0
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class _Req:
    rid: str
    prompt: list[int]
    params: object
    choices: list[_Choice]
    pages: int = 0
    rng: random.Random | None = None


class FakeEngine:
    def __init__(self, tokenizer=None, max_model_len: int = 128, num_pages: int = 64, page_size: int = 4,
                 max_num_seqs: int = 8, vocab: int = 300, eos_token_ids: tuple[int, ...] = (2,),
                 step_delay: float = 0.0) -> None:
        self.step_delay = step_delay  # seconds a step takes, as a device call would
        self.fail_after_steps: int | None = None  # then every step raises, as a lost device would
        self.tokenizer, self.max_model_len, self.page_size = tokenizer, max_model_len, page_size
        self.num_pages, self.max_num_seqs, self.vocab, self.eos = num_pages, max_num_seqs, vocab, eos_token_ids
        self.waiting: list[_Req] = []
        self.running: list[_Req] = []
        self._stats = EngineStats(num_pages_total=num_pages - 1)
        self.gate: threading.Event | None = None
        self.in_step = threading.Event()
        self.added: list[str] = []
        self.aborted: list[str] = []

    # ---- the contract -------------------------------------------------------------------

    def add_request(self, request_id: str, prompt_token_ids: list[int], params) -> None:
        if not prompt_token_ids:
            raise LlmircError(f"request {request_id}: the prompt is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise PromptTooLongError(f"request {request_id}: {len(prompt_token_ids)} prompt tokens do not fit "
                                     f"max_model_len {self.max_model_len}")
        bad = [t for t in prompt_token_ids if not 0 <= t < self.vocab]
        if bad:
            raise LlmircError(f"request {request_id}: token id {bad[0]} is outside the vocabulary (0..{self.vocab - 1})")
        if params.stop and self.tokenizer is None:
            raise LlmircError("stop strings need a tokenizer")
        n = getattr(params, "n", 1)
        rng = random.Random(params.seed) if params.temperature > 0 else None
        self.waiting.append(_Req(request_id, list(prompt_token_ids), params, [_Choice(i) for i in range(n)], rng=rng))
        self.added.append(request_id)

    def abort(self, request_id: str) -> None:
        for q in (self.waiting, self.running):
            for r in list(q):
                if r.rid == request_id:
                    q.remove(r)
                    self._free(r)
                    self.aborted.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def stats(self) -> EngineStats:
        s = self._stats
        s.num_running, s.num_waiting = len(self.running), len(self.waiting)
        s.num_pages_used = sum(r.pages for r in self.running)
        return s

    def step(self) -> list[RequestOutput]:
        self.in_step.set()
        if self.gate is not None:
            self.gate.wait(30)
        try:
            if self.fail_after_steps is not None:
                self.fail_after_steps -= 1
                if self.fail_after_steps < 0:
                    raise RuntimeError("device lost")
            if self.step_delay:
                time.sleep(self.step_delay)
            return self._step()
        finally:
            self.in_step.clear()

    # ---- the toy scheduler ---------------------------------------------------------------

    def _free_pages(self) -> int:
        return self.num_pages - 1 - sum(r.pages for r in self.running)

    def _pages_for(self, r: _Req) -> int:
        longest = max(len(c.tokens) for c in r.choices)
        return len(r.choices) * -(-(len(r.prompt) + longest + 1) // self.page_size)

    def _free(self, r: _Req) -> None:
        r.pages = 0

    def _step(self) -> list[RequestOutput]:
        while self.waiting and len(self.running) < self.max_num_seqs and self._pages_for(self.waiting[0]) <= \
                self._free_pages():
            r = self.waiting.pop(0)
            r.pages = self._pages_for(r)
            self._stats.prompt_tokens += len(r.prompt)
            self._stats.prefix_cache_queries += len(r.prompt)
            self.running.append(r)
        if not self.running and self.waiting:
            raise LlmircError(f"request {self.waiting[0].rid} can never fit the pool")
        outs = []
        for r in list(self.running):
            if r not in self.running:  # preempted by an earlier request of this step
                continue
            need = self._pages_for(r) - r.pages
            while need > self._free_pages() and self.running[-1] is not r:
                victim = self.running.pop()
                self._free(victim)
                self.waiting.insert(0, victim)
                self._stats.num_preemptions += 1
            if need > self._free_pages():
                self.running.remove(r)
                self._free(r)
                self.waiting.insert(0, r)
                self._stats.num_preemptions += 1
                continue
            r.pages += need
            for c in r.choices:
                if c.finish_reason is None:
                    self._generate(r, c)
            outs.append(self._output(r))
            if all(c.finish_reason is not None for c in r.choices):
                self.running.remove(r)
                self._free(r)
        return outs

    def _generate(self, r: _Req, c: _Choice) -> None:
        p = r.params
        seq = r.prompt + c.tokens
        if r.rng is not None:
            tok = r.rng.randrange(3, self.vocab)
        else:
            tok = 3 + (sum(seq[-3:]) * 31 + len(seq) * 7 + c.index * 13) % (self.vocab - 3)
        if len(seq) % 23 == 0 and not getattr(p, "ignore_eos", False):
            tok = self.eos[0]
        c.tokens.append(tok)
        self._stats.generation_tokens += 1
        k = getattr(p, "logprobs", None)
        if k is not None:
            top = {t: -1.0 - i for i, t in enumerate(range(3, 3 + k))}
            top[tok] = top.get(tok, -0.25)
            c.logprobs.append(top)
        stops = p.stop_token_ids if p.stop_token_ids is not None else (() if getattr(p, "ignore_eos", False)
                                                                        else self.eos)
        if self.tokenizer is not None:
            c.text = self.tokenizer.decode(c.tokens, skip_special_tokens=True)
        cut = min((i for i in (c.text.find(s) for s in p.stop) if i >= 0), default=-1)
        if cut >= 0:
            which = next(s for s in p.stop if c.text.find(s) == cut)
            c.text, c.finish_reason, c.stop_reason = c.text[:cut], "stop", which
        elif tok in stops:
            c.finish_reason, c.stop_reason = "stop", (None if tok in self.eos and p.stop_token_ids is None else tok)
        elif len(c.tokens) >= p.max_tokens or len(seq) + 1 >= self.max_model_len:
            c.finish_reason = "length"

    def _output(self, r: _Req) -> RequestOutput:
        outs = []
        for c in r.choices:
            new_ids, new_text = c.tokens[c.sent_tokens:], c.text[c.sent_text:]
            c.sent_tokens, c.sent_text = len(c.tokens), len(c.text)
            outs.append(CompletionOutput(c.index, list(c.tokens), c.text, new_ids, new_text,
                                         list(c.logprobs) if getattr(r.params, "logprobs", None) is not None
                                         else None, c.finish_reason, c.stop_reason))
        k = getattr(r.params, "prompt_logprobs", None)
        prompt_lps = None if k is None else [None] + [{t: -0.5, 3: -2.0} for t in r.prompt[1:]]
        return RequestOutput(r.rid, r.prompt, prompt_lps, outs, all(c.finish_reason is not None for c in r.choices))
