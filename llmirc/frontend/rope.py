"""Rotary position embedding settings from config.json, in both layouts transformers writes.

transformers 4 wrote top-level `rope_theta` plus `rope_scaling` (`type` or `rope_type`);
transformers 5 writes one `rope_parameters` dict (and, for models with several layer types,
one dict per type). A reader that knows only one layout silently gets theta 10000 and no
scaling from the other, so both are read here, with transformers' precedence: a non-null
`rope_scaling` wins over `rope_parameters`, a value inside the dict wins over the top-level
`rope_theta`, and a top-level `original_max_position_embeddings` wins over the dict's.

Every supported type folds into what `llm.rope` takes (inverse frequencies) plus one
attention factor: YaRN multiplies cos and sin by it, i.e. scales both q and k, which is the
same as multiplying the attention logits' scale by its square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CheckpointError

DEFAULT_THETA = 10000.0

# Keys each rope type reads besides rope_type/type, rope_theta and partial_rotary_factor.
TYPE_KEYS: dict[str, frozenset[str]] = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    # Dynamic NTK changes the frequencies only past max_position_embeddings, which no compiled
    # sequence reaches (max_seq_len is capped there), so inside that range it is the default.
    "dynamic": frozenset({"factor", "original_max_position_embeddings"}),
    "llama3": frozenset({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}),
    "yarn": frozenset({"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
                       "mscale", "mscale_all_dim", "truncate"}),
    # Phi-3's long-context models: per-dimension factors, short ones while the sequence is
    # within original_max_position_embeddings (the compiled length must be: config.py).
    "longrope": frozenset({"factor", "short_factor", "long_factor", "original_max_position_embeddings",
                           "attention_factor"}),
}
COMMON_KEYS = frozenset({"rope_type", "type", "rope_theta", "partial_rotary_factor"})
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {"linear": ("factor",), "dynamic": ("factor",),
                                             "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
                                             "yarn": (), "longrope": ("short_factor", "long_factor")}


@dataclass(frozen=True)
class RopeSpec:
    """One rotary embedding: its type, base and the type's parameters (as config.json gives them)."""

    kind: str = "default"
    theta: float = DEFAULT_THETA
    params: dict[str, Any] = field(default_factory=dict)

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Inverse frequencies in f32, computed as transformers computes them."""
        inv = _default_inv_freq(self.theta, head_dim)
        if self.kind in ("default", "dynamic"):
            return inv
        if self.kind == "linear":
            return (inv / np.float32(self.params["factor"])).astype(np.float32)
        if self.kind == "llama3":
            return _llama3(inv, self.params)
        return _WITH_ATTENTION_FACTOR[self.kind](self.theta, head_dim, self.params)[0]

    def attention_factor(self, head_dim: int) -> float:
        """What cos and sin are multiplied by (1 except for YaRN and LongRoPE)."""
        fn = _WITH_ATTENTION_FACTOR.get(self.kind)
        return fn(self.theta, head_dim, self.params)[1] if fn else 1.0

    def describe(self) -> dict[str, Any]:
        return {"rope_type": self.kind, "rope_theta": self.theta, **self.params}


def read_rope(cfg: dict[str, Any], where: str, max_position_embeddings: int) -> tuple[RopeSpec, list[str]]:
    """The model's rotary embedding and the warnings its settings raised (unknown sub-keys).

    `where` names the file in errors. Raises CheckpointError naming the key for a rope type we
    do not implement, a per-layer-type form whose entries disagree, or partial rotary.
    """
    source = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    raw = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: {source} must be an object, got {raw!r}")
    top_theta = cfg.get("rope_theta", DEFAULT_THETA)
    layer_types = set(cfg.get("layer_types") or ())
    nested = {k: v for k, v in raw.items() if k in layer_types}
    flat = {k: v for k, v in raw.items() if k not in nested}
    spec, warnings = _one_rope(flat, source, where, top_theta, cfg, max_position_embeddings)
    for layer_type, entry in nested.items():
        if entry is None:
            continue
        other, more = _one_rope(dict(entry), f"{source}.{layer_type}", where, top_theta, cfg,
                                max_position_embeddings)
        warnings += more
        if other != spec:
            raise CheckpointError(
                f"{where}: {source}.{layer_type} {other.describe()} differs from the top-level rope settings "
                f"{spec.describe()}; this architecture applies one rotary embedding to every layer "
                "(transformers reads only the top-level settings): make them agree")
    return spec, warnings


def _one_rope(d: dict[str, Any], source: str, where: str, top_theta: Any, cfg: dict[str, Any],
              max_position_embeddings: int) -> tuple[RopeSpec, list[str]]:
    kind = str(d.get("rope_type", d.get("type", "default")))
    if kind not in TYPE_KEYS:
        raise CheckpointError(f"{where}: {source} type '{kind}' is not supported "
                              f"(supported: {', '.join(TYPE_KEYS)})")
    partial = d.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial is not None and float(partial) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor {partial} is not supported "
                              "(this architecture rotates the whole head; supported: 1.0)")
    for key in REQUIRED_KEYS.get(kind, ()):
        if d.get(key) is None:
            raise CheckpointError(f"{where}: {source} type '{kind}' needs '{key}'")
    params = {k: v for k, v in d.items() if k in TYPE_KEYS[kind]}
    if kind in ("llama3", "yarn", "dynamic", "longrope"):
        orig = cfg.get("original_max_position_embeddings", d.get("original_max_position_embeddings"))
        params["original_max_position_embeddings"] = int(orig if orig is not None else max_position_embeddings)
    if kind in ("yarn", "longrope"):
        params["max_position_embeddings"] = max_position_embeddings  # default factor = max / original
    warnings = [f"{where}: {source} key '{k}' = {v!r} is not read for rope type '{kind}' and was ignored"
                for k, v in d.items() if k not in COMMON_KEYS | TYPE_KEYS[kind]]
    theta = d.get("rope_theta", top_theta)
    return RopeSpec(kind, float(DEFAULT_THETA if theta is None else theta), params), warnings


def _default_inv_freq(theta: float, dim: int) -> np.ndarray:
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)


def _llama3(inv: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's band-wise scaling: long wavelengths divided by factor, short ones kept,
    the band between interpolated smoothly."""
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_ctx = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(theta: float, dim: int, p: dict[str, Any]) -> tuple[np.ndarray, float]:
    """YaRN (Peng et al. 2023): per-dimension blend of interpolated and extrapolated frequencies
    over a ramp set by beta_fast/beta_slow, and an attention factor from the scale."""
    orig = p["original_max_position_embeddings"]
    factor = p.get("factor")
    if factor is None:
        factor = p["max_position_embeddings"] / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    pos_freqs = np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (np.float32(factor) * pos_freqs)
    keep = 1 - ramp
    return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32), float(attention)


def _longrope(theta: float, dim: int, p: dict[str, Any]) -> tuple[np.ndarray, float]:
    """LongRoPE with its short factors (the regime of every sequence within
    original_max_position_embeddings): inv_freq = 1 / (short_factor * theta^(2i/dim)), and an
    attention factor sqrt(1 + ln(factor) / ln(original)) unless the config gives one."""
    short = np.asarray(p["short_factor"], np.float32)
    if short.shape != (dim // 2,) or len(p["long_factor"]) != dim // 2:
        raise CheckpointError(f"longrope short_factor / long_factor must have head_dim / 2 = {dim // 2} entries, "
                              f"got {short.size} / {len(p['long_factor'])}")
    orig = p["original_max_position_embeddings"]
    factor = p.get("factor") or p["max_position_embeddings"] / orig
    attention = p.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (np.float32(1.0) / (short * np.float32(theta) ** exponents)).astype(np.float32), float(attention)


# rope types computed as (inverse frequencies, attention factor)
_WITH_ATTENTION_FACTOR = {"yarn": _yarn, "longrope": _longrope}
