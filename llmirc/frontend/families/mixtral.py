"""Mixtral: Mistral's attention (GQA, rope as Llama, `sliding_window` in every layer) with a
sparse mixture-of-experts MLP: a router picks each token's top `num_experts_per_tok` of
`num_local_experts` SwiGLU experts and the block returns their outputs weighted by the
renormalised router probabilities (transformers' MixtralSparseMoeBlock).

The IR holds the experts as transformers 5 does in memory, stacked: `mlp.experts.gate_up_proj`
[E, 2 x inter, hidden] (gate rows, then up) and `mlp.experts.down_proj` [E, hidden, inter], and
the router as `mlp.gate.weight`. transformers (4, and 5's save_pretrained, which converts back)
writes the original per-expert layout, `block_sparse_moe.experts.<e>.w1 / w3 / w2` and
`block_sparse_moe.gate`: stacked at load (layout.py). A checkpoint already in the fused layout
is read as is.

Inert at inference: `router_jitter_noise` (transformers multiplies the router's input by uniform
noise only when `self.training`), `output_router_logits` (whether the router logits are returned,
for the auxiliary loss) and `router_aux_loss_coef` (that loss's weight).
"""

from __future__ import annotations

from ...errors import CheckpointError
from .base import Family, StackedSource, TensorSource, window_everywhere


def _choices(cfg: dict, where: str) -> dict:
    experts, k = int(cfg.get("num_local_experts") or 8), int(cfg.get("num_experts_per_tok") or 2)
    if not 1 <= k <= experts:
        raise CheckpointError(f"{where}: num_experts_per_tok {k} must be in [1, num_local_experts={experts}]")
    return {"qkv_bias": False, "o_bias": False, "mlp_bias": False, "num_experts": experts,
            "experts_per_token": k, "router_normalize": True}


def _sources(c, shapes, prefix: str) -> dict[str, TensorSource | StackedSource]:
    """The per-expert layout: router `block_sparse_moe.gate`, expert e's gate/up rows from w1 / w3,
    its down projection from w2."""
    out: dict[str, TensorSource | StackedSource] = {}
    for i in range(c.num_layers):
        ir, ck = f"model.layers.{i}.mlp.", f"{prefix}model.layers.{i}.block_sparse_moe."
        experts = [f"{ck}experts.{e}." for e in range(c.num_experts)]
        out[ir + "gate.weight"] = TensorSource(ck + "gate.weight")
        out[ir + "experts.gate_up_proj"] = StackedSource(tuple((e + "w1.weight", e + "w3.weight") for e in experts))
        out[ir + "experts.down_proj"] = StackedSource(tuple((e + "w2.weight",) for e in experts))
    return out


FAMILY = Family(
    name="mixtral", architectures=("MixtralForCausalLM",),
    summary="Mixtral: Mistral attention + sparse MoE MLP (top-k of N SwiGLU experts, renormalised router weights)",
    choices=_choices, layer_windows=window_everywhere, tensor_sources=_sources, ir_named_layout=True,
    reads=frozenset({"num_local_experts", "num_experts_per_tok"}),
    inert={"router_jitter_noise": "router input noise, applied by transformers only in training",
           "output_router_logits": "what transformers returns (router logits for the auxiliary loss), not what "
           "it computes", "router_aux_loss_coef": "the weight of the load-balancing loss; training only"},
    features=("sparse MoE (num_local_experts, num_experts_per_tok; router softmax, top-k, renormalised)",
              "per-expert w1/w2/w3 (stacked at load) or fused experts.gate_up_proj / down_proj",
              "sliding-window attention in every layer (sliding_window; null: none)", "GQA"),
)
