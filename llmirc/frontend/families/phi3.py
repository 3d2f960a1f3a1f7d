"""Phi-3: Llama blocks whose checkpoint fuses q/k/v into `self_attn.qkv_proj` and gate/up into
`mlp.gate_up_proj` (split back into the IR's separate weights at load, rows in that order),
with transformers' `sliding_window` in every layer. LongRoPE (the 128k models) is compiled in
its short-factor regime, i.e. for --max-seq-len up to original_max_position_embeddings (rope.py);
a longer compiled length is refused."""

from __future__ import annotations

from .base import Family, window_everywhere


def _choices(cfg: dict, where: str) -> dict:
    return {"qkv_bias": False, "o_bias": False, "mlp_bias": False}


FAMILY = Family(
    name="phi3", architectures=("Phi3ForCausalLM",),
    summary="Phi-3: Llama blocks, fused qkv_proj / gate_up_proj in the checkpoint, sliding window",
    choices=_choices,
    inert={"resid_pdrop": "dropout is off at inference", "embd_pdrop": "dropout is off at inference"},
    layer_windows=window_everywhere,
    fused={"self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                         "self_attn.v_proj.weight"),
           "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight")},
    features=("fused qkv_proj / gate_up_proj", "sliding_window in every layer", "GQA",
              "longrope within original_max_position_embeddings"),
    refused=("longrope past original_max_position_embeddings", "partial rotary"),
)
