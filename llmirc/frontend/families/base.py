"""The Family record every family module fills in (see families/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Choices = Callable[[dict[str, Any], str], dict[str, Any]]


def no_window(cfg: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """Full causal attention in every layer (0 = no window)."""
    return (0,) * num_layers


def window_everywhere(cfg: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """`sliding_window` (null: none) in every layer."""
    return (int(cfg.get("sliding_window") or 0),) * num_layers


def window_by_layer_type(cfg: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """`sliding_window` in the layers `layer_types` marks sliding_attention."""
    window = int(cfg.get("sliding_window") or 0)
    types = cfg.get("layer_types") or ["full_attention"] * num_layers
    return tuple(window if t == "sliding_attention" else 0 for t in types)


@dataclass(frozen=True)
class Family:
    """One model family: what config.json says and which decoder blocks that selects."""

    name: str
    architectures: tuple[str, ...]
    summary: str
    choices: Choices                                   # config.json -> ModelConfig block fields
    reads: frozenset[str] = frozenset()                # family keys read by `choices`
    inert: Mapping[str, str] = field(default_factory=dict)  # family keys that do not change numerics
    # the attention window of each layer (0: full causal), as transformers applies it
    layer_windows: Callable[[dict[str, Any], int], tuple[int, ...]] = no_window
    activation_key: str = "hidden_act"                 # the key naming the MLP's gate activation
    # name, f32 array -> the array the IR's weight holds (Gemma stores RMSNorm weights as w - 1)
    tensor_transform: Callable[[str, Any], Any] | None = None
    # checkpoint tensor suffix -> the IR weight suffixes it holds, stacked along dim 0 in this
    # order (Phi-3's qkv_proj); the loader slices them apart
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    features: tuple[str, ...] = ()                     # one phrase each, for `llmirc models`
    refused: tuple[str, ...] = ()                      # what this family refuses, for `llmirc models`


def flag(cfg: dict[str, Any], key: str, default: bool = False) -> bool:
    """A boolean key: the default only when absent or null."""
    value = cfg.get(key)
    return default if value is None else bool(value)
