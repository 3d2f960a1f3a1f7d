"""Every registered family: a tiny random model made and saved by transformers itself (norm
weights and biases perturbed), compiled at -O3, against transformers' generate.

Each case also compiles the same weights with one of the family's block choices switched
off (the bias, the q/k norms, ...) where that is possible, to show the comparison would
notice a missing block: see test_a_missing_block_changes_the_answer.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from llmirc.frontend import load_config
from llmirc.frontend.families import FAMILIES
from llmirc.runtime import Engine
from tests.e2e.conftest import compile_artifact
from tests.hf_checkpoints import save_hf_model
from tests.reference import check_artifact_against_transformers, hf_greedy, hf_model

PROMPTS = [[1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8], [1, 250, 3],
           [1, 44, 45, 46, 47, 48, 90, 91, 92, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 140, 141, 142, 143]]
NEW_TOKENS = 32

# model_type -> config overrides that exercise what the family declares
FAMILY_CASES = {
    "llama": dict(attention_bias=True, mlp_bias=True),
    "mistral": dict(sliding_window=None),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(head_dim=32),  # head_dim != hidden / heads, as in real Qwen3
    "gemma": dict(head_dim=32),
    "phi3": dict(sliding_window=None, pad_token_id=0),
    # window 16 on the sliding layers, so the longest prompt runs past it; soft caps small
    # enough to bite at these logit sizes
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=16, attn_logit_softcapping=2.0,
                   final_logit_softcapping=3.0),
    "gpt2": dict(),  # GPT2LMHeadModel: tensors under `transformer.`, lm_head tied
    "falcon": dict(new_decoder_architecture=True),  # GQA (2 KV heads), ln_attn / ln_mlp, no bias
    # top-2 of 4 experts; a 16-token window, so the longest prompt runs past it
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=16),
}

# other forms of a family that compile to other IR, compiled and compared too: id -> (model_type, overrides)
FAMILY_FORMS = {
    # Falcon 7B's layout: one KV head, one input_layernorm, attention and MLP in parallel; with bias
    "falcon-multi-query": ("falcon", dict(new_decoder_architecture=False, multi_query=True, bias=True)),
}
# forms that compile to the same IR as a case above (checked cheaply in the default suite), compiled
# only in the slow suite
SLOW_FORMS = {
    "gpt2-no-prefix": ("gpt2", dict(base_model=True)),  # GPT2Model saved: `h.0...`, no lm_head
}
CASES = {t: (t, o) for t, o in FAMILY_CASES.items()} | FAMILY_FORMS | SLOW_FORMS


def test_every_family_has_a_case():
    assert {f.name for f in FAMILIES.values()} == set(FAMILY_CASES)


@pytest.fixture(scope="module", params=[pytest.param(c, marks=pytest.mark.slow) if c in SLOW_FORMS else c
                                        for c in CASES])
def family_checkpoint(request, tmp_path_factory):
    model_type, overrides = CASES[request.param]
    ckpt = save_hf_model(tmp_path_factory.mktemp(request.param) / "ckpt", model_type, seed=11, **overrides)
    return model_type, ckpt


def test_family_matches_transformers(family_checkpoint, tmp_path):
    model_type, ckpt = family_checkpoint
    config = load_config(ckpt)
    assert config.family == model_type and config.warnings == ()
    art = compile_artifact(ckpt, tmp_path / "art", opt_level=3)
    check_artifact_against_transformers(ckpt, art, PROMPTS, NEW_TOKENS)


@pytest.mark.slow
def test_family_int8_runs_close_to_f32(family_checkpoint, tmp_path):
    """Weight-only int8 of each family: prefill logits close to the f32 artifact's. At -O2: only
    prefill runs here, and -O3 adds the static-batch decode functions (and data tiling of the
    float matmuls), which test_family_matches_transformers covers at -O3; -O2 halves the compiles."""
    _, ckpt = family_checkpoint
    f32 = Engine(compile_artifact(ckpt, tmp_path / "f32", opt_level=2), num_pages=16)
    int8 = Engine(compile_artifact(ckpt, tmp_path / "int8", opt_level=2, quantize="int8", group_size=32),
                  num_pages=16)
    p = PROMPTS[0]
    args = (np.array([p]), np.array([len(p)]), np.arange(1, 1 + -(-len(p) // f32.page_size))[None])
    a, b = f32.prefill(*args), int8.prefill(*args)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    assert int(a.argmax()) == int(b.argmax())


@pytest.mark.parametrize("model_type,block", [("qwen2", "q/k/v bias"), ("qwen3", "q/k norms")])
def test_a_missing_block_changes_the_answer(model_type, block, tmp_path):
    """transformers itself, without the block the family adds, gives logits far outside the
    1e-3 the family comparison allows: so that comparison fails if our builder drops it."""
    from tests.reference import hf_last_logits

    ckpt = save_hf_model(tmp_path / "ckpt", model_type, seed=11, **FAMILY_CASES[model_type])
    other = shutil.copytree(ckpt, tmp_path / "llama-shaped")
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False)
    (other / "config.json").write_text(json.dumps(cfg))
    with_block, without = hf_model(ckpt), hf_model(other)  # the llama model ignores the extra tensors
    gap = max(np.abs(hf_last_logits(with_block, p) - hf_last_logits(without, p)).max() for p in PROMPTS)
    assert gap > 1e-2, f"dropping the {block} moves the logits by only {gap}"


@pytest.mark.parametrize("model_type,window", [
    pytest.param("mistral", dict(sliding_window=16), id="mistral-every-layer"),
    pytest.param("phi3", dict(sliding_window=16, pad_token_id=0), id="phi3-every-layer", marks=pytest.mark.slow),
    pytest.param("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1), id="qwen2-layer-1",
                 marks=pytest.mark.slow),
])
def test_sliding_window_matches_transformers(model_type, window, tmp_path):
    """A 16-token window, compiled at the full 128 positions; the longest prompt (25 tokens,
    + 32 new) runs far past the window, so the masked keys change the answer."""
    ckpt = save_hf_model(tmp_path / "ckpt", model_type, seed=5, **window)
    config = load_config(ckpt)
    assert config.max_seq_len == 128 and 16 in config.layer_windows
    art = compile_artifact(ckpt, tmp_path / "art", opt_level=3)
    ref = check_artifact_against_transformers(ckpt, art, PROMPTS, NEW_TOKENS)
    full = shutil.copytree(ckpt, tmp_path / "full")
    cfg = json.loads((full / "config.json").read_text())
    cfg.update(sliding_window=None, use_sliding_window=False, layer_types=None)
    (full / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    hf_full = hf_model(full)
    from tests.reference import hf_greedy

    assert [hf_greedy(hf_full, p, NEW_TOKENS)[0] for p in PROMPTS] != ref  # the window matters


@pytest.mark.slow
def test_sliding_window_on_static_shapes_matches_transformers(tmp_path):
    """tpu-like: the decode and both prefill buckets (16, 64) attend through a window view of
    2, 3 and 6 of the 8 pages a sequence has, so the view's clamping and relative positions
    run on static shapes too."""
    import llmirc

    ckpt = save_hf_model(tmp_path / "ckpt", "mistral", seed=5, sliding_window=16)
    art = compile_artifact(ckpt, tmp_path / "art", target="tpu-like", buckets="batch=1,4;len=16,64")
    hf = hf_model(ckpt)
    got = llmirc.load(art).generate(PROMPTS, max_tokens=NEW_TOKENS, stop_token_ids=())
    assert [c.token_ids for c in got] == [hf_greedy(hf, p, NEW_TOKENS)[0] for p in PROMPTS]


# ---- GPT-2 and Falcon: every form against transformers in the interpreter (no compile) ----------

# forms the compiled cases above do not cover, or cover through another checkpoint layout
INTERPRETER_FORMS = {
    "gpt2-no-prefix": ("gpt2", dict(base_model=True)),
    "gpt2-attn-scales": ("gpt2", dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True,
                                      reorder_and_upcast_attn=True, activation_function="gelu")),
    "gpt2-untied": ("gpt2", dict(tie_word_embeddings=False)),
    "falcon-new-one-norm": ("falcon", dict(new_decoder_architecture=True, num_ln_in_parallel_attn=1, bias=True)),
    "falcon-per-head-kv": ("falcon", dict(new_decoder_architecture=False, multi_query=False, num_kv_heads=4)),
    "falcon-sequential": ("falcon", dict(new_decoder_architecture=False, multi_query=True, parallel_attn=False,
                                         bias=True)),
}


def _interpreter_vs_transformers(ckpt, steps: int = 4) -> None:
    """Batched prefill of PROMPTS (padded rows: learned positions of -1 must not matter) and
    `steps` greedy decodes in the llm interpreter, against transformers on the same tokens."""
    from llmirc.frontend import import_checkpoint
    from tests.pipelines.equivalence import run_model
    from tests.reference import hf_last_logits

    model = import_checkpoint(ckpt)
    assert model.config.warnings == ()
    t = max(map(len, PROMPTS))
    tokens = np.array([p + [0] * (t - len(p)) for p in PROMPTS], np.int64)
    lens = np.array([len(p) for p in PROMPTS], np.int64)
    logits = run_model(model.module, model.weights(), tokens, lens, steps=steps)
    hf = hf_model(ckpt)
    for row, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for step in logits:
            np.testing.assert_allclose(step[row], hf_last_logits(hf, seq), atol=1e-4, rtol=0)
            seq.append(int(step[row].argmax()))


@pytest.mark.parametrize("form", list(INTERPRETER_FORMS))
def test_form_matches_transformers_in_the_interpreter(form, tmp_path):
    model_type, overrides = INTERPRETER_FORMS[form]
    _interpreter_vs_transformers(save_hf_model(tmp_path / "ckpt", model_type, seed=3, **overrides))


def test_gpt2_with_and_without_prefix_import_the_same_weights(tmp_path):
    """GPT2LMHeadModel saves `transformer.h.0...`, GPT2Model `h.0...`: the same IR and weights."""
    from llmirc.dialect import print_module
    from llmirc.frontend import import_checkpoint

    lm = import_checkpoint(save_hf_model(tmp_path / "lm", "gpt2", seed=3))
    base = import_checkpoint(save_hf_model(tmp_path / "base", "gpt2", seed=3, base_model=True))
    assert print_module(lm.module).replace("GPT2LMHeadModel", "GPT2Model") == print_module(base.module)
    a, b = lm.weights(), base.weights()
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def test_a_missing_tensor_is_named_as_the_checkpoint_names_it(tmp_path):
    from safetensors.numpy import load_file, save_file

    from llmirc.errors import CheckpointError
    from llmirc.frontend import import_checkpoint

    ckpt = save_hf_model(tmp_path / "ckpt", "falcon", seed=3)
    tensors = load_file(ckpt / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "h.1.self_attention.query_key_value" not in k},
              ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor 'transformer.h.1.self_attention.query_key_value.weight'"):
        import_checkpoint(ckpt)


@pytest.mark.parametrize("case", ["gpt2", "falcon", "falcon-multi-query"])
def test_o3_pipeline_preserves_the_model_and_fuses_only_what_fits(case, tmp_path):
    """The -O3 passes on the new blocks, in the interpreter: same outputs; a plain MLP's gelu
    becomes its first linear's epilogue, no SwiGLU and no add_rms_norm (LayerNorm) appear."""
    from llmirc.dialect import print_module
    from llmirc.frontend import import_checkpoint
    from llmirc.pipelines import WeightStore, pipeline_for_level
    from tests.pipelines.equivalence import assert_pipeline_preserves

    model_type, overrides = CASES[case]
    model = import_checkpoint(save_hf_model(tmp_path / "ckpt", model_type, seed=3, **overrides))
    names = ",".join(n if not o else f"{n}{{" + ",".join(f"{k}={v}" for k, v in o.items()) + "}"
                     for n, o in pipeline_for_level(3, block_size=4))
    after = print_module(assert_pipeline_preserves(model.module, WeightStore.from_arrays(model.weights()), names,
                                                   atol=1e-4))
    n = model.config.num_layers * 4  # layers x entry functions
    assert after.count('activation = "gelu') == n and "swiglu" not in after and "add_rms_norm" not in after


def _edited_copy(ckpt, dest, edit):
    from safetensors.numpy import load_file, save_file

    other = shutil.copytree(ckpt, dest)
    tensors = load_file(other / "model.safetensors")
    save_file(edit(tensors), other / "model.safetensors")
    return other


def _zero(fragment: str):
    return lambda t: {k: (np.zeros_like(v) if fragment in k else v) for k, v in t.items()}


def _share_ln_attn(t):
    return t | {k: t[k.replace("ln_mlp", "ln_attn")] for k in t if "ln_mlp" in k}


@pytest.mark.parametrize("case,block,edit", [
    ("gpt2", "position embeddings (wpe)", _zero("wpe.")),
    ("gpt2", "LayerNorm biases", lambda t: {k: (np.zeros_like(v) if ".ln_" in k and k.endswith("bias") else v)
                                            for k, v in t.items()}),
    ("falcon", "the MLP's own norm (ln_mlp)", _share_ln_attn),
    ("falcon-multi-query", "linear biases", lambda t: {k: (np.zeros_like(v) if "dense" in k and k.endswith("bias")
                                                           or "query_key_value.bias" in k else v)
                                                       for k, v in t.items()}),
])
def test_a_missing_gpt2_or_falcon_block_changes_the_answer(case, block, edit, tmp_path):
    """transformers on the same checkpoint with the block's tensors neutralised gives logits far
    outside the comparison's 1e-3: so test_family_matches_transformers fails if we drop it."""
    from tests.reference import hf_last_logits

    model_type, overrides = CASES[case]
    ckpt = save_hf_model(tmp_path / "ckpt", model_type, seed=11, **overrides)
    with_block, without = hf_model(ckpt), hf_model(_edited_copy(ckpt, tmp_path / "edited", edit))
    gap = max(np.abs(hf_last_logits(with_block, p) - hf_last_logits(without, p)).max() for p in PROMPTS)
    assert gap > 1e-2, f"dropping the {block} moves the logits by only {gap}"


# ---- Mixtral: routing and renormalisation matter; both checkpoint layouts -----------------------

def _mixtral_logits_with(model, **changes) -> list[np.ndarray]:
    """Last-step prefill logits of PROMPTS in the interpreter, the IR rebuilt with `changes` to the
    config (the same weights)."""
    from dataclasses import replace

    from llmirc.frontend import build_decoder
    from tests.pipelines.equivalence import run_model

    module = build_decoder(replace(model.config, **changes))
    weights = model.weights()
    return [run_model(module, weights, np.array([p]), np.array([len(p)]), steps=0)[0][0] for p in PROMPTS]


@pytest.mark.parametrize("block,changes", [
    ("the renormalisation of the top-2 weights", dict(router_normalize=False)),
    ("the second expert (top-1 routing)", dict(experts_per_token=1)),
    ("top-k routing (all experts)", dict(experts_per_token=4)),
])
def test_a_missing_mixtral_block_changes_the_answer(block, changes, tmp_path):
    """The IR as built matches transformers within 1e-4; built without the block, it is > 1e-2 off:
    so the -O3 comparison (1e-3) fails if routing or renormalisation is wrong."""
    from llmirc.frontend import import_checkpoint
    from tests.reference import hf_last_logits

    ckpt = save_hf_model(tmp_path / "ckpt", "mixtral", seed=11, **FAMILY_CASES["mixtral"])
    model, hf = import_checkpoint(ckpt), hf_model(ckpt)
    refs = [hf_last_logits(hf, p) for p in PROMPTS]
    for ours, ref in zip(_mixtral_logits_with(model), refs):
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    gap = max(np.abs(o - r).max() for o, r in zip(_mixtral_logits_with(model, **changes), refs))
    assert gap > 1e-2, f"dropping {block} moves the logits by only {gap}"


def test_mixtral_fused_expert_layout_imports_the_same_weights(tmp_path):
    """transformers 5 holds the experts fused (mlp.experts.gate_up_proj [E, 2I, H], down_proj) and
    save_pretrained writes the per-expert w1/w2/w3 layout: a checkpoint of either imports to the
    same IR weights, and a wrong expert order would not (the stacks differ per expert)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from llmirc.frontend import import_checkpoint

    ckpt = save_hf_model(tmp_path / "ckpt", "mixtral", seed=3, **FAMILY_CASES["mixtral"])
    with safe_open(ckpt / "model.safetensors", "np") as f:
        assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in f.keys()
    fused = shutil.copytree(ckpt, tmp_path / "fused")
    state = {k: v.contiguous() for k, v in hf_model(ckpt).state_dict().items()}
    assert state["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 256, 64)
    (fused / "model.safetensors").unlink()
    save_file(state, fused / "model.safetensors", metadata={"format": "pt"})
    a, b = import_checkpoint(ckpt).weights(), import_checkpoint(fused).weights()
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    gu = a["model.layers.1.mlp.experts.gate_up_proj"]
    assert not np.array_equal(gu[0], gu[1])
    np.testing.assert_array_equal(gu, state["model.layers.1.mlp.experts.gate_up_proj"].numpy())


def test_mixtral_o3_pipeline_preserves_the_model(tmp_path):
    """The -O3 passes on a Mixtral IR, in the interpreter: same outputs; attention q/k/v fuse, the
    experts stay one moe_ffn per layer and function (fuse-gate-up has no linears to pair there)."""
    from llmirc.dialect import print_module
    from llmirc.frontend import import_checkpoint
    from llmirc.pipelines import WeightStore, pipeline_for_level
    from tests.pipelines.equivalence import assert_pipeline_preserves

    model = import_checkpoint(save_hf_model(tmp_path / "ckpt", "mixtral", seed=3, **FAMILY_CASES["mixtral"]))
    names = ",".join(n if not o else f"{n}{{" + ",".join(f"{k}={v}" for k, v in o.items()) + "}"
                     for n, o in pipeline_for_level(3, block_size=4))
    after = print_module(assert_pipeline_preserves(model.module, WeightStore.from_arrays(model.weights()), names,
                                                   atol=1e-4))
    n = model.config.num_layers * 4  # layers x entry functions
    assert after.count('"llm.moe_ffn"') == n and after.count('"llm.moe_router"') == n


def test_a_missing_mixtral_expert_is_named_as_the_checkpoint_names_it(tmp_path):
    from safetensors.numpy import load_file, save_file

    from llmirc.errors import CheckpointError
    from llmirc.frontend import import_checkpoint

    ckpt = save_hf_model(tmp_path / "ckpt", "mixtral", seed=3, **FAMILY_CASES["mixtral"])
    tensors = load_file(ckpt / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layers.1.block_sparse_moe.experts.3.w2" not in k},
              ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.block_sparse_moe.experts.3.w2.weight'"):
        import_checkpoint(ckpt)


# Phi-3's long-context form: LongRoPE (per-dimension short/long factors, an attention factor
# from max / original positions); the short factors hold while sequences stay within
# original_max_position_embeddings, which the compiled length must respect.
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0 + 0.3 * i for i in range(8)],
            "long_factor": [2.0 + i for i in range(8)]}


def _phi3_longrope(tmp_path, rope=LONGROPE):
    return save_hf_model(tmp_path / "ckpt", "phi3", seed=5, sliding_window=None, pad_token_id=0,
                         max_position_embeddings=1024, original_max_position_embeddings=128,
                         rope_parameters=dict(rope))


def test_phi3_longrope_matches_transformers(tmp_path):
    ckpt = _phi3_longrope(tmp_path)
    assert load_config(ckpt, max_seq_len=128).rope.attention_factor(16) > 1.0  # factor 1024 / 128 = 8
    art = compile_artifact(ckpt, tmp_path / "art", opt_level=3, max_seq_len=128)
    ref = check_artifact_against_transformers(ckpt, art, PROMPTS, NEW_TOKENS)
    # the factors matter: the same weights with plain rope give other tokens
    plain = _phi3_longrope(tmp_path / "plain", {"rope_type": "default", "rope_theta": 10000.0})
    hf = hf_model(plain)
    assert [hf_greedy(hf, p, NEW_TOKENS)[0] for p in PROMPTS] != ref


def test_phi3_longrope_past_its_original_length_is_refused(tmp_path):
    from llmirc.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"use --max-seq-len 128 or less"):
        load_config(_phi3_longrope(tmp_path))


def test_longrope_factors_of_the_wrong_length_are_refused_naming_the_file(tmp_path):
    from llmirc.errors import CheckpointError

    ckpt = _phi3_longrope(tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rope_parameters"]["short_factor"] = cfg["rope_parameters"]["short_factor"][:-1]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: longrope short_factor / long_factor must have"):
        load_config(ckpt, max_seq_len=128)
