"""LLM fusion passes and the O-level pipelines: interpreter output before == after."""

from __future__ import annotations

import re

import numpy as np
import pytest

from llmirc.dialect import print_module
from llmirc.frontend import import_checkpoint
from llmirc.pipelines import PassError, PassManager, WeightStore, parse_pipeline, pipeline_for_level
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint
from llmirc.frontend.decoder import ENTRY_FUNCTIONS
from tests.pipelines.equivalence import assert_pipeline_preserves, run_model


@pytest.fixture(scope="module", params=[dict(), dict(kv_heads=1, tie_embeddings=True, layers=3)],
                ids=["gqa", "mqa-tied"])
def model(request, tmp_path_factory):
    spec = CheckpointSpec(seed=5, **request.param)
    return import_checkpoint(make_checkpoint(tmp_path_factory.mktemp("m"), spec))


FUSIONS = ["fuse-qkv", "fuse-gate-up", "fuse-matmul-activation", "fuse-residual-norm",
           "fuse-qkv,fuse-gate-up,fuse-matmul-activation", "fuse-qkv,fuse-gate-up,fold-weights"]


@pytest.mark.parametrize("pipeline", FUSIONS)
def test_fusion_preserves_model(model, pipeline):
    store = WeightStore.from_arrays(model.weights())
    assert_pipeline_preserves(model.module, store, pipeline)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_levels_preserve_model(model, level):
    store = WeightStore.from_arrays(model.weights())
    names = ",".join(n if not o else f"{n}{{" + ",".join(f"{k}={v}" for k, v in o.items()) + "}"
                     for n, o in pipeline_for_level(level, block_size=4))
    after = assert_pipeline_preserves(model.module, store, names)
    text = print_module(after)
    if level >= 2:
        n_layers = model.config.num_layers
        assert text.count('activation = "swiglu"') == len(ENTRY_FUNCTIONS) * n_layers
        assert text.count('"llm.concat"') == 0  # folded into derived weights
        # every function fuses 2n-1 residual adds into the next norm; extend_all's final norm follows
        # the last residual add directly (no last_token between them), so it fuses one more
        assert text.count('"llm.add_rms_norm"') == len(ENTRY_FUNCTIONS) * (2 * n_layers - 1) + 1


def test_fold_weights_derives_concatenated_tensor(model):
    store = WeightStore.from_arrays(model.weights())
    m = import_checkpoint(model.checkpoint.directory)
    PassManager(parse_pipeline("fuse-qkv,fold-weights"), weights=store).run(m.module)
    p = "model.layers.0.self_attn."
    name = f"concat({p}q_proj.weight,{p}k_proj.weight,{p}v_proj.weight)"
    assert f'{{name = "{name}"}}' in print_module(m.module)
    np.testing.assert_array_equal(store[name], np.concatenate(
        [store[p + "q_proj.weight"], store[p + "k_proj.weight"], store[p + "v_proj.weight"]]))


def test_fold_weights_needs_weights(model):
    m = import_checkpoint(model.checkpoint.directory)
    with pytest.raises(PassError, match="pass 'fold-weights' needs the model's weights"):
        PassManager(parse_pipeline("fuse-qkv,fold-weights")).run(m.module)


def test_equivalence_harness_catches_a_wrong_rewrite(model):
    """The oracle is not vacuous: a pass that swaps the gate and up halves is caught."""
    from llmirc.pipelines import register_pass
    from llmirc.pipelines.pass_manager import PASSES
    from llmirc.pipelines.rewrite import functions, llm_ops

    @register_pass("test-swap-gate-up", "Wrong on purpose (test only): the gate reads the up half.")
    def _swap(module):
        from iree.compiler import ir

        for f in functions(module).values():
            for op in llm_ops(f, "slice"):
                if ir.IntegerAttr(op.attributes["start"]).value == 0:
                    op.attributes["start"] = op.attributes["size"]

    try:
        store = WeightStore.from_arrays(model.weights())
        m = import_checkpoint(model.checkpoint.directory)
        PassManager(parse_pipeline("fuse-gate-up")).run(m.module)
        bad = import_checkpoint(model.checkpoint.directory)
        PassManager(parse_pipeline("fuse-gate-up,test-swap-gate-up")).run(bad.module)
        toks, lens = np.array([[5, 6, 7]], np.int64), np.array([3], np.int64)
        good = run_model(m.module, store, toks, lens)
        wrong = run_model(bad.module, store, toks, lens)
        assert max(np.abs(g - w).max() for g, w in zip(good, wrong)) > 1e-3
    finally:
        PASSES.pop("test-swap-gate-up")



def _names(passes) -> str:
    return ",".join(n if not o else f"{n}{{" + ",".join(f"{k}={v}" for k, v in o.items()) + "}" for n, o in passes)


@pytest.mark.parametrize("model_type,overrides,activation", [
    ("gemma", dict(head_dim=32), "geglu_tanh"),  # Gemma's GeGLU (gelu_pytorch_tanh)
    ("llama", dict(hidden_act="gelu"), "geglu"),  # erf gelu (transformers' Gemma reads "gelu" as tanh)
    ("llama", dict(), "swiglu"),
])
def test_gated_fusion_covers_geglu(model_type, overrides, activation, tmp_path):
    """GeGLU fuses like SwiGLU: one gate/up matmul with the gated activation as its epilogue;
    the interpreter shows -O2 preserves meaning, and int8 of the fused form (the epilogue as
    slice / activation / mul after the quantized matmul) stays close to it."""
    from llmirc.pipelines import QuantConfig
    from tests.hf_checkpoints import save_hf_model

    model = import_checkpoint(save_hf_model(tmp_path / "ckpt", model_type, seed=3, **overrides))
    store = WeightStore.from_arrays(model.weights())
    after = assert_pipeline_preserves(model.module, store, _names(pipeline_for_level(2, block_size=4)), atol=1e-4)
    text = print_module(after)
    n = len(ENTRY_FUNCTIONS) * model.config.num_layers
    assert text.count(f'activation = "{activation}"') == n and '"llm.gelu"' not in text and '"llm.silu"' not in text
    tokens, lens = np.array([[5, 6, 7, 8]]), np.array([4])
    ref = run_model(after, store, tokens, lens)
    PassManager(parse_pipeline(_names(pipeline_for_level(2, 4, QuantConfig(8, 32)))), weights=store).run(model.module)
    got = run_model(model.module, store, tokens, lens)
    assert all(np.abs(g - r).max() < 0.05 * np.abs(r).max() for g, r in zip(got, ref))


def test_qkv_with_bias_fuses_with_its_bias(tmp_path):
    """Qwen2's q/k/v carry a bias (o_proj does not): fuse-qkv makes one linear whose bias is the
    concatenation, and the interpreter shows -O2 preserves meaning; one linear with a bias
    and one without on the same input stay apart."""
    from tests.hf_checkpoints import save_hf_model

    model = import_checkpoint(save_hf_model(tmp_path / "ckpt", "qwen2", seed=3))
    store = WeightStore.from_arrays(model.weights())
    after = print_module(assert_pipeline_preserves(model.module, store, _names(pipeline_for_level(2, block_size=4)),
                                                   atol=1e-4))
    n = len(ENTRY_FUNCTIONS) * model.config.num_layers
    fused = re.findall(r'"concat\((model\.layers\.\d+\.self_attn\.)q_proj\.bias,\1k_proj\.bias,\1v_proj\.bias\)"',
                       after)
    assert len(fused) == n and not re.search(r'"model\.layers\.\d+\.self_attn\.[qkv]_proj\.bias"', after)
