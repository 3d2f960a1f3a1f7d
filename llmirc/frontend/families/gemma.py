"""Gemma: Llama's layout with GeGLU (tanh gelu), embeddings scaled by sqrt(hidden), tied
embeddings, and RMSNorm weights stored as w - 1 (the norm multiplies by 1 + w)."""

from __future__ import annotations

import math

import numpy as np

from ...errors import CheckpointError
from .base import Family, flag


def norm_plus_one(name: str, w: np.ndarray) -> np.ndarray:
    """Gemma's RMSNorm computes x_hat * (1 + w) in f32: fold the 1 into the weight once."""
    return (w.astype(np.float32) + np.float32(1.0)) if name.endswith("norm.weight") else w


def gemma_blocks(cfg: dict, where: str) -> dict:
    if cfg.get("use_bidirectional_attention"):
        raise CheckpointError(f"{where}: use_bidirectional_attention {cfg['use_bidirectional_attention']!r} is not "
                              "supported (a causal LM attends to earlier positions only)")
    bias = flag(cfg, "attention_bias")
    return {"qkv_bias": bias, "o_bias": bias, "mlp_bias": False,
            "embed_scale": float(np.float32(math.sqrt(int(cfg["hidden_size"]))))}


FAMILY = Family(
    name="gemma", architectures=("GemmaForCausalLM",),
    summary="Gemma: GeGLU (tanh gelu), RMSNorm with (1 + w), embeddings x sqrt(hidden), tied embeddings",
    choices=gemma_blocks, reads=frozenset({"attention_bias", "use_bidirectional_attention"}),
    tensor_transform=norm_plus_one,
    features=("GeGLU", "RMSNorm (1 + w)", "embedding scale", "head_dim 256 or any", "MQA/GQA"),
    refused=("use_bidirectional_attention",),
)
