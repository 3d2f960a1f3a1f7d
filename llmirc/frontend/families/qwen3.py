"""Qwen3 (dense): Qwen2's layout without the q/k/v bias, plus an RMSNorm over each head of q and k
(`self_attn.q_norm` / `k_norm`, weight [head_dim]) before the rotary embedding."""

from __future__ import annotations

from .base import Family, flag
from .qwen2 import _windows


def _choices(cfg: dict, where: str) -> dict:
    bias = flag(cfg, "attention_bias")
    return {"qkv_bias": bias, "o_bias": bias, "mlp_bias": False, "qk_norm": True}


FAMILY = Family(
    name="qwen3", architectures=("Qwen3ForCausalLM",),
    summary="Qwen3 dense: Llama blocks with per-head q_norm / k_norm (RMSNorm over head_dim)",
    choices=_choices, reads=frozenset({"attention_bias", "use_sliding_window", "max_window_layers"}),
    layer_windows=_windows,
    features=("GQA", "per-head q/k RMSNorm", "explicit head_dim", "tied embeddings", "use_sliding_window"),
)
