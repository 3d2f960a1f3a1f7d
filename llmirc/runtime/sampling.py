"""Token sampling on host logits: penalties, greedy, temperature, min-p, top-k, top-p, seeded.

Logits come back from the device once per step as f32[B, V]; sampling them in numpy is
cheap next to the model step and keeps the compiled module free of sampling policy.

Order of operations (vLLM v1's): repetition penalty (prompt + output), presence/frequency
penalties (output only), then for non-greedy requests temperature, min-p, top-k, top-p and a
draw. Logprobs reported to the user are those of the raw model logits (vLLM's default),
so they do not depend on the sampling knobs.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmirc.errors import LlmircError

# OpenAI's ranges; vLLM allows up to 20 logprobs by default.
MAX_LOGPROBS = 20
PENALTY_RANGE = 2.0


class SamplingError(LlmircError, ValueError):
    """A sampling parameter out of range (a ValueError too, for API callers that catch that)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token, and when to stop (the server shares these).

    temperature <= 0 means greedy (argmax, lowest id on ties). top_k = 0, top_p = 1.0 and
    min_p = 0 disable those filters; min_p keeps tokens whose probability is at least min_p
    times the most likely one's. repetition_penalty > 1 discourages every token already in
    the prompt or the output (as transformers and vLLM define it: a positive logit is
    divided by it, a negative one multiplied); 1.0 is off. presence_penalty and
    frequency_penalty (OpenAI's definitions, output tokens only) subtract
    `presence * [count > 0] + frequency * count` from each logit. stop_token_ids=None means
    "the model's eos ids from the manifest"; an empty tuple never stops early; ignore_eos
    keeps going past eos (explicit stop_token_ids still stop). `stop` strings end
    generation when the text contains one; the text returned stops before it (the engine
    applies them: it holds the tokenizer).

    n > 1 generates n completions of the prompt (they share the prompt's KV pages). seed
    gives the request its own random stream: its tokens do not depend on what else is
    batched with it; completion i > 0 of an n > 1 request draws from seed (seed, i).
    logprobs = k returns, per generated token, the k most likely tokens' logprobs plus the
    sampled one's (0: the sampled one only; None: off); prompt_logprobs the same per prompt
    token. `structured` (runtime/structured.py) masks every step to what a JSON schema, regex,
    choice or grammar allows; the request ends with "stop" when the grammar is complete.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    ignore_eos: bool = False
    structured: Any = None  # a structured.Constraint: the output must match it (None: free text)

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise SamplingError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.repetition_penalty > 0.0:
            raise SamplingError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")
        if any(not isinstance(t, str) or not t for t in self.stop):
            raise SamplingError(f"stop strings must be non-empty strings, got {list(self.stop)!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise SamplingError(f"n must be an integer >= 1, got {self.n!r}")
        if not 0.0 <= self.min_p <= 1.0:
            raise SamplingError(f"min_p must be in [0, 1] (0 disables it), got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -PENALTY_RANGE <= value <= PENALTY_RANGE:
                raise SamplingError(f"{name} must be in [-{PENALTY_RANGE:g}, {PENALTY_RANGE:g}] (0 disables it), "
                                    f"got {value}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value <= MAX_LOGPROBS):
                raise SamplingError(f"{name} must be None (off) or an integer in 0..{MAX_LOGPROBS}, got {value!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise SamplingError(f"seed must be an integer or None, got {self.seed!r}")
        if self.structured is not None:
            from .structured import Constraint

            if not isinstance(self.structured, Constraint):
                raise SamplingError(f"structured must be a Constraint or None, got {type(self.structured).__name__}")
        if self.stop_token_ids is not None and any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise SamplingError(f"stop_token_ids must be non-negative integers, got {list(self.stop_token_ids)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def rng(self, index: int = 0) -> np.random.Generator:
        """The random stream of completion `index`: seeded when `seed` is, else fresh entropy."""
        if self.seed is None:
            return np.random.default_rng()
        seed = self.seed % 2**64  # any integer (OpenAI's are int64); numpy takes non-negative ones
        return np.random.default_rng(seed if index == 0 else [seed, index])


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           seen: Seq[Seq[int]] | None = None, outputs: Seq[Seq[int]] | None = None) -> np.ndarray:
    """Pick one token id per row of `logits` [B, V]; returns i64[B]. `seen[b]` are the
    token ids of row b so far (prompt + output), which the repetition penalty needs;
    `outputs[b]` the generated ones only (presence/frequency penalties)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {logits.shape}")
    logits = apply_penalties(logits, params, seen, outputs)
    if params.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    scaled = logits.astype(np.float64) / params.temperature
    # Stable descending order: among equal logits the lower id comes first, as in argmax.
    order = np.argsort(-scaled, axis=-1, kind="stable")
    sorted_logits = np.take_along_axis(scaled, order, axis=-1)
    keep = np.ones_like(sorted_logits, dtype=bool)
    if params.min_p > 0.0:
        # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p); the first token always stays.
        keep &= sorted_logits >= sorted_logits[:, :1] + np.log(params.min_p)
    if 0 < params.top_k < keep.shape[-1]:
        keep[:, params.top_k:] = False
    probs = _softmax(np.where(keep, sorted_logits, -np.inf))
    if params.top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        before = np.cumsum(probs, axis=-1) - probs
        keep &= before < params.top_p
        probs = _softmax(np.where(keep, sorted_logits, -np.inf))
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(len(cdf))[:, None] * cdf[:, -1:]
    pick = np.minimum((cdf <= u).sum(axis=-1), cdf.shape[-1] - 1)
    return order[np.arange(len(order)), pick].astype(np.int64)


def apply_penalties(logits: np.ndarray, params: SamplingParams, seen: Seq[Seq[int]] | None,
                    outputs: Seq[Seq[int]] | None) -> np.ndarray:
    """`logits` after the repetition, presence and frequency penalties (itself when all are off)."""
    if params.repetition_penalty != 1.0:
        if seen is None or len(seen) != len(logits):
            raise ValueError("repetition_penalty needs the token ids seen by every row")
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        if outputs is None or len(outputs) != len(logits):
            raise ValueError("presence/frequency penalties need the output token ids of every row")
        logits = apply_presence_frequency_penalty(logits, outputs, params.presence_penalty,
                                                  params.frequency_penalty)
    return logits


def apply_repetition_penalty(logits: np.ndarray, seen: Seq[Seq[int]], penalty: float) -> np.ndarray:
    """A copy of `logits` [B, V] where every token of `seen[b]` (each once, however often it
    occurs) has its logit divided by `penalty` if positive, else multiplied by it."""
    out = np.array(logits, dtype=np.float32, copy=True)
    for row, ids in zip(out, seen):
        idx = np.unique(np.asarray(ids, dtype=np.int64))
        if idx.size:
            vals = row[idx]
            row[idx] = np.where(vals > 0, vals / np.float32(penalty), vals * np.float32(penalty))
    return out


def apply_presence_frequency_penalty(logits: np.ndarray, outputs: Seq[Seq[int]], presence: float,
                                     frequency: float) -> np.ndarray:
    """A copy of `logits` [B, V] minus `presence * [count > 0] + frequency * count`, where
    count is how often each token occurs in `outputs[b]` (OpenAI's definition)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    for row, ids in zip(out, outputs):
        counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=row.shape[-1])[: row.shape[-1]]
        row -= (np.float32(frequency) * counts + np.float32(presence) * (counts > 0)).astype(np.float32)
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-probabilities over the last axis, computed in float64 for accuracy."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top_logprobs(logits_row: np.ndarray, k: int, token: int) -> dict[int, float]:
    """{token id: logprob} of the k most likely tokens of one logits row (lowest id first on
    ties), plus `token` (the sampled or actual one) whatever its rank."""
    lp = log_softmax(logits_row)
    best = np.argsort(-lp, kind="stable")[:k].tolist() if k > 0 else []
    return {int(t): float(lp[t]) for t in [*best, int(token)]}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
