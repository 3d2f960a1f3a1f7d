"""Llama (1, 2, 3.x) and Llama-shaped checkpoints: `attention_bias` puts a bias on q, k, v and o.

Full causal attention in every layer: transformers' Llama does not read `sliding_window`.
"""

from __future__ import annotations

from .base import Family, flag


def _choices(cfg: dict, where: str) -> dict:
    bias = flag(cfg, "attention_bias")
    return {"qkv_bias": bias, "o_bias": bias, "mlp_bias": flag(cfg, "mlp_bias")}


FAMILY = Family(
    name="llama", architectures=("LlamaForCausalLM",),
    summary="Llama 1/2/3.x: RMSNorm, SwiGLU, rotary (default/linear/llama3/yarn/dynamic), GQA",
    choices=_choices, reads=frozenset({"attention_bias", "mlp_bias"}),
    inert={"pretraining_tp": "a tensor-parallel split of the matmuls used in pretraining; the same math"},
    features=("GQA/MQA", "attention_bias (q, k, v, o)", "mlp_bias", "tied embeddings"),
    refused=("partial rotary",),
)
