"""Qwen2 / Qwen2.5: Llama blocks with a bias on q, k and v only; a window only with use_sliding_window."""

from __future__ import annotations

from .base import Family


def _choices(cfg: dict, where: str) -> dict:
    return {"qkv_bias": True, "o_bias": False, "mlp_bias": False}


def _window(cfg: dict) -> int | None:
    """transformers applies `sliding_window` only when `use_sliding_window` is true (and then
    from layer `max_window_layers` on, which transformers 5 also writes out as layer_types)."""
    return cfg.get("sliding_window") if cfg.get("use_sliding_window") else None


FAMILY = Family(
    name="qwen2", architectures=("Qwen2ForCausalLM",),
    summary="Qwen2 / Qwen2.5: Llama blocks, bias on q/k/v (not o), tied embeddings in the small sizes",
    choices=_choices, reads=frozenset({"use_sliding_window", "max_window_layers"}), window=_window,
    features=("GQA", "q/k/v bias", "tied embeddings", "use_sliding_window false"),
    refused=("use_sliding_window with a window shorter than the compiled length",),
)
