"""Mistral: Llama's blocks without biases, and a sliding attention window (config `sliding_window`)."""

from __future__ import annotations

from .base import Family


def _choices(cfg: dict, where: str) -> dict:
    return {"qkv_bias": False, "o_bias": False, "mlp_bias": False}


FAMILY = Family(
    name="mistral", architectures=("MistralForCausalLM",),
    summary="Mistral 7B and Mistral-style models: Llama blocks, no biases, optional sliding window",
    choices=_choices,
    features=("GQA", "sliding_window at least the compiled length (null: none)"),
    refused=("sliding_window shorter than the compiled length (compile with --max-seq-len <= window)",),
)
