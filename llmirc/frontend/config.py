"""Model configuration read from a Hugging Face config.json (Llama family)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_seq_len: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    architecture: str = "LlamaForCausalLM"
    torch_dtype: str = "float32"
    extra: dict = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # one line each, printed by the compiler

    def inv_freq(self) -> np.ndarray:
        """Rotary inverse frequencies in f32, computed exactly as transformers does.

        Any rope scaling is folded in here, so `llm.rope` only needs this array.
        """
        d = self.head_dim
        base = np.float32(self.rope_theta)
        inv = (1.0 / (base ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)))).astype(np.float32)
        s = self.rope_scaling
        kind = (s or {}).get("rope_type", (s or {}).get("type", "default"))
        if kind == "default":
            return inv
        if kind == "linear":
            return (inv / np.float32(s["factor"])).astype(np.float32)
        if kind == "llama3":
            return _llama3_inv_freq(inv, s)
        raise CheckpointError(f"config.json: rope_scaling type '{kind}' is not supported "
                              "(supported: default, linear, llama3)")

    def summary(self) -> dict:
        return {"architecture": self.architecture, "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                "num_layers": self.num_layers, "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "max_seq_len": self.max_seq_len, "bos_token_id": self.bos_token_id,
                "eos_token_id": list(self.eos_token_ids)}


def _llama3_inv_freq(inv: np.ndarray, s: dict) -> np.ndarray:
    """transformers' _compute_llama3_parameters, in f32."""
    factor = s["factor"]
    low, high = s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_ctx = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _require(cfg: dict, key: str, path: Path):
    if key not in cfg:
        raise CheckpointError(f"{path}: missing required key '{key}'")
    return cfg[key]


def load_config(checkpoint_dir: Path, max_seq_len: int | None = None) -> LlamaConfig:
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
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture '{arch}' is not supported "
                              f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    hidden = int(_require(cfg, "hidden_size", path))
    heads = int(_require(cfg, "num_attention_heads", path))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise CheckpointError(f"{path}: num_attention_heads {heads} is not a multiple of "
                              f"num_key_value_heads {kv_heads}")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{path}: hidden_act '{act}' is not supported (Llama uses silu)")
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    ctx = int(cfg.get("max_position_embeddings", 2048))
    config = LlamaConfig(
        vocab_size=int(_require(cfg, "vocab_size", path)),
        hidden_size=hidden,
        intermediate_size=int(_require(cfg, "intermediate_size", path)),
        num_layers=int(_require(cfg, "num_hidden_layers", path)),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        max_seq_len=min(ctx, max_seq_len) if max_seq_len else ctx,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rope_scaling=cfg.get("rope_scaling"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
        architecture=arch,
        torch_dtype=str(cfg.get("torch_dtype", cfg.get("dtype", "float32"))),
        extra=cfg,
    )
    config.inv_freq()  # reject unsupported rope scaling now, with the file named
    return config
