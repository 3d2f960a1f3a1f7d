"""Falcon: rotary attention whose q, k and v are one fused `query_key_value`, a plain gelu MLP
(dense_h_to_4h -> gelu -> dense_4h_to_h), LayerNorm with a bias, `bias` on every linear, and
attention and MLP in parallel from the block input.

Both layouts transformers reads: `new_decoder_architecture` (Falcon 40B/180B: GQA with
`num_kv_heads`, separate ln_attn / ln_mlp unless num_ln_in_parallel_attn is 1) and the
original one (7B: multi_query gives one KV head, else one per head; one input_layernorm, and
a sequential block when parallel_attn is false). query_key_value is interleaved per KV group,
as [kv_heads, heads / kv_heads + 2, head_dim] (the group's queries, then its key and value);
that one formula covers all three forms (multi-query: one group; per-head k/v: one query per
group). ALiBi (`alibi`: the RW 1B models) is refused by name.
"""

from __future__ import annotations

from ...errors import CheckpointError
from .base import Family, TensorSource, flag, given, renamed

_TOP = {"model.embed_tokens": "word_embeddings", "model.norm": "ln_f"}
_LAYER = {"self_attn.o_proj": "self_attention.dense", "mlp.up_proj": "mlp.dense_h_to_4h",
          "mlp.down_proj": "mlp.dense_4h_to_h", "pre_feedforward_layernorm": "ln_mlp"}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def _refuse(where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what} is not supported")


def _common(cfg: dict, where: str) -> dict:
    """The KV heads transformers' Falcon uses (num_kv_heads only in the new layout) and the MLP width."""
    heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    if heads is None or hidden is None:
        return {}  # load_config names the missing key
    new, multi_query = flag(cfg, "new_decoder_architecture"), flag(cfg, "multi_query", True)
    kv = int(given(cfg, "num_kv_heads", heads))
    if not new and not multi_query and kv != int(heads):
        raise _refuse(where, f"num_kv_heads {kv} with multi_query and new_decoder_architecture false "
                      f"(that layout has one key/value head per head, {heads})")
    return {"num_key_value_heads": kv if new else (1 if multi_query else int(heads)),
            "intermediate_size": int(given(cfg, "ffn_hidden_size", 4 * int(hidden)))}


def _choices(cfg: dict, where: str) -> dict:
    if flag(cfg, "alibi"):
        raise _refuse(where, "alibi True (ALiBi attention biases)")
    if flag(cfg, "apply_residual_connection_post_layernorm"):
        raise _refuse(where, "apply_residual_connection_post_layernorm True")
    new, parallel = flag(cfg, "new_decoder_architecture"), flag(cfg, "parallel_attn", True)
    norms = cfg.get("num_ln_in_parallel_attn")
    if new:
        norms = 2 if norms is None else int(norms)
        if not parallel or norms not in (1, 2):  # transformers cannot build these either
            raise _refuse(where, f"new_decoder_architecture with parallel_attn {parallel!r} and "
                          f"num_ln_in_parallel_attn {norms!r} (supported: parallel_attn true, 1 or 2 norms)")
    elif parallel and norms == 2:
        raise _refuse(where, "num_ln_in_parallel_attn 2 without new_decoder_architecture")
    bias = flag(cfg, "bias")
    return {"qkv_bias": bias, "o_bias": bias, "mlp_bias": bias, "norm": "layer", "mlp": "plain",
            "layer_norm_eps": float(given(cfg, "layer_norm_epsilon", 1e-5)),
            "parallel_block": new or parallel, "parallel_mlp_norm": new and norms == 2}


def qkv_rows(c, part: int) -> tuple[tuple[int, int], ...]:
    """Rows of query_key_value holding q (part 0), k (1) or v (2): per KV group g, the group's
    heads / kv_heads query heads, then its key, then its value, head_dim rows each."""
    d, group = c.head_dim, c.num_heads // c.num_kv_heads
    span = (group + 2) * d
    first, size = ((0, group * d), (group * d, d), ((group + 1) * d, d))[part]
    return tuple((g * span + first, g * span + first + size) for g in range(c.num_kv_heads))


def _sources(c, shapes, prefix: str) -> dict[str, TensorSource]:
    layer = _LAYER | ({"input_layernorm": "ln_attn"} if c.parallel_mlp_norm else {})
    out: dict[str, TensorSource] = {}
    for name in shapes:
        if name.startswith("lm_head."):
            continue
        module, param = name.rsplit(".", 1)
        part = next((i for i, m in enumerate(_QKV) if module.endswith(m)), None)
        if part is not None:
            i = module.split(".")[2]
            out[name] = TensorSource(f"{prefix}h.{i}.self_attention.query_key_value.{param}", rows=qkv_rows(c, part))
        else:
            out[name] = TensorSource(prefix + renamed(name, _TOP, layer))
    return out


FAMILY = Family(
    name="falcon", architectures=("FalconForCausalLM", "FalconModel"),
    summary="Falcon: rotary, fused interleaved query_key_value, parallel attention + gelu MLP, LayerNorm, "
            "multi-query or GQA (new_decoder_architecture)",
    choices=_choices, common_keys=_common, activation_key="activation", activation_default="gelu",
    tied_default=True, tensor_sources=_sources, checkpoint_prefixes=("transformer.", ""),
    reads=frozenset({"new_decoder_architecture", "multi_query", "parallel_attn", "num_kv_heads",
                     "num_ln_in_parallel_attn", "bias", "alibi", "ffn_hidden_size", "activation",
                     "layer_norm_epsilon", "apply_residual_connection_post_layernorm"}),
    inert={"hidden_dropout": "dropout is off at inference"},
    features=("new_decoder_architecture (GQA, ln_attn / ln_mlp)", "multi_query", "parallel attention + MLP",
              "sequential block (parallel_attn false)", "fused interleaved query_key_value (split at load)",
              "bias", "LayerNorm with bias", "rope default/linear/llama3/yarn/dynamic", "tied embeddings"),
    refused=("alibi", "apply_residual_connection_post_layernorm"),
)
