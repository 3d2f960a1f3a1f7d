"""Python API: `llmirc.load(artifact_dir)` -> Model, and `Model.generate(prompts)`.

    model = llmirc.load("out/tiny")
    [c.text for c in model.generate(["Once upon a time"], max_tokens=20)]
    for ev in model.generate(["Hi"], stream=True): print(ev.text, end="")
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import time
from collections.abc import Iterator, Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmirc.errors import ArtifactError
from llmirc.runtime.engine import Engine
from llmirc.runtime.llm_engine import TOKENIZER_FILE, LLMEngine, RequestOutput, load_tokenizer
from llmirc.runtime.sampling import SamplingParams
from llmirc.runtime.scheduler import SchedulerConfig

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Families whose Hugging Face tokenizers prepend BOS unless tokenizer_config says otherwise.
BOS_BY_DEFAULT = ("Llama", "Mistral", "Mixtral", "Gemma")
# generate() takes a whole batch at once: a prompt is never cut into chunks only because the
# step budget is small (on an ABI v1 artifact each later chunk costs one decode per token).
MIN_BATCHED_TOKENS = 2048


@dataclass(frozen=True)
class Completion:
    """The result for one prompt: generated ids (a stop token included), text if a tokenizer
    is present (special tokens skipped; it ends before a stop string), why it ended ("stop":
    stop token or string, or "length": max_tokens or the model's max_seq_len) and the prompt's
    length in tokens."""

    index: int
    token_ids: list[int]
    text: str | None
    finish_reason: str
    prompt_tokens: int = 0


@dataclass(frozen=True)
class StreamEvent:
    """One generated token; `text` is the text it completes ('' when none yet or no tokenizer)."""

    index: int
    token_id: int
    text: str
    finish_reason: str | None


@dataclass
class GenerationStats:
    """What one `generate` call did, for `llmirc run`'s summary line: token counts, time to
    the first sampled token and generated tokens per second over the whole call (prefill
    included)."""

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


class Model:
    """A loaded artifact: engine, tokenizer and the LLMEngine that schedules its requests.

    One generate call at a time: a new call aborts whatever an abandoned earlier stream left.
    """

    def __init__(self, engine: Engine, tokenizer: Any | None = None, add_bos: bool = False,
                 config: SchedulerConfig | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        config = config or SchedulerConfig(max_num_batched_tokens=max(MIN_BATCHED_TOKENS, engine.max_seq_len))
        self.llm = LLMEngine(engine, config, tokenizer, tuple(engine.manifest.model.eos_token_id or ()))
        self.stats = GenerationStats()  # of the latest generate call, complete once it is consumed
        self._live: set[str] = set()

    @property
    def manifest(self):
        return self.engine.manifest

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with BOS prepended when the model expects it."""
        if self.tokenizer is None:
            raise ArtifactError(f"{self.engine.artifact_dir} has no {TOKENIZER_FILE}; pass token ids instead of text")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.manifest.model.bos_token_id
        if self.add_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    def decode(self, ids: Seq[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompts: Seq[str] | Seq[Seq[int]] | str, max_tokens: int = 16, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stream: bool = False,
                 stop_token_ids: Seq[int] | None = None, repetition_penalty: float = 1.0,
                 stop: Seq[str] | str | None = None, min_p: float = 0.0, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0, ignore_eos: bool = False) -> list[Completion] | Iterator[StreamEvent]:
        """Generate for each prompt (text or token ids; a single one may be passed bare).

        temperature 0 is greedy; with a seed, prompt i draws from seed + i (its own stream,
        whatever else is batched). stop_token_ids None stops on the manifest's eos ids; `stop`
        strings end a sequence too, and its text stops before them (runtime/stop.py).
        stream=False returns one Completion per prompt, in prompt order; stream=True returns
        an iterator of StreamEvents in the order tokens are produced. Every prompt is checked
        here (errors are raised now, not on the first `next`). `self.stats` has the token
        counts and timing once the generation is consumed.
        """
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        base = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_tokens=max_tokens,
                              stop_token_ids=None if stop_token_ids is None else tuple(stop_token_ids),
                              repetition_penalty=repetition_penalty, stop=stops, min_p=min_p,
                              presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                              ignore_eos=ignore_eos)
        ids = [self.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in _as_prompt_list(prompts)]
        self._abort_leftovers()
        requests = []
        for i, p in enumerate(ids):
            params = base if seed is None else dataclasses.replace(base, seed=seed + i)
            rid = f"prompt {i}"
            self.llm.check_request(rid, p, params)
            requests.append((rid, p, params))
        events = self._events(requests)
        if stream:
            return events
        return self._collect(events, [len(p) for p in ids], bool(stops))

    def _events(self, requests: list[tuple[str, list[int], SamplingParams]]) -> Iterator[StreamEvent]:
        """Queue the requests, step the engine until they finish, one event per new token."""
        index = {rid: i for i, (rid, _, _) in enumerate(requests)}
        self.stats = stats = GenerationStats(prompt_tokens=sum(len(p) for _, p, _ in requests))
        t0 = time.perf_counter()
        try:
            for rid, prompt, params in requests:
                self.llm.add_request(rid, prompt, params)
                self._live.add(rid)
            while self._live:
                for out in self.llm.step():
                    if out.request_id in index:
                        yield from self._to_events(index[out.request_id], out, stats, t0)
        finally:  # also on error or when the consumer stops iterating early: free the pages now
            stats.elapsed_s = time.perf_counter() - t0
            self._abort_leftovers()

    def _to_events(self, i: int, out: RequestOutput, stats: GenerationStats, t0: float) -> Iterator[StreamEvent]:
        c = out.outputs[0]
        if c.new_token_ids and stats.ttft_s is None:
            stats.ttft_s = time.perf_counter() - t0
        stats.generated_tokens += len(c.new_token_ids)
        if out.finished:
            self._live.discard(out.request_id)
        last = len(c.new_token_ids) - 1
        for k, tok in enumerate(c.new_token_ids):  # one a step; the text and the finish go with the last
            yield StreamEvent(i, tok, c.new_text if k == last else "", c.finish_reason if k == last else None)

    def _abort_leftovers(self) -> None:
        for rid in self._live:
            self.llm.abort(rid)
        self._live.clear()
        while self.llm.has_unfinished_requests():  # report the aborts, so their ids are free again
            self.llm.step()

    def _collect(self, events: Iterator[StreamEvent], prompt_lens: list[int], stops: bool) -> list[Completion]:
        n = len(prompt_lens)
        outs: list[list[int]] = [[] for _ in range(n)]
        pieces: list[list[str]] = [[] for _ in range(n)]
        reasons: list[str] = [""] * n
        for ev in events:
            outs[ev.index].append(ev.token_id)
            pieces[ev.index].append(ev.text)
            reasons[ev.index] = ev.finish_reason or reasons[ev.index]
        # Without stop strings the whole-sequence decode (what transformers' decode gives);
        # with them, the streamed text, which ends before the stop string.
        return [Completion(i, outs[i], "".join(pieces[i]) if stops else self.decode(outs[i]), reasons[i],
                           prompt_lens[i]) for i in range(n)]


def load(artifact_dir: str | Path, num_pages: int | None = None, device: str | None = None,
         ray: bool | str = False) -> Model:
    """Load an artifact written by `llmirc compile` onto its device (or `device`).

    `ray`: run a pipeline-parallel artifact's stages as Ray actors (True: the RAY_ADDRESS
    cluster or a new local one; a string: that cluster's address; docs/parallel.md)."""
    from .runtime.engine import open_engine

    engine = open_engine(artifact_dir, num_pages=num_pages, device=device, ray=ray)
    root = Path(artifact_dir)
    return Model(engine, load_tokenizer(root),
                 add_bos=should_add_bos(engine.manifest, _read_json(root / TOKENIZER_CONFIG_FILE)))


def should_add_bos(manifest, tokenizer_config: dict[str, Any]) -> bool:
    """Follow tokenizer_config's add_bos_token; without it, Llama-family models add BOS."""
    if manifest.model.bos_token_id is None:
        return False
    if "add_bos_token" in tokenizer_config:
        return bool(tokenizer_config["add_bos_token"])
    return manifest.model.architecture.startswith(BOS_BY_DEFAULT)


def _as_prompt_list(prompts: Any) -> list:
    """A bare string or a flat list of ints is one prompt."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, numbers.Integral) for t in prompts):
        return [prompts]
    return prompts


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{path} is not valid JSON; re-run `llmirc compile` to rebuild the artifact") from None
    return data if isinstance(data, dict) else {}
