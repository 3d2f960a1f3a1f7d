"""print -> parse -> print is the identity on llm IR (whole models, every op, with locations)."""

from __future__ import annotations

import re

from iree.compiler import ir

from llmirc.dialect import make_context, parse_module, print_module, verify_module
from llmirc.dialect.attrs import op_attrs
from llmirc.dialect.spec import lookup


def _roundtrip(text: str, debug_info: bool) -> str:
    # A fresh context each time: nothing may survive only inside the first context.
    return print_module(parse_module(text, make_context()), debug_info=debug_info)


def _llm_attrs(module) -> list:
    """(op name, attributes as Python values) of every llm op, in order."""
    out = []

    def visit(op):
        op = op.operation
        if op.name.startswith("llm."):
            out.append((op.name, op_attrs(lookup(op.name), op)))
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return out


def test_model_roundtrip_is_identity(tiny_model, model_text):
    assert "func.func @prefill" in model_text and "func.func @decode" in model_text
    assert "!llm.kv_cache<2 : i64, 2 : i64, 16 : i64, 128 : i64, f32>" in model_text  # 2 layers, GQA 4 -> 2
    once = _roundtrip(model_text, debug_info=False)
    assert once == model_text
    assert _roundtrip(once, debug_info=False) == model_text
    verify_module(parse_module(once))


def test_model_roundtrip_with_locations(model_text_debug):
    assert 'loc("model.layers.0.self_attn.q_proj")' in model_text_debug
    assert 'loc("model.layers.1.self_attn.attention")' in model_text_debug
    assert _roundtrip(model_text_debug, debug_info=True) == model_text_debug
    # Dropping locations after the round trip gives the plain text back.
    plain = print_module(parse_module(model_text_debug), debug_info=False)
    assert "loc(" not in plain
    assert _roundtrip(plain, debug_info=False) == plain


def test_roundtrip_keeps_attribute_values_exactly(tiny_model, model_text):
    """Floats (eps, inv_freq, scale) are printed so that they parse back bit for bit."""
    before = _llm_attrs(tiny_model.module)
    after = _llm_attrs(parse_module(model_text))
    assert len(before) > 100
    assert before == after
    rope = next(a for n, a in before if n == "llm.rope")
    assert rope["inv_freq"][0] == 1.0 and len(rope["inv_freq"]) == 8


def test_all_ops_roundtrip(all_ops_text):
    assert _roundtrip(all_ops_text, debug_info=True) == all_ops_text
    verify_module(parse_module(all_ops_text))


def test_roundtrip_detects_a_change(model_text):
    """The comparison is not vacuous: a changed attribute does not print back as the original."""
    changed = re.sub(r"eps = [^}]*\}", "eps = 1.000000e-01 : f32}", model_text, count=1)
    assert _roundtrip(changed, debug_info=False) != model_text
