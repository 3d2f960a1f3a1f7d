"""Model configuration read from a Hugging Face config.json, for every registered family.

Every key of config.json falls under one rule (config_keys.py): read here and implemented,
or refused with one line naming the key and its value; known to be inert; or unknown, which
gives one warning line. No default ever stands in for a value the checkpoint gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .config_keys import unknown_key_warnings
from .families import family_for
from .rope import RopeSpec, read_rope

@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer: its sizes and the block choices its family made
    (families/: biases, per-head q/k norms); the builder in decoder.py reads only this."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_seq_len: int
    rms_norm_eps: float = 1e-6
    rope: RopeSpec = RopeSpec()
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head of q and k before rope (Qwen3)
    layer_windows: tuple[int, ...] = ()  # per layer: sliding-window size, 0 = full causal (() = all 0)
    embed_scale: float = 1.0       # embeddings times this (Gemma: sqrt(hidden))
    sandwich_norms: bool = False   # norms after attention and around the MLP too (Gemma 2)
    attn_softcap: float = 0.0      # attention scores soft-capped (Gemma 2); 0: off
    final_softcap: float = 0.0     # logits soft-capped (Gemma 2); 0: off
    query_scale: float | None = None  # q.k scale base instead of head_dim (Gemma 2 query_pre_attn_scalar)
    norm: str = "rms"              # "rms": RMSNorm; "layer": LayerNorm with a bias (GPT-2, Falcon)
    layer_norm_eps: float = 1e-5   # the LayerNorm's epsilon (norm "layer")
    mlp: str = "gated"             # "gated": down(act(gate) * up); "plain": down(act(up)) (GPT-2, Falcon)
    learned_positions: int = 0     # rows of a learned absolute position table added to the embeddings
    #                                (GPT-2's wpe) instead of rotary embeddings; 0: rope
    parallel_block: bool = False   # attention and MLP both read the block input; one residual (Falcon)
    parallel_mlp_norm: bool = False  # in a parallel block the MLP norms the input itself (Falcon's ln_mlp)
    scale_attn_weights: bool = True  # q.k scaled by 1/sqrt(head_dim) (GPT-2 can turn it off)
    attn_scale_by_layer: bool = False  # and by 1 / (layer + 1) (GPT-2 scale_attn_by_inverse_layer_idx)
    num_experts: int = 0           # > 0: a sparse mixture-of-experts MLP of this many experts (Mixtral)
    experts_per_token: int = 0     # the top-k experts each token is routed to
    router_normalize: bool = True  # the k routing weights renormalised to sum 1 (Mixtral always does)
    family: str = "llama"
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    architecture: str = "LlamaForCausalLM"
    torch_dtype: str = "float32"
    extra: dict = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # one line each, printed by the compiler

    def inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies in f32 (any rope scaling folded in: `llm.rope` takes only these)."""
        return self.rope.inv_freq(self.head_dim)

    def attention_scale(self, layer: int = 0) -> float:
        """Scale of q.k in `layer`: 1/sqrt(head_dim), times the square of the rope's attention
        factor (YaRN scales cos and sin, hence both q and k); GPT-2 may drop the 1/sqrt(head_dim)
        and divide by layer + 1."""
        base = self.query_scale if self.query_scale is not None else self.head_dim
        scale = base ** -0.5 if self.scale_attn_weights else 1.0
        if self.learned_positions == 0:
            scale *= self.rope.attention_factor(self.head_dim) ** 2
        return scale / (layer + 1) if self.attn_scale_by_layer else scale

    def window(self, layer: int) -> int:
        return self.layer_windows[layer] if self.layer_windows else 0

    def summary(self) -> dict:
        return {"architecture": self.architecture, "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "num_layers": self.num_layers, "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "max_seq_len": self.max_seq_len, "bos_token_id": self.bos_token_id,
                "eos_token_id": list(self.eos_token_ids)}


def _require(cfg: dict, key: str, path: Path):
    if key not in cfg:
        raise CheckpointError(f"{path}: missing required key '{key}'")
    return cfg[key]


def _given(cfg: dict, key: str, default):
    """cfg[key], or `default` only when the key is absent or null (never for a given value)."""
    value = cfg.get(key)
    return default if value is None else value


ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
# transformers' ACT2FN names -> the gate activation of the gated MLP (decoder.py)
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh"}


def _attention_windows(cfg: dict, path: Path, seq_len: int, num_layers: int, family) -> tuple[int, ...]:
    """Each layer's sliding window as the family applies it (0: full causal). A window at
    least as long as the compiled sequence never drops a key, so it is stored as 0."""
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != num_layers:
            raise CheckpointError(f"{path}: layer_types must list one type per layer ({num_layers}), "
                                  f"got {layer_types!r}")
        unknown = sorted(set(layer_types) - set(ATTENTION_LAYER_TYPES))
        if unknown:
            raise CheckpointError(f"{path}: layer_types '{unknown[0]}' is not supported "
                                  f"(supported: {', '.join(ATTENTION_LAYER_TYPES)})")
    windows = family.layer_windows(cfg, num_layers)
    if any(w < 0 for w in windows):
        raise CheckpointError(f"{path}: sliding_window {cfg.get('sliding_window')} must be positive (or null)")
    return tuple(w if w < seq_len else 0 for w in windows)


def load_config(checkpoint_dir: Path, max_seq_len: int | None = None) -> ModelConfig:
    """Read and validate config.json; errors name the file and the key."""
    path = Path(checkpoint_dir) / "config.json"
    if not Path(checkpoint_dir).is_dir():
        raise CheckpointError(f"{checkpoint_dir}: checkpoint directory does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing config.json (expected a Hugging Face checkpoint directory)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    return config_from_dict(cfg, path, max_seq_len)


def config_from_dict(cfg: dict, path: Path | str, max_seq_len: int | None = None) -> ModelConfig:
    """The ModelConfig of a config.json-shaped dict; `path` is what error lines name (a GGUF
    file's metadata is mapped onto this dict, so both formats share every rule here)."""
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    arch = archs[0]
    family = family_for(arch, str(path))
    raw = cfg  # what the file says: unknown-key warnings and `extra` are about these keys
    if family.common_keys is not None:  # the common keys read below, from the family's own (GPT-2's n_embd)
        cfg = cfg | family.common_keys(cfg, str(path))
    hidden = int(_require(cfg, "hidden_size", path))
    heads = int(_require(cfg, "num_attention_heads", path))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise CheckpointError(f"{path}: num_attention_heads {heads} is not a multiple of "
                              f"num_key_value_heads {kv_heads}")
    act_key = family.activation_key
    act = cfg.get(act_key) or family.activation_default
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(f"{path}: {act_key} '{act}' is not supported "
                              f"(supported: {', '.join(HF_ACTIVATIONS)})")
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    ctx = int(cfg.get("max_position_embeddings") or 2048)
    seq_len = min(ctx, max_seq_len) if max_seq_len else ctx
    layers = int(_require(cfg, "num_hidden_layers", path))
    windows = _attention_windows(cfg, path, seq_len, layers, family)
    rope, rope_warnings = read_rope(cfg, str(path), ctx)
    try:
        rope.inv_freq(head_dim)  # a factor list of the wrong length is refused now, with the file named
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    orig = rope.params.get("original_max_position_embeddings", seq_len)
    if rope.kind == "longrope" and seq_len > orig:
        raise CheckpointError(
            f"{path}: rope type 'longrope' switches to its long_factor once a sequence passes "
            f"original_max_position_embeddings ({orig}) and keeps the keys already cached as they were; "
            f"llmirc compiles the short-factor regime exactly: use --max-seq-len {orig} or less")
    config = ModelConfig(
        vocab_size=int(_require(cfg, "vocab_size", path)),
        hidden_size=hidden,
        intermediate_size=int(_require(cfg, "intermediate_size", path)),
        num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        max_seq_len=seq_len,
        rms_norm_eps=float(_given(cfg, "rms_norm_eps", 1e-6)),
        hidden_act=HF_ACTIVATIONS[act],
        rope=rope,
        tie_word_embeddings=bool(_given(cfg, "tie_word_embeddings", family.tied_default)),
        **family.choices(cfg, str(path)),
        layer_windows=windows,
        family=family.name,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
        architecture=arch,
        torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
        extra=raw,
        warnings=tuple(unknown_key_warnings(raw, str(path), family.reads, family.inert) + rope_warnings),
    )
    return config


LlamaConfig = ModelConfig  # the name before the architecture registry; kept for callers of 0.1
