"""Token sampling on host logits: repetition penalty, greedy, temperature, top-k, top-p, seeded.

Logits come back from the device once per step as f32[B, V]; sampling them in numpy is
cheap next to the model step and keeps the compiled module free of sampling policy.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np

from llmirc.errors import LlmircError


class SamplingError(LlmircError, ValueError):
    """A sampling parameter out of range (a ValueError too, for API callers that catch that)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token, and when to stop (the server shares these).

    temperature <= 0 means greedy (argmax, lowest id on ties). top_k = 0 and top_p = 1.0
    disable those filters. repetition_penalty > 1 discourages every token already in the
    prompt or the output (as transformers and vLLM define it: a positive logit is divided by
    it, a negative one multiplied); 1.0 is off. stop_token_ids=None means "the model's eos
    ids from the manifest"; an empty tuple never stops early. `stop` strings end generation
    when the text contains one; the text returned stops before it (llmirc.api applies them:
    it holds the tokenizer).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()

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

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           seen: Seq[Seq[int]] | None = None) -> np.ndarray:
    """Pick one token id per row of `logits` [B, V]; returns i64[B]. `seen[b]` are the
    token ids of row b so far (prompt + output), which the repetition penalty needs."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {logits.shape}")
    if params.repetition_penalty != 1.0:
        if seen is None or len(seen) != len(logits):
            raise ValueError("repetition_penalty needs the token ids seen by every row")
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    scaled = logits.astype(np.float64) / params.temperature
    # Stable descending order: among equal logits the lower id comes first, as in argmax.
    order = np.argsort(-scaled, axis=-1, kind="stable")
    sorted_logits = np.take_along_axis(scaled, order, axis=-1)
    keep = np.ones_like(sorted_logits, dtype=bool)
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


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
