"""quantize-weights: the integers it stores, and the model it leaves, against numpy fake-quantization.

Integer path (exact): the derived qweight/scales/qzeros equal tests/quant/reference.py's, and
the quantized model's logits equal, bit for bit, those of the same f32 model whose linear
weights were replaced by their fake-quantized values. Float path: the quantized model stays
close to the f32 one.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.dialect import print_module
from llmirc.frontend import import_checkpoint
from llmirc.pipelines import PassError, PassManager, QuantConfig, WeightStore, parse_pipeline, pipeline_for_level
from llmirc.pipelines.quantize_weights import choose_group_size, tensor_names
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint
from llmirc.frontend.decoder import ENTRY_FUNCTIONS
from tests.pipelines.equivalence import run_model
from tests.quant import reference

SCHEMES = [(8, True), (8, False), (4, True), (4, False)]
IDS = ["int8-sym", "int8-asym", "int4-sym", "int4-asym"]
GROUP = 32


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=300, seed=3)
    return import_checkpoint(make_checkpoint(tmp_path_factory.mktemp("q") / "ckpt", spec))


def _run(module, store, pipeline) -> list[np.ndarray]:
    m = import_checkpoint(module.checkpoint.directory)
    PassManager(pipeline, weights=store).run(m.module)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 300, size=(2, 9)).astype(np.int64)
    return m, run_model(m.module, store, tokens, np.array([9, 4], np.int64), steps=3)


def _is_layer_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith("proj.weight")


@pytest.mark.parametrize("bits,symmetric", SCHEMES, ids=IDS)
def test_stored_integers_equal_numpy_reference(model, bits, symmetric):
    store = WeightStore.from_arrays(model.weights())
    m = import_checkpoint(model.checkpoint.directory)
    PassManager([QuantConfig(bits, GROUP, symmetric).pass_spec()], weights=store).run(m.module)
    for name, w in model.weights().items():
        if not _is_layer_linear(name):
            continue
        q, s, z = reference.quantize(w, bits, GROUP, symmetric)
        qname, sname, zname = tensor_names(name, bits, GROUP, symmetric)
        assert f'name = "{qname}"' in print_module(m.module)
        np.testing.assert_array_equal(store[qname].astype(np.int64), q)
        np.testing.assert_array_equal(store[sname], s)
        assert store[qname].dtype == np.int8 and store[sname].dtype == np.float32
        if symmetric:
            assert f'name = "{zname}"' not in print_module(m.module)
        else:
            np.testing.assert_array_equal(store[zname].astype(np.int64), z)


@pytest.mark.parametrize("bits,symmetric", SCHEMES, ids=IDS)
@pytest.mark.parametrize("level", [0, 2])
def test_quantized_model_equals_fake_quant_model_exactly(model, bits, symmetric, level):
    weights = model.weights()
    fake = {n: reference.fake_quant(w, bits, GROUP, symmetric) if _is_layer_linear(n) else w
            for n, w in weights.items()}
    _, expected = _run(model, WeightStore.from_arrays(fake), pipeline_for_level(level, 4))
    quant = QuantConfig(bits, GROUP, symmetric)
    m, got = _run(model, WeightStore.from_arrays(weights), pipeline_for_level(level, 4, quant))
    text = print_module(m.module)
    assert text.count('"llm.quantized_matmul"') == len(ENTRY_FUNCTIONS) * model.config.num_layers * (7 if level == 0 else 4)
    assert text.count('"llm.linear"') == len(ENTRY_FUNCTIONS)  # lm_head of each function stays f32
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("bits,atol", [(8, 2e-3), (4, 5e-2)], ids=["int8", "int4"])
def test_quantized_model_close_to_f32(model, bits, atol):
    store = WeightStore.from_arrays(model.weights())
    _, ref = _run(model, store, pipeline_for_level(2, 4))
    _, got = _run(model, store, pipeline_for_level(2, 4, QuantConfig(bits, GROUP)))
    scale = max(np.abs(r).max() for r in ref)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, atol=atol * scale, rtol=0)


def test_keep_empty_quantizes_lm_head_too(model):
    weights = model.weights()
    fake = {n: reference.fake_quant(w, 8, GROUP, True) if n.endswith("proj.weight") or n == "lm_head.weight"
            else w for n, w in weights.items()}
    _, expected = _run(model, WeightStore.from_arrays(fake), pipeline_for_level(2, 4))
    m, got = _run(model, WeightStore.from_arrays(weights), pipeline_for_level(2, 4, QuantConfig(8, GROUP, keep="")))
    assert '"llm.linear"' not in print_module(m.module)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("head_bits", [8, 4], ids=["int8-head", "int4-head"])
def test_lm_head_takes_its_own_bits(model, tmp_path, head_bits):
    """QuantConfig(lm_head_bits): the layers int4, lm_head weight-only in its own bits, exactly
    the model with those fake-quantized weights (int4 layers and an int8 lm_head: llama.cpp's
    Q4_0 with a higher-precision output). An int4 lm_head needs a vocab that is a multiple of 8."""
    if head_bits == 4:
        spec = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=320, seed=3)
        model = import_checkpoint(make_checkpoint(tmp_path / "ckpt", spec))
    weights = model.weights()
    head_group = weights["lm_head.weight"].shape[1] if head_bits == 8 else GROUP  # int8: one scale per row
    fake = {n: reference.fake_quant(w, 4, GROUP, True) if _is_layer_linear(n)
            else reference.fake_quant(w, head_bits, head_group, True) if n == "lm_head.weight" else w
            for n, w in weights.items()}
    _, expected = _run(model, WeightStore.from_arrays(fake), pipeline_for_level(2, 4))
    quant = QuantConfig.parse("int4", GROUP, lm_head=f"int{head_bits}")
    assert [spec[1].get("only", "") for spec in quant.pass_specs()] == ["lm_head", ""]
    m, got = _run(model, WeightStore.from_arrays(weights), pipeline_for_level(2, 4, quant))
    text = print_module(m.module)
    assert '"llm.linear"' not in text and f"lm_head.weight.int{head_bits}_g{head_group}_sym.qweight" in text
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def test_lm_head_scheme_is_checked():
    with pytest.raises(PassError, match="--lm-head must be one of float, int8, int4"):
        QuantConfig.parse("int4", lm_head="int2")
    assert QuantConfig.parse("int4").pass_specs() == [QuantConfig.parse("int4").pass_spec()]


def test_keep_names_layers(model):
    m = import_checkpoint(model.checkpoint.directory)
    store = WeightStore.from_arrays(model.weights())
    PassManager(parse_pipeline("quantize-weights{bits=4,group_size=32,keep=lm_head|down_proj}"),
                weights=store).run(m.module)
    text = print_module(m.module)
    assert text.count('"llm.linear"') == len(ENTRY_FUNCTIONS) * (1 + model.config.num_layers)  # lm_head, down_proj
    assert 'down_proj.weight"' in text and "down_proj.weight.int4" not in text


def test_tied_embeddings_keep_the_table_float(tmp_path):
    spec = CheckpointSpec(layers=1, hidden=64, intermediate=128, vocab=300, tie_embeddings=True, seed=1)
    m = import_checkpoint(make_checkpoint(tmp_path / "tied", spec))
    store = WeightStore.from_arrays(m.weights())
    PassManager(pipeline_for_level(2, 4, QuantConfig(8, GROUP)), weights=store).run(m.module)
    text = print_module(m.module)
    assert text.count('"llm.linear"') == len(ENTRY_FUNCTIONS) and "embed_tokens.weight.int8" not in text


def test_tied_embeddings_lm_head_quantized_keeps_the_table_float(tmp_path):
    """--lm-head int8 on tied embeddings: the product reads an int8 copy, the gather the float table."""
    spec = CheckpointSpec(layers=1, hidden=64, intermediate=128, vocab=300, tie_embeddings=True, seed=1)
    m = import_checkpoint(make_checkpoint(tmp_path / "tied", spec))
    weights = m.weights()
    store = WeightStore.from_arrays(weights)
    PassManager(pipeline_for_level(2, 4, QuantConfig.parse("int4", GROUP, lm_head="int8")), weights=store).run(m.module)
    text = print_module(m.module)
    assert '"llm.linear"' not in text and text.count('"llm.embedding"') == len(ENTRY_FUNCTIONS)
    table = [n for n in weights if "embed_tokens" in n][0]
    hidden = weights[table].shape[1]
    q, _, _ = reference.quantize(weights[table], 8, hidden, True)
    np.testing.assert_array_equal(store[tensor_names(table, 8, hidden, True)[0]].astype(np.int64), q)


@pytest.mark.parametrize("k,group,bits,expected", [
    (128, 128, 8, 128), (64, 128, 8, 64), (344, 128, 8, 86), (344, 128, 4, 86), (96, 64, 4, 48),
    (127, 128, 8, 127), (127, 64, 8, None), (127, 128, 4, None), (14, 8, 8, None)])
def test_group_size_fallback(k, group, bits, expected):
    assert choose_group_size(k, group, bits) == expected


def test_group_size_fallback_in_ir(tmp_path):
    """intermediate 96 with group 64: down_proj takes groups of 48, the others 64."""
    spec = CheckpointSpec(layers=1, hidden=64, intermediate=96, vocab=300, seed=2)
    m = import_checkpoint(make_checkpoint(tmp_path / "c", spec))
    weights = m.weights()
    store = WeightStore.from_arrays(weights)
    PassManager([QuantConfig(4, 64).pass_spec()], weights=store).run(m.module)
    text = print_module(m.module)
    assert text.count("group_size = 48 : i64") == len(ENTRY_FUNCTIONS) and \
        text.count("group_size = 64 : i64") == 6 * len(ENTRY_FUNCTIONS)
    name = "model.layers.0.mlp.down_proj.weight"
    q, s, _ = reference.quantize(weights[name], 4, 48, True)
    np.testing.assert_array_equal(store[tensor_names(name, 4, 48, True)[0]], q)


@pytest.mark.parametrize("scheme,message", [
    ("int3", "--quantize must be one of int8, int4, w8a8, w4a8, w4a16, got 'int3'"),
    ("fp8", "--quantize must be one of int8, int4, w8a8, w4a8, w4a16, got 'fp8'")])
def test_unknown_scheme(scheme, message):
    with pytest.raises(PassError, match=message):
        QuantConfig.parse(scheme)


def test_bad_pass_options(model):
    m = import_checkpoint(model.checkpoint.directory)
    store = WeightStore.from_arrays(model.weights())
    with pytest.raises(PassError, match="bits must be 8 or 4, got 3"):
        PassManager(parse_pipeline("quantize-weights{bits=3}"), weights=store).run(m.module)
    with pytest.raises(PassError, match="group size must be a positive integer, got 0"):
        PassManager(parse_pipeline("quantize-weights{group_size=0}"), weights=store).run(m.module)


def test_needs_weights(model):
    m = import_checkpoint(model.checkpoint.directory)
    with pytest.raises(PassError, match="pass 'quantize-weights' needs the model's weights"):
        PassManager(parse_pipeline("quantize-weights")).run(m.module)


# ---- mixture-of-experts weights (Mixtral) ------------------------------------------------------

@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    from tests.hf_checkpoints import save_hf_model

    ckpt = save_hf_model(tmp_path_factory.mktemp("mixtral") / "ckpt", "mixtral", seed=3, num_local_experts=4,
                         num_experts_per_tok=2)
    return import_checkpoint(ckpt)


def _fake_quant_experts(w: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Each expert's [out, in] matrix through the numpy reference, as a linear's weight."""
    return np.stack([reference.fake_quant(m, bits, GROUP, symmetric) for m in w])


@pytest.mark.parametrize("bits,symmetric", SCHEMES, ids=IDS)
def test_quantized_experts_equal_fake_quant_experts_exactly(mixtral, bits, symmetric):
    """-O3 with --quantize on a Mixtral: every expert matrix (gate_up [E, 2I, H] and down
    [E, H, I]) and attention linear is quantized; the outputs equal the float model on the
    numpy reference's fake-quantized weights bit for bit; the router stays float."""
    weights = mixtral.weights()

    def fake(name, w):
        if name.endswith(("gate_up_proj", "down_proj")):
            return _fake_quant_experts(w, bits, symmetric)
        return reference.fake_quant(w, bits, GROUP, symmetric) if _is_layer_linear(name) else w

    _, expected = _run(mixtral, WeightStore.from_arrays({n: fake(n, w) for n, w in weights.items()}),
                       pipeline_for_level(3, 4))
    m, got = _run(mixtral, WeightStore.from_arrays(weights), pipeline_for_level(3, 4, QuantConfig(bits, GROUP,
                                                                                                   symmetric)))
    text = print_module(m.module)
    n = len(ENTRY_FUNCTIONS) * mixtral.config.num_layers
    assert text.count('"llm.quantized_moe_ffn"') == n and '"llm.moe_ffn"' not in text
    assert text.count('"llm.moe_router"') == n and "gate.weight.int" not in text
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
