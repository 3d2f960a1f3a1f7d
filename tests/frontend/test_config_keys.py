"""config.json: one rule for every key (read, inert, unknown -> one warning) and rope settings
in both layouts, against transformers' own rope functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmirc.errors import CheckpointError
from llmirc.frontend import load_config
from llmirc.frontend.config_keys import INERT, READ
from llmirc.frontend.families import FAMILIES
from tests.cli import run_cli


def _write(d: Path, **changes) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is _DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


_DROP = object()


def test_read_and_inert_keys_are_disjoint():
    assert not READ & set(INERT)


@pytest.mark.parametrize("architecture", list(FAMILIES))
def test_every_key_transformers_writes_is_known(architecture):
    """A new key in the installed transformers' config of any family we serve shows up here
    before it reaches a user."""
    import transformers

    family = FAMILIES[architecture]
    model_cls = getattr(transformers, architecture)
    cfg = model_cls.config_class()
    keys = set(cfg.to_dict()) | set(cfg.to_diff_dict())
    assert keys - READ - family.reads - set(INERT) - set(family.inert) == set()


def test_unknown_key_gives_one_warning_line_and_compiles(checkpoint_copy, tmp_path):
    _write(checkpoint_copy, logit_multiplier=0.5, initializer_range=0.3, pretraining_tp=2, temperature=0.7)
    out = tmp_path / "model.mlir"
    res = run_cli("compile", checkpoint_copy, "--emit", "llm", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "'logit_multiplier' = 0.5" in lines[0]
    assert out.is_file()


def test_tiny_checkpoint_has_no_warnings(tiny_checkpoint):
    assert load_config(tiny_checkpoint).warnings == ()


# ---- rope: layouts and precedence --------------------------------------------------------

def test_rope_scaling_wins_over_rope_parameters(checkpoint_copy):
    _write(checkpoint_copy, rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=500.0,
           rope_parameters={"rope_type": "default", "rope_theta": 7.0})
    rope = load_config(checkpoint_copy).rope
    assert (rope.kind, rope.theta, rope.params) == ("linear", 500.0, {"factor": 2.0})


def test_theta_inside_rope_parameters_wins_over_top_level(checkpoint_copy):
    _write(checkpoint_copy, rope_scaling=_DROP, rope_theta=10000.0,
           rope_parameters={"rope_type": "default", "rope_theta": 1234.0})
    assert load_config(checkpoint_copy).rope.theta == 1234.0


def test_llama3_original_length_defaults_to_max_position_embeddings(checkpoint_copy):
    _write(checkpoint_copy, rope_scaling=_DROP, rope_parameters={
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0})
    assert load_config(checkpoint_copy).rope.params["original_max_position_embeddings"] == 128


def test_per_layer_type_form_is_read(checkpoint_copy):
    entry = {"rope_type": "linear", "rope_theta": 300.0, "factor": 2.0}
    _write(checkpoint_copy, rope_scaling=_DROP, layer_types=["full_attention"] * 2,
           rope_parameters={"full_attention": entry, **entry})
    assert load_config(checkpoint_copy).rope.describe() == entry


def test_per_layer_type_form_that_disagrees_is_refused(checkpoint_copy):
    """transformers' Llama reads only the top-level entries; a differing per-type entry is ambiguous."""
    _write(checkpoint_copy, rope_scaling=_DROP, layer_types=["full_attention"] * 2,
           rope_parameters={"full_attention": {"rope_type": "linear", "rope_theta": 300.0, "factor": 2.0},
                            "rope_type": "default", "rope_theta": 10000.0})
    with pytest.raises(CheckpointError, match=r"rope_parameters\.full_attention .* differs from the top-level"):
        load_config(checkpoint_copy)


def test_unread_rope_key_warns(checkpoint_copy):
    _write(checkpoint_copy, rope_scaling={"rope_type": "linear", "factor": 2.0, "beta_fast": 4})
    (w,) = load_config(checkpoint_copy).warnings
    assert "rope_scaling key 'beta_fast' = 4 is not read for rope type 'linear'" in w


def test_missing_rope_parameter_is_refused(checkpoint_copy):
    _write(checkpoint_copy, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(CheckpointError, match="rope_scaling type 'llama3' needs 'low_freq_factor'"):
        load_config(checkpoint_copy)


def test_attention_windows_as_each_family_applies_them(checkpoint_copy):
    """transformers' Llama ignores sliding_window; Mistral applies it in every layer; Qwen2 only
    with use_sliding_window, from max_window_layers on. A window >= the compiled length is 0."""
    _write(checkpoint_copy, sliding_window=64)
    assert load_config(checkpoint_copy).layer_windows == (0, 0)
    _write(checkpoint_copy, architectures=["MistralForCausalLM"], model_type="mistral")
    assert load_config(checkpoint_copy).layer_windows == (64, 64)
    assert load_config(checkpoint_copy, max_seq_len=64).layer_windows == (0, 0)
    _write(checkpoint_copy, architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False)
    assert load_config(checkpoint_copy).layer_windows == (0, 0)
    _write(checkpoint_copy, use_sliding_window=True, max_window_layers=1)
    assert load_config(checkpoint_copy).layer_windows == (0, 64)
    _write(checkpoint_copy, layer_types=["sliding_attention", "full_attention"])
    assert load_config(checkpoint_copy).layer_windows == (64, 0)


# ---- rope numerics: against transformers' ROPE_INIT_FUNCTIONS ----------------------------

ROPE_CASES = {
    "default": {"rope_type": "default", "rope_theta": 1000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32},
    "yarn-mscale": {"rope_type": "yarn", "rope_theta": 50000.0, "factor": 8.0, "original_max_position_embeddings": 16,
                    "mscale": 0.7, "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2, "truncate": False},
}


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_inv_freq_and_attention_factor_match_transformers(checkpoint_copy, case):
    from transformers import LlamaConfig as HFConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = ROPE_CASES[case]
    _write(checkpoint_copy, rope_scaling=_DROP, rope_parameters=dict(params))
    ours = load_config(checkpoint_copy)
    hf_cfg = HFConfig.from_pretrained(checkpoint_copy)
    kind = params["rope_type"]
    if kind == "default":
        ref_inv, ref_factor = 1.0 / (params["rope_theta"] ** (np.arange(0, 16, 2, dtype=np.float32) / 16)), 1.0
    else:
        inv, ref_factor = ROPE_INIT_FUNCTIONS[kind](hf_cfg, "cpu")
        ref_inv = inv.numpy()
    np.testing.assert_allclose(ours.inv_freq(), ref_inv, rtol=1e-6)
    assert ours.rope.attention_factor(ours.head_dim) == pytest.approx(ref_factor, rel=1e-7)
    assert ours.attention_scale() == pytest.approx(ours.head_dim ** -0.5 * ref_factor ** 2)


# ---- GPT-2 and Falcon: their own keys ------------------------------------------------------

def _family_config(d: Path, model_type: str, **changes) -> Path:
    """config.json as the installed transformers writes it for a tiny `model_type` model (no
    weights: load_config reads only the config)."""
    from transformers import AutoConfig

    from tests.hf_checkpoints import SMALL_BY_TYPE

    cfg = AutoConfig.for_model(model_type, **SMALL_BY_TYPE[model_type])
    cfg.architectures = [{"gpt2": "GPT2LMHeadModel", "falcon": "FalconForCausalLM"}[model_type]]
    cfg.save_pretrained(d)
    return _write(d, **changes)


@pytest.mark.parametrize("model_type,changes,message", [
    ("falcon", dict(alibi=True), "alibi True (ALiBi attention biases) is not supported"),
    ("falcon", dict(apply_residual_connection_post_layernorm=True),
     "apply_residual_connection_post_layernorm True is not supported"),
    ("falcon", dict(new_decoder_architecture=True, parallel_attn=False),
     "new_decoder_architecture with parallel_attn False and num_ln_in_parallel_attn"),
    ("falcon", dict(new_decoder_architecture=False, num_ln_in_parallel_attn=2),
     "num_ln_in_parallel_attn 2 without new_decoder_architecture is not supported"),
    ("falcon", dict(new_decoder_architecture=False, multi_query=False, num_kv_heads=2),
     "num_kv_heads 2 with multi_query and new_decoder_architecture false"),
    ("falcon", dict(activation="relu"), "activation 'relu' is not supported"),
    ("gpt2", dict(activation_function="relu"), "activation_function 'relu' is not supported"),
    ("gpt2", dict(n_embd=_DROP), "missing required key 'n_embd'"),
])
def test_gpt2_and_falcon_refuse_what_they_do_not_implement_by_name(tmp_path, model_type, changes, message):
    d = _family_config(tmp_path, model_type, **changes)
    with pytest.raises(CheckpointError) as e:
        load_config(d)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_gpt2_keys_are_read_with_transformers_defaults(tmp_path):
    d = _family_config(tmp_path, "gpt2", n_inner=None, scale_attn_by_inverse_layer_idx=True)
    c = load_config(d)
    assert (c.hidden_size, c.num_heads, c.num_kv_heads, c.num_layers, c.intermediate_size) == (64, 4, 4, 2, 256)
    assert (c.learned_positions, c.max_seq_len, c.norm, c.mlp, c.hidden_act) == (128, 128, "layer", "plain", "gelu_tanh")
    assert c.tie_word_embeddings and c.warnings == ()
    assert c.attention_scale(1) == pytest.approx(16 ** -0.5 / 2)
    _write(d, tie_word_embeddings=_DROP, activation_function=_DROP, n_positions=_DROP)  # GPT2Config's defaults
    c = load_config(d, max_seq_len=128)
    assert c.tie_word_embeddings and c.hidden_act == "gelu_tanh" and c.learned_positions == 1024


@pytest.mark.parametrize("changes,kv_heads,parallel,own_mlp_norm", [
    (dict(new_decoder_architecture=True), 2, True, True),
    (dict(new_decoder_architecture=True, num_ln_in_parallel_attn=1), 2, True, False),
    (dict(new_decoder_architecture=False, multi_query=True), 1, True, False),
    (dict(new_decoder_architecture=False, multi_query=False, num_kv_heads=4), 4, True, False),
    (dict(new_decoder_architecture=False, parallel_attn=False), 1, False, False),
])
def test_falcon_layouts_select_their_blocks(tmp_path, changes, kv_heads, parallel, own_mlp_norm):
    c = load_config(_family_config(tmp_path, "falcon", **changes))
    assert (c.num_kv_heads, c.parallel_block, c.parallel_mlp_norm) == (kv_heads, parallel, own_mlp_norm)
    assert c.hidden_act == "gelu" and c.learned_positions == 0 and c.warnings == ()
