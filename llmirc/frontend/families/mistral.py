"""Mistral: Llama's blocks without biases, and a sliding attention window (config `sliding_window`)."""

from __future__ import annotations

from .base import Family, window_everywhere


def _choices(cfg: dict, where: str) -> dict:
    return {"qkv_bias": False, "o_bias": False, "mlp_bias": False}


FAMILY = Family(
    name="mistral", architectures=("MistralForCausalLM",),
    summary="Mistral 7B and Mistral-style models: Llama blocks, no biases, optional sliding window",
    choices=_choices, layer_windows=window_everywhere,
    features=("GQA", "sliding-window attention in every layer (sliding_window; null: none)"),
)
