"""Gemma 2: Gemma plus norms around attention and MLP (pre/post feed-forward), soft-capped
attention scores and logits, sliding-window layers (layer_types), and a q.k scale from
query_pre_attn_scalar."""

from __future__ import annotations

from .base import Family, window_by_layer_type
from .gemma import gemma_blocks, norm_plus_one


def _blocks(cfg: dict, where: str) -> dict:
    return gemma_blocks(cfg, where) | {
        "sandwich_norms": True,
        "attn_softcap": float(cfg.get("attn_logit_softcapping") or 0.0),
        "final_softcap": float(cfg.get("final_logit_softcapping") or 0.0),
        "query_scale": float(cfg["query_pre_attn_scalar"]) if cfg.get("query_pre_attn_scalar") else None,
    }


FAMILY = Family(
    name="gemma2", architectures=("Gemma2ForCausalLM",),
    summary="Gemma 2: Gemma blocks + pre/post feed-forward norms, attention and final logit soft-capping, "
            "alternating sliding/global layers, query_pre_attn_scalar",
    choices=_blocks, activation_key="hidden_activation",
    reads=frozenset({"attention_bias", "use_bidirectional_attention", "attn_logit_softcapping",
                     "final_logit_softcapping", "query_pre_attn_scalar"}),
    inert={"cache_implementation": "which KV cache class transformers uses; llmirc pages its own"},
    layer_windows=window_by_layer_type, tensor_transform=norm_plus_one,
    features=("GeGLU", "RMSNorm (1 + w)", "sandwich norms", "attention + final logit soft-capping",
              "sliding/global layers", "query_pre_attn_scalar"),
    refused=("use_bidirectional_attention",),
)
