"""Qwen2 / Qwen2.5: Llama blocks with a bias on q, k and v only; a window only with use_sliding_window."""

from __future__ import annotations

from .base import Family, window_by_layer_type


def _choices(cfg: dict, where: str) -> dict:
    return {"qkv_bias": True, "o_bias": False, "mlp_bias": False}


def _windows(cfg: dict, num_layers: int) -> tuple[int, ...]:
    """transformers applies `sliding_window` only when `use_sliding_window` is true, and then
    from layer `max_window_layers` on (transformers 5 also writes that out as layer_types)."""
    if not cfg.get("use_sliding_window"):
        return (0,) * num_layers
    if cfg.get("layer_types"):
        return window_by_layer_type(cfg, num_layers)
    first = int(cfg.get("max_window_layers") or 0)
    return tuple(int(cfg.get("sliding_window") or 0) if i >= first else 0 for i in range(num_layers))


FAMILY = Family(
    name="qwen2", architectures=("Qwen2ForCausalLM",),
    summary="Qwen2 / Qwen2.5: Llama blocks, bias on q/k/v (not o), tied embeddings in the small sizes",
    choices=_choices, reads=frozenset({"use_sliding_window", "max_window_layers"}), layer_windows=_windows,
    features=("GQA", "q/k/v bias", "tied embeddings", "use_sliding_window (from max_window_layers on)"),
)
