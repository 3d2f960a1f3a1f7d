"""Our verifier accepts the model and names op and location for each hand-broken op."""

from __future__ import annotations

import pytest
from iree.compiler import ir
from iree.compiler.dialects import func

from llmirc.dialect import Builder, KVCacheT, TensorT, VerificationError, make_context, parse_module, \
    print_module, verify_module


def _errors(text: str) -> list[str]:
    with pytest.raises(VerificationError) as info:
        verify_module(parse_module(text))
    return info.value.errors


def test_accepts_the_model(tiny_model, model_text, model_text_debug):
    verify_module(tiny_model.module)
    verify_module(parse_module(model_text))
    verify_module(parse_module(model_text_debug))


def test_accepts_every_op(all_ops_text):
    verify_module(parse_module(all_ops_text))


@pytest.mark.parametrize("case", ["operand_count", "missing_attribute", "missing_attribute_decode",
                                  "attribute_kind", "linear_shape", "result_type"])
def test_rejects_broken_op_with_op_and_location(model_text_debug, broken, broken_messages, case):
    text = broken(model_text_debug, case)
    assert text != model_text_debug
    # Exactly the edited op is reported (prefill's or decode's), with op name and location.
    assert _errors(text) == [broken_messages[case]]


def test_error_message_and_context_suffix(model_text_debug, broken):
    module = parse_module(broken(model_text_debug, "missing_attribute"))
    with pytest.raises(VerificationError, match=r"^'llm.rms_norm' at model.layers.0.input_layernorm: "
                                                r"missing attribute 'eps' \(f32\) \(after pass x\)$"):
        verify_module(module, context="after pass x")


def test_collects_every_error(model_text_debug, broken):
    text = broken(broken(model_text_debug, "missing_attribute"), "linear_shape")
    errors = _errors(text)
    assert len(errors) == 2
    assert "input_layernorm: missing attribute 'eps'" in errors[0]
    assert "q_proj: input vs weight [out, in]" in errors[1]


def test_rejects_wrong_operand_count_on_op_with_optional_operand(model_text_debug, ir_edits):
    edit_op, _ = ir_edits
    text = edit_op(model_text_debug, "model.layers.0.self_attn.q_proj",
                   (r"array<i32: 1, 1, 0>", "array<i32: 1, 1, 1>"))
    assert _errors(text) == ["'llm.linear' at model.layers.0.self_attn.q_proj: "
                             "operandSegmentSizes [1, 1, 1] does not fit 2 operands"]


def test_rejects_cache_operand_of_wrong_kind(model_text_debug, ir_edits):
    edit_op, _ = ir_edits
    # The attention's cache operand is swapped for the positions tensor.
    text = edit_op(model_text_debug, "model.layers.0.self_attn.attention",
                   (r'"llm.attention"\((%\w+), %\w+, (%\w+)\)', r'"llm.attention"(\1, \2, \2)'),
                   (r"!llm.kv_cache<[^>]*>, tensor<\?x\?xi64>\)", "tensor<?x?xi64>, tensor<?x?xi64>)"))
    assert _errors(text) == ["'llm.attention' at model.layers.0.self_attn.attention: "
                             "operand 'cache' must be !llm.kv_cache, got tensor<?x?xi64>"]


def _attention_module(num_heads: int = 4, num_kv_heads: int = 2) -> str:
    """A valid one-op module: attention of 4 query heads over a 2-KV-head cache, at loc layers.0.attention."""
    cache = KVCacheT(layers=1, kv_heads=num_kv_heads, head_dim=16, max_seq_len=8)
    with make_context(), ir.Location.unknown():
        module = ir.Module.create()
        types = [TensorT((1, 2, num_heads, 16), "f32"), cache, TensorT((1, 2), "i64")]
        with ir.InsertionPoint(module.body):
            f = func.FuncOp("f", ([ir.Type.parse(str(t)) for t in types], []))
            block = f.add_entry_block()
        with ir.InsertionPoint(block):
            q, c, pos = block.arguments
            Builder().attention(q, c, pos, layer=0, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=16,
                                scale=0.25, loc="layers.0.attention")
            func.ReturnOp([])
    return print_module(module, debug_info=True)


def test_rejects_num_heads_not_multiple_of_num_kv_heads():
    text = _attention_module()
    verify_module(parse_module(text))
    broken = text.replace("tensor<1x2x4x16xf32>", "tensor<1x2x3x16xf32>").replace("num_heads = 4", "num_heads = 3")
    assert broken.count("3x16") == 3
    assert _errors(broken) == ["'llm.attention' at layers.0.attention: num_heads must be a multiple of num_kv_heads"]


def test_rejects_unknown_llm_op(model_text_debug):
    text = model_text_debug.replace('"llm.silu"', '"llm.swish"', 1)
    errors = _errors(text)
    assert len(errors) == 1 and errors[0].startswith("'llm.swish' at ") and "not an op of the llm dialect" in errors[0]


def test_mlir_structural_errors_are_reported():
    """MLIR's own verifier runs too (parsing verifies, so the bad IR is built in Python, as a pass would)."""
    with make_context(), ir.Location.unknown():
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            f = func.FuncOp("f", ([ir.Type.parse("tensor<2xi64>")], [ir.Type.parse("tensor<2xf32>")]))
            block = f.add_entry_block()
        with ir.InsertionPoint(block):
            func.ReturnOp([block.arguments[0]])
    with pytest.raises(VerificationError, match=r"(?s)^MLIR verifier: .*doesn't match function result type"):
        verify_module(module)


def _moe_module(x=(2, 3, 16), routing=(2, 3, 2), gate_up=(4, 16, 16), down=(4, 16, 8)) -> str:
    """A router + expert FFN module with the given shapes, built without the builder's checks."""
    with make_context(), ir.Location.unknown():
        module = ir.Module.create()
        types = [TensorT(x, "f32"), TensorT(routing, "f32"), TensorT(routing, "i64"), TensorT(gate_up, "f32"),
                 TensorT(down, "f32"), TensorT((4, x[-1]), "f32")]
        with ir.InsertionPoint(module.body):
            f = func.FuncOp("f", ([ir.Type.parse(str(t)) for t in types], []))
            block = f.add_entry_block()
        with ir.InsertionPoint(block):
            xv, w, idx, gu, dn, router = block.arguments
            b = Builder()
            b.moe_router(xv, router, top_k=routing[-1], loc="layers.0.mlp.gate",
                         result_types=[TensorT(routing, "f32"), TensorT(routing, "i64")])
            b.moe_ffn(xv, w, idx, gu, dn, loc="layers.0.mlp.experts", result_types=[TensorT(x, "f32")])
            func.ReturnOp([])
    return print_module(module, debug_info=True)


@pytest.mark.parametrize("shapes,message", [
    ({}, None),
    (dict(gate_up=(4, 12, 16)), "gate_up rows 12 != 2 x down in-features 8"),
    (dict(down=(3, 16, 8)), "gate_up has 4 experts, down 3"),
    (dict(gate_up=(4, 16, 12), down=(4, 12, 8)), "input vs expert hidden size: last dim 16 != 12"),
    (dict(routing=(2, 4, 2)), "routing (2, 4, 2) does not fit the input (2, 3, 16)"),
    (dict(routing=(2, 3, 5)), "top_k 5 must be in [1, experts=4]"),
])
def test_moe_ops_reject_bad_shapes(shapes, message):
    text = _moe_module(**shapes)
    if message is None:
        verify_module(parse_module(text))
    else:
        errors = _errors(text)
        assert any(message in e and ("layers.0.mlp.experts" in e or "layers.0.mlp.gate" in e) for e in errors), errors
