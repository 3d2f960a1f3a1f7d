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
from tests.reference import check_artifact_against_transformers, hf_model

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
}


def test_every_family_has_a_case():
    assert {f.name for f in FAMILIES.values()} == set(FAMILY_CASES)


@pytest.fixture(scope="module", params=list(FAMILY_CASES))
def family_checkpoint(request, tmp_path_factory):
    model_type = request.param
    ckpt = save_hf_model(tmp_path_factory.mktemp(model_type) / "ckpt", model_type, seed=11,
                         **FAMILY_CASES[model_type])
    return model_type, ckpt


def test_family_matches_transformers(family_checkpoint, tmp_path):
    model_type, ckpt = family_checkpoint
    config = load_config(ckpt)
    assert config.family == model_type and config.warnings == ()
    art = compile_artifact(ckpt, tmp_path / "art", opt_level=3)
    check_artifact_against_transformers(ckpt, art, PROMPTS, NEW_TOKENS)


@pytest.mark.slow
def test_family_int8_runs_close_to_f32(family_checkpoint, tmp_path):
    """Weight-only int8 of each family: prefill logits close to the f32 artifact's."""
    _, ckpt = family_checkpoint
    f32 = Engine(compile_artifact(ckpt, tmp_path / "f32", opt_level=3), num_pages=16)
    int8 = Engine(compile_artifact(ckpt, tmp_path / "int8", opt_level=3, quantize="int8", group_size=32),
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
