"""GPT-2: learned absolute position embeddings (`wpe`, no rope), LayerNorm with a bias, a
plain MLP (c_fc -> gelu_new -> c_proj) with biases, and every projection with a bias.

The checkpoint differs from the IR's layout more than the blocks do: config.json spells the
sizes n_embd / n_head / n_layer / n_positions / n_inner; the projections are Conv1D, stored
[in, out] (transposed at load into the IR's [out, in] linear weights); q, k and v are one
fused `attn.c_attn` (split at load, in that order); and GPT2LMHeadModel saves the base model
under `transformer.` while GPT2Model saves it without a prefix: both are read.
"""

from __future__ import annotations

from ...errors import CheckpointError
from .base import Family, TensorSource, flag, given, renamed

_TOP = {"model.embed_tokens": "wte", "model.embed_positions": "wpe", "model.norm": "ln_f"}
_LAYER = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "self_attn.o_proj": "attn.c_proj",
          "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # [in, out] weights
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # thirds of c_attn, in this order


def _common(cfg: dict, where: str) -> dict:
    """GPT-2's names for the common keys, with GPT2Config's defaults where it has them."""
    for key in ("n_embd", "n_head", "n_layer"):
        if cfg.get(key) is None:
            raise CheckpointError(f"{where}: missing required key '{key}'")
    hidden = int(cfg["n_embd"])
    return {"hidden_size": hidden, "num_attention_heads": int(cfg["n_head"]),
            "num_key_value_heads": int(cfg["n_head"]), "num_hidden_layers": int(cfg["n_layer"]),
            "max_position_embeddings": int(given(cfg, "n_positions", 1024)),
            "intermediate_size": int(given(cfg, "n_inner", 4 * hidden))}


def _choices(cfg: dict, where: str) -> dict:
    return {"qkv_bias": True, "o_bias": True, "mlp_bias": True, "norm": "layer", "mlp": "plain",
            "layer_norm_eps": float(given(cfg, "layer_norm_epsilon", 1e-5)),
            "learned_positions": int(given(cfg, "n_positions", 1024)),
            "scale_attn_weights": flag(cfg, "scale_attn_weights", True),
            "attn_scale_by_layer": flag(cfg, "scale_attn_by_inverse_layer_idx")}


def _sources(c, shapes, prefix: str) -> dict[str, TensorSource]:
    out: dict[str, TensorSource] = {}
    h = c.hidden_size
    for name in shapes:
        if name.startswith("lm_head."):  # untied head: saved outside the base model's prefix
            continue
        module, param = name.rsplit(".", 1)
        qkv = next((i for i, m in enumerate(_QKV) if module.endswith(m)), None)
        if qkv is not None:
            layer = module.split(".")[2]
            out[name] = TensorSource(f"{prefix}h.{layer}.attn.c_attn.{param}", rows=((qkv * h, (qkv + 1) * h),),
                                     transpose=param == "weight")
            continue
        tensor = renamed(name, _TOP, _LAYER)
        out[name] = TensorSource(prefix + tensor,
                                 transpose=param == "weight" and any(f".{m}." in tensor for m in _CONV1D))
    return out


FAMILY = Family(
    name="gpt2", architectures=("GPT2LMHeadModel", "GPT2Model"),
    summary="GPT-2: learned absolute positions, LayerNorm, gelu_new MLP, biases everywhere, tied lm_head",
    choices=_choices, common_keys=_common, activation_key="activation_function", activation_default="gelu_new",
    tied_default=True, tensor_sources=_sources, checkpoint_prefixes=("transformer.", ""),
    reads=frozenset({"n_embd", "n_head", "n_layer", "n_positions", "n_inner", "layer_norm_epsilon",
                     "activation_function", "scale_attn_weights", "scale_attn_by_inverse_layer_idx"}),
    inert={"resid_pdrop": "dropout is off at inference", "embd_pdrop": "dropout is off at inference",
           "attn_pdrop": "dropout is off at inference",
           "reorder_and_upcast_attn": "computes q.k and softmax in f32 for half-precision training; llmirc "
           "computes attention in f32 always, so both values are what it does",
           "n_ctx": "not read by transformers' GPT-2 (n_positions is the context)",
           **{k: "GPT2DoubleHeadsModel's classification head only" for k in
              ("summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
               "summary_first_dropout")}},
    features=("learned absolute positions (wpe)", "LayerNorm with bias", "plain gelu_new MLP with bias",
              "fused c_attn (Conv1D [in, out], split and transposed at load)", "tied lm_head",
              "checkpoints with or without the transformer. prefix", "scale_attn_weights",
              "scale_attn_by_inverse_layer_idx"),
    refused=("activation_function other than gelu_new, gelu, gelu_pytorch_tanh, silu",),
)
