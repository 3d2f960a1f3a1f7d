"""Token sampling on host logits: greedy, temperature, top-k, top-p, seeded.

Logits come back from the device once per step as f32[B, V]; sampling them in numpy is
cheap next to the model step and keeps the compiled module free of sampling policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token, and when to stop.

    temperature <= 0 means greedy (argmax, lowest id on ties). top_k = 0 and top_p = 1.0
    disable those filters. stop_token_ids=None means "the model's eos ids from the
    manifest"; an empty tuple never stops early.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """Pick one token id per row of `logits` [B, V]; returns i64[B]."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {logits.shape}")
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


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
