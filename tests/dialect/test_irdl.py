"""The generated IRDL, checked by upstream MLIR (iree-opt --irdl-file) against the same IR
our Python verifier sees: both accept the model, both reject the same broken ops."""

from __future__ import annotations

import re

import pytest

from llmirc.dialect import REGISTRY, VerificationError, parse_module, verify_module
from llmirc.dialect.irdl import check_with_irdl, export_irdl, find_iree_opt


@pytest.fixture(scope="module")
def irdl_text() -> str:
    return export_irdl()


def _ours_rejects(text: str) -> list[str]:
    with pytest.raises(VerificationError) as info:
        verify_module(parse_module(text))
    return info.value.errors


def test_iree_opt_is_found():
    assert find_iree_opt().endswith("iree-opt")


def test_export_is_generated_from_the_registry(irdl_text):
    assert irdl_text.startswith("irdl.dialect @llm {")
    ops = re.findall(r"irdl.operation @(\w+) \{", irdl_text)
    assert ops == list(REGISTRY)
    assert re.findall(r"irdl.type @(\w+) \{", irdl_text) == ["kv_cache", "paged_kv_cache"]
    assert "irdl.parameters(layers: %layers_1, kv_heads: %kv_heads_2, head_dim: %head_dim_3, " \
           "block_size: %block_size_4, dtype: %dtype_9)" in irdl_text
    # linear: tensors, an optional bias, no attributes.
    linear = irdl_text[irdl_text.index("irdl.operation @linear"):]
    linear = linear[:linear.index("}")]
    assert "irdl.operands(input: %input_1, weight: %weight_2, bias: optional %bias_3)" in linear
    assert linear.count('irdl.base "!builtin.tensor"') == 4
    # append_kv returns exactly the type of its cache operand (one constraint variable for both).
    assert "irdl.results(cache_out: %cache_1)" in irdl_text


def test_model_accepted_prefill_and_decode(model_text, model_text_debug, irdl_text):
    assert "func.func @prefill" in model_text and "func.func @decode" in model_text
    for text in (model_text, model_text_debug):
        ok, diagnostics = check_with_irdl(text, irdl_text)
        assert ok, diagnostics
        assert diagnostics == ""


def test_every_op_accepted(all_ops_text):
    verify_module(parse_module(all_ops_text))
    ok, diagnostics = check_with_irdl(all_ops_text)
    assert ok, diagnostics


# case -> what iree-opt says (its diagnostic carries the op's NameLoc as well).
IRDL_MESSAGES = {
    "operand_count": "op expects exactly 2 operands, but got 1",
    "missing_attribute": "'llm.rms_norm' op attribute \"eps\" is expected but not provided",
    "missing_attribute_decode": "'llm.rms_norm' op attribute \"eps\" is expected but not provided",
    "attribute_kind": "expected base attribute 'builtin.float' but got 'builtin.string'",
}


@pytest.mark.parametrize("case", list(IRDL_MESSAGES))
def test_both_reject_the_same_broken_op(model_text_debug, irdl_text, broken, broken_messages, case):
    text = broken(model_text_debug, case)
    assert _ours_rejects(text) == [broken_messages[case]]
    ok, diagnostics = check_with_irdl(text, irdl_text)
    assert not ok
    assert IRDL_MESSAGES[case] in diagnostics
    assert 'loc("model.layers.0.input_layernorm")' in diagnostics


@pytest.mark.parametrize("case", ["linear_shape", "result_type"])
def test_shapes_are_beyond_irdl(model_text_debug, irdl_text, broken, broken_messages, case):
    """IRDL cannot constrain builtin tensor shapes: only our verifier catches these."""
    text = broken(model_text_debug, case)
    assert _ours_rejects(text) == [broken_messages[case]]
    assert check_with_irdl(text, irdl_text) == (True, "")


def _edit(all_ops_text: str, ir_edits, loc: str, subs, user_subs=()) -> str:
    edit_op, edit_first_user = ir_edits
    text = edit_op(all_ops_text, loc, *subs)
    return edit_first_user(text, loc, *user_subs) if user_subs else text


KV = r"!llm.kv_cache<2 : i64, 2 : i64, 4 : i64, 16 : i64, f32>"


def _case(loc, subs, irdl_says, ours_says, user_subs=()):
    return pytest.param(loc, subs, user_subs, irdl_says, ours_says, id=f"{loc}:{ours_says.split()[1]}")


@pytest.mark.parametrize("loc, subs, user_subs, irdl_says, ours_says", [
    # An updated cache must keep its operand's type (one IRDL constraint variable for both).
    _case("append_kv", [(re.escape("-> " + KV), "-> " + KV.replace("f32", "f16"))],
          "expected '!llm.kv_cache<2 : i64, 2 : i64, 4 : i64, 16 : i64, f32>' but got "
          "'!llm.kv_cache<2 : i64, 2 : i64, 4 : i64, 16 : i64, f16>'", "result 0 has type",
          user_subs=[(re.escape(KV), KV.replace("f32", "f16"))]),
    # A cache operand must be a cache.
    _case("append_kv", [(r'"llm.append_kv"\(%\w+, (%\w+)', r'"llm.append_kv"(\1, \1'),
                        (r"\(" + re.escape(KV), "(tensor<2x3x2x4xf32>")],
          "expected base type 'llm.kv_cache' but got 'builtin.tensor'", "operand 'cache' must be !llm.kv_cache"),
    # Attributes with a fixed set of values are enumerated.
    _case("gelu", [('approximate = "tanh"', 'approximate = "fast"')],
          "'\"fast\"' does not satisfy the constraint", "attribute 'approximate' = 'fast' not in ['none', 'tanh']"),
    _case("quantize", [("bits = 4 : i64", "bits = 5 : i64")],
          "'5 : i64' does not satisfy the constraint", "attribute 'bits' = 5 not in [4, 8]"),
    # Attribute kinds.
    _case("quantize", [("symmetric = false", "symmetric = 0 : i64")],
          "'0 : i64' does not satisfy the constraint", "attribute 'symmetric' must be a bool"),
    _case("attention", [("layer = 0 : i64", "layer = 0.0 : f32")],
          "expected base attribute 'builtin.integer' but got 'builtin.float'", "attribute 'layer' must be i64"),
    _case("rope", [(r"inv_freq = array<f32: [^>]*>", "inv_freq = [1.0, 0.1]")],
          "expected base attribute 'builtin.dense_array' but got 'builtin.array'",
          "attribute 'inv_freq' must be f32_array"),
    _case("reshape_q", [(r'shape = array<i64: [^>]*>', 'shape = "0, 0, 4, 4"')],
          "expected base attribute 'builtin.dense_array' but got 'builtin.string'",
          "attribute 'shape' must be i64_array"),
])
def test_both_reject_kind_errors(all_ops_text, ir_edits, loc, subs, user_subs, irdl_says, ours_says):
    text = _edit(all_ops_text, ir_edits, loc, subs, user_subs)
    assert text != all_ops_text
    errors = _ours_rejects(text)
    assert len(errors) == 1 and errors[0].startswith("'llm.") and f" at {loc}: " in errors[0], errors
    assert ours_says in errors[0]
    ok, diagnostics = check_with_irdl(text)
    assert not ok
    assert irdl_says in diagnostics, diagnostics


def test_both_reject_unknown_op_and_bad_cache_params(all_ops_text):
    text = all_ops_text.replace('"llm.silu"', '"llm.swish"', 1)
    assert "not an op of the llm dialect" in _ours_rejects(text)[0]
    ok, diagnostics = check_with_irdl(text)
    assert not ok and "unregistered operation 'llm.swish'" in diagnostics

    text = all_ops_text.replace(KV, KV.replace("f32>", "i8>"))  # a cache of integers
    ok, diagnostics = check_with_irdl(text)
    assert not ok and "'i8' does not satisfy the constraint" in diagnostics


def test_irdl_rejects_unranked_tensors():
    text = """func.func @f(%x: tensor<*xf32>) {
  %0 = "llm.silu"(%x) : (tensor<*xf32>) -> tensor<*xf32> loc("act")
  return
}"""
    assert _ours_rejects(text) == ["'llm.silu' at act: input has unsupported type tensor<*xf32>"]
    ok, diagnostics = check_with_irdl(text)
    assert not ok
    assert "expected base type 'builtin.tensor' but got 'builtin.unranked_tensor'" in diagnostics, diagnostics
