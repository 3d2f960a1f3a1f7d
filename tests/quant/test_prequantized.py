"""Import of GPTQ / AWQ checkpoints: known integers packed in the public layouts come back exactly.

The packers (llmirc/testing/prequantized.py) follow AutoGPTQ's and AutoAWQ's loops; the
frontend unpacks vectorised. The imported model must then compute exactly what an f32
checkpoint of the dequantized weights computes, and compile like any quantized model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.dialect import print_module
from llmirc.errors import CheckpointError
from llmirc.frontend import import_checkpoint
from llmirc.frontend.prequantized import AWQ_ORDER, unpack_cols, unpack_rows
from llmirc.pipelines import PassManager, pipeline_for_level
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint
from llmirc.testing.prequantized import dequantized_weights, make_prequantized_checkpoint, pack_awq, pack_gptq
from llmirc.frontend.decoder import ENTRY_FUNCTIONS
from tests.pipelines.equivalence import run_model

SPEC = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=320, seed=6)
FORMATS = {  # id -> make_prequantized_checkpoint arguments
    "gptq-int4": dict(method="gptq", bits=4, group_size=32),
    "gptq-int4-sym": dict(method="gptq", bits=4, group_size=32, sym=True),
    "gptq-int4-v2": dict(method="gptq", bits=4, group_size=16, checkpoint_format="gptq_v2"),
    "gptq-int8-sym": dict(method="gptq", bits=8, group_size=32, sym=True),
    "awq-int4": dict(method="awq", bits=4, group_size=32),
}


@pytest.fixture(scope="module", params=list(FORMATS))
def prequantized(request, tmp_path_factory):
    directory, ints = make_prequantized_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt", SPEC,
                                                   **FORMATS[request.param])
    return request.param, directory, ints


def test_unpacking_inverts_the_reference_packers():
    rng = np.random.default_rng(0)
    for bits in (4, 8):
        q = rng.integers(0, 1 << bits, (32, 64))
        z = rng.integers(1, 1 << bits, (32, 4))
        packed = pack_gptq(q, z, np.ones((32, 4), np.float16), bits, 16, zeros_minus_one=False)
        np.testing.assert_array_equal(unpack_rows(packed["qweight"], bits), q.T)
        np.testing.assert_array_equal(unpack_cols(packed["qzeros"], bits), z.T)
    q = rng.integers(0, 16, (32, 64))
    z = rng.integers(0, 16, (32, 4))
    packed = pack_awq(q, z, np.ones((32, 4), np.float16))
    np.testing.assert_array_equal(unpack_cols(packed["qweight"], 4, AWQ_ORDER), q.T)
    np.testing.assert_array_equal(unpack_cols(packed["qzeros"], 4, AWQ_ORDER), z.T)
    # AWQ's interleave: nibble 1 of the first int32 holds out-feature 2
    assert (packed["qweight"][0, 0].view(np.uint32) >> 4) & 0xF == q[2, 0]


def test_import_reproduces_the_integers_exactly(prequantized):
    fmt, directory, ints = prequantized
    m = import_checkpoint(directory)
    store = m.weight_store()
    bits = FORMATS[fmt]["bits"]
    assert set(ints) == {q.prefix for q in m.prequantized.linears.values()}
    for q in m.prequantized.linears.values():
        values, zeros, scales = ints[q.prefix]
        qv, qs, qz = (store[n] for n in q.names)
        offset = 128 if bits == 8 else 0  # unsigned int8 -> the dialect's signed int8, q - z unchanged
        np.testing.assert_array_equal(qv.astype(np.int64), values - offset)
        np.testing.assert_array_equal(qz.astype(np.int64), zeros - offset)
        np.testing.assert_array_equal(qs, scales.astype(np.float32))
        assert qv.dtype == np.int8 and qs.dtype == np.float32
    text = print_module(m.module)
    assert text.count('"llm.quantized_matmul"') == len(ENTRY_FUNCTIONS) * 7 * SPEC.layers
    assert f"xi{bits}>" in text and 'name = "lm_head.weight"' in text


def test_imported_model_equals_dequantized_f32_checkpoint(prequantized, tmp_path):
    fmt, directory, ints = prequantized
    dense = make_checkpoint(tmp_path / "dense", SPEC, weights=dequantized_weights(SPEC, ints))
    quant, ref = import_checkpoint(directory), import_checkpoint(dense)
    for m in (quant, ref):
        PassManager(pipeline_for_level(0, 4), weights=m.weight_store()).run(m.module)
    tokens = np.random.default_rng(2).integers(3, 300, (2, 7)).astype(np.int64)
    lens = np.array([7, 3], np.int64)
    got = run_model(quant.module, quant.weight_store(), tokens, lens)
    expected = run_model(ref.module, ref.weights(), tokens, lens)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_compiled_gptq_matches_interpreter(tmp_path):
    directory, _ = make_prequantized_checkpoint(tmp_path / "gptq", SPEC, method="gptq", bits=4, group_size=32)
    art = tmp_path / "art"
    compile_checkpoint(CompileOptions(directory, art, page_size=4), progress=None)
    from llmirc.runtime import Engine

    m = import_checkpoint(directory)
    store = m.weight_store()
    PassManager(pipeline_for_level(3, 4), weights=store).run(m.module)
    tokens = np.array([[1, 40, 41, 42, 43, 44]], np.int64)
    expected = run_model(m.module, store, tokens, np.array([6]), steps=4)
    engine = Engine(art, num_pages=8)
    table = np.arange(1, 8, dtype=np.int64)[None]
    logits = engine.prefill(tokens, np.array([6]), table)
    got, pos = [logits], 6
    for _ in range(4):
        logits = engine.decode(logits.argmax(-1), np.array([pos]), table)
        got.append(logits)
        pos += 1
    for g, e in zip(got, expected):
        assert g.argmax() == e.argmax()
        np.testing.assert_allclose(g, e, atol=2e-4, rtol=0)


# ---- what is refused, and how -----------------------------------------------------------------

def _edit_config(directory, **changes):
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg["quantization_config"] |= changes
    path.write_text(json.dumps(cfg))


def test_act_order_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, _ = make_prequantized_checkpoint(tmp_path / "c", SPEC, method="gptq", bits=4, group_size=32)
    tensors = load_file(str(directory / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.g_idx"
    tensors[name] = np.random.default_rng(0).permutation(tensors[name])
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.up_proj.g_idx' is an act-order \(desc_act\) "
                                              r"permutation.*re-quantize with desc_act=False"):
        import_checkpoint(directory)


@pytest.mark.parametrize("changes,message", [
    (dict(bits=3), "gptq with 3 bits is not supported"),
    (dict(quant_method="bitsandbytes"), "quant_method 'bitsandbytes' is not supported"),
    (dict(group_size=48), "does not fit gptq packing with 4 bits and group size 48"),
])
def test_bad_quantization_config(tmp_path, changes, message):
    directory, _ = make_prequantized_checkpoint(tmp_path / "c", SPEC, method="gptq", bits=4, group_size=32)
    _edit_config(directory, **changes)
    with pytest.raises(CheckpointError, match=message):
        import_checkpoint(directory)


def test_awq_gemv_is_refused(tmp_path):
    directory, _ = make_prequantized_checkpoint(tmp_path / "c", SPEC, method="awq", bits=4, group_size=32)
    _edit_config(directory, version="gemv")
    with pytest.raises(CheckpointError, match="AWQ version 'gemv' is not supported"):
        import_checkpoint(directory)


def test_wrong_tensor_shape_names_the_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, _ = make_prequantized_checkpoint(tmp_path / "c", SPEC, method="awq", bits=4, group_size=32)
    tensors = load_file(str(directory / "model.safetensors"))
    name = "model.layers.1.self_attn.o_proj.scales"
    tensors[name] = tensors[name][:1]
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' has shape \\[1, 64\\], expected \\[2, 64\\]"):
        import_checkpoint(directory)
