"""The Family record every family module fills in (see families/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Choices = Callable[[dict[str, Any], str], dict[str, Any]]
Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class TensorSource:
    """Where one IR weight lies in a checkpoint whose layout is not the IR's: a tensor of
    another name, stored transposed (GPT-2's Conv1D keeps [in, out], the IR's linear [out, in]),
    and/or some row ranges of a fused tensor (q, k, v of GPT-2's c_attn or of Falcon's
    interleaved query_key_value), concatenated in order. Rows count after the transpose."""

    tensor: str
    rows: tuple[tuple[int, int], ...] | None = None  # None: every row
    transpose: bool = False

    def take(self, value: Any) -> Any:
        """This IR weight's part of the checkpoint tensor `value` (a numpy array)."""
        import numpy as np

        if self.transpose:
            value = value.T
        if self.rows is not None:
            value = np.concatenate([value[a:b] for a, b in self.rows]) if len(self.rows) > 1 else \
                value[self.rows[0][0]:self.rows[0][1]]
        return np.ascontiguousarray(value)


    @property
    def tensors(self) -> tuple[str, ...]:
        """The checkpoint tensors this IR weight is read from."""
        return (self.tensor,)


@dataclass(frozen=True)
class StackedSource:
    """An IR weight [experts, rows, cols] stacked from one slice per expert, slice e the rows of
    the tensors `parts[e]` concatenated in order (each of rows / len(parts[e]) rows): Mixtral's
    per-expert `experts.<e>.w1` / `w3` (gate, up) and `w2` as transformers 4 and 5 save them."""

    parts: tuple[tuple[str, ...], ...]

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(t for part in self.parts for t in part)

    def take_from(self, load: Callable[[str], Any]) -> Any:
        """The stacked IR weight, reading each tensor through `load` (name -> numpy array)."""
        import numpy as np

        return np.stack([np.concatenate([load(t) for t in part]) if len(part) > 1 else load(part[0])
                         for part in self.parts])


# (the model's config, its IR weight shapes, the checkpoint's name prefix) -> the source of every
# IR weight that is not the checkpoint tensor of the same name
Sources = Callable[[Any, Shapes, str], dict[str, "TensorSource | StackedSource"]]


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
    # the source of each IR weight in checkpoints laid out otherwise (GPT-2, Falcon); None: the
    # tensor of the IR name, or its rows of a `fused` one
    tensor_sources: Sources | None = None
    # what a checkpoint may put before the base model's tensor names: the first prefix under which
    # every source tensor exists is used (GPT2LMHeadModel saves `transformer.h.0...`, GPT2Model `h.0...`)
    checkpoint_prefixes: tuple[str, ...] = ("",)
    # the checkpoint may also hold every IR weight under its IR name (transformers 5's fused
    # Mixtral experts, `mlp.experts.gate_up_proj`): that layout is tried after tensor_sources' ones
    ir_named_layout: bool = False
    # config.json -> the common keys (hidden_size, num_attention_heads, ...) for a family that
    # spells them otherwise (GPT-2's n_embd, Falcon's ffn_hidden_size); they override the file's
    common_keys: Callable[[dict[str, Any], str], dict[str, Any]] | None = None
    activation_default: str = "silu"                   # transformers' default when the key is absent
    tied_default: bool = False                          # transformers' tie_word_embeddings default
    features: tuple[str, ...] = ()                     # one phrase each, for `llmirc models`
    refused: tuple[str, ...] = ()                      # what this family refuses, for `llmirc models`


def flag(cfg: dict[str, Any], key: str, default: bool = False) -> bool:
    """A boolean key: the default only when absent or null."""
    value = cfg.get(key)
    return default if value is None else bool(value)


def renamed(name: str, top: Mapping[str, str], layer: Mapping[str, str], layers_as: str = "h.") -> str:
    """An IR weight name in a checkpoint that names modules otherwise: `model.layers.<i>.<m>.<p>`
    -> `<layers_as><i>.<layer[m]>.<p>`, `<m>.<p>` -> `<top[m]>.<p>` (a module not listed keeps its name)."""
    module, param = name.rsplit(".", 1)
    if module.startswith("model.layers."):
        i, m = module[len("model.layers."):].split(".", 1)
        return f"{layers_as}{i}.{layer.get(m, m)}.{param}"
    return f"{top.get(module, module)}.{param}"


def given(cfg: dict[str, Any], key: str, default: Any) -> Any:
    """cfg[key], or `default` only when the key is absent or null."""
    value = cfg.get(key)
    return default if value is None else value
