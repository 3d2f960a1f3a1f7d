"""The spec-driven Builder: result types, defaults, segment sizes, locations, clear errors."""

from __future__ import annotations

import pytest
from iree.compiler import ir
from iree.compiler.dialects import func

from llmirc.dialect import Builder, KVCacheT, SpecError, TensorT, make_context, print_module, verify_module
from llmirc.dialect.attrs import op_attrs
from llmirc.dialect.context import location_name
from llmirc.dialect.spec import lookup
from llmirc.dialect.types import from_mlir

CACHE = KVCacheT(layers=2, kv_heads=2, head_dim=8, max_seq_len=32)


@pytest.fixture
def fn():
    """(builder, args, module) inside a function with a few typical arguments; verifies on exit."""
    types = [TensorT((None, None, 16), "f32"), TensorT((32, 16), "f32"), TensorT((32,), "f32"),
             TensorT((None, None), "i64"), CACHE, TensorT((16,), "f32"), TensorT((4, 256), "f32")]
    with make_context(), ir.Location.unknown():
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            f = func.FuncOp("f", ([ir.Type.parse(str(t)) for t in types], []))
            block = f.add_entry_block()
        with ir.InsertionPoint(block):
            yield Builder(), block.arguments, module


def _op(value) -> ir.Operation:
    return value.owner


def _attrs(value) -> dict:
    op = _op(value)
    return op_attrs(lookup(op.name), op)


def test_infers_result_types(fn):
    b, (x, w, bias, pos, cache, nw, big), _ = fn
    y = b.linear(x, w, bias=bias)
    assert from_mlir(y.type) == TensorT((None, None, 32), "f32")
    q = b.reshape(y, shape=[0, 0, 4, 8])
    assert from_mlir(q.type) == TensorT((None, None, 4, 8), "f32")
    assert from_mlir(b.rope(q, pos, inv_freq=[1.0, 0.5, 0.25, 0.125]).type) == from_mlir(q.type)
    k = b.reshape(b.linear(x, b.weight(name="k", result_types=[TensorT((16, 16), "f32")])), shape=[0, 0, 2, 8])
    c = b.append_kv(cache, k, k, pos, layer=1)
    assert from_mlir(c.type) == CACHE
    a = b.attention(q, c, pos, layer=1, num_heads=4, num_kv_heads=2, head_dim=8, scale=8 ** -0.5)
    assert from_mlir(a.type) == TensorT((None, None, 4, 8), "f32")
    assert from_mlir(b.argmax(x).type) == TensorT((None, None), "i64")
    values, scales, zeros = b.quantize(big, group_size=64)
    assert [from_mlir(v.type) for v in (values, scales, zeros)] == [
        TensorT((4, 256), "i8"), TensorT((4, 4), "f32"), TensorT((4, 4), "i8")]
    assert from_mlir(b.all_gather(b.reshape(big, shape=[2, 2, 256]), dim=1, num_shards=2).type) == \
        TensorT((2, 512), "f32")


def test_fills_defaults(fn):
    b, (x, w, bias, pos, cache, nw, big), _ = fn
    assert _attrs(b.rms_norm(x, nw)) == {"eps": pytest.approx(1e-6)}
    assert _attrs(b.layer_norm(x, nw)) == {"eps": pytest.approx(1e-5)}
    assert _attrs(b.gelu(x)) == {"approximate": "none"}
    assert _attrs(b.all_reduce(b.reshape(big, shape=[2, 2, 256]), num_shards=2)) == {
        "num_shards": 2, "reduction": "sum"}
    values, _, _ = b.quantize(big)
    assert _attrs(values) == {"bits": 8, "group_size": 128, "symmetric": True}
    # An explicit value overrides the default.
    assert _attrs(b.rms_norm(x, nw, eps=0.5)) == {"eps": 0.5}


def test_optional_operands_and_segment_sizes(fn):
    b, (x, w, bias, pos, cache, nw, big), module = fn
    without = _op(b.linear(x, w))
    with_bias = _op(b.linear(x, w, bias))
    by_name = _op(b.linear(x, w, bias=bias))
    assert str(without.attributes["operandSegmentSizes"]) == "array<i32: 1, 1, 0>"
    assert len(without.operands) == 2
    assert str(with_bias.attributes["operandSegmentSizes"]) == "array<i32: 1, 1, 1>"
    assert str(by_name.attributes["operandSegmentSizes"]) == "array<i32: 1, 1, 1>"
    assert "operandSegmentSizes" not in _op(b.rms_norm(x, nw)).attributes  # no optional operands
    func.ReturnOp([])
    verify_module(module)


def test_location_is_a_name(fn):
    b, (x, w, *_), module = fn
    op = _op(b.linear(x, w, loc="model.layers.3.self_attn.q_proj"))
    assert location_name(op.location) == "model.layers.3.self_attn.q_proj"
    func.ReturnOp([])
    assert 'loc("model.layers.3.self_attn.q_proj")' in print_module(module, debug_info=True)


@pytest.mark.parametrize("make, error, message", [
    (lambda b, a: b.rms_norm(a[0], a[5], epsilon=1e-5), SpecError, r"^llm.rms_norm: unknown attributes \['epsilon'\]$"),
    (lambda b, a: b.linear(a[0]), SpecError, r"^llm.linear: operand 'weight' is required$"),
    (lambda b, a: b.linear(a[0], bias=a[2]), SpecError, r"^llm.linear: operand 'weight' is required$"),
    (lambda b, a: b.silu(a[0], a[0]), SpecError, r"^llm.silu: takes 1 operands, got 2$"),
    (lambda b, a: b.append_kv(a[4], a[0], a[0], a[3]), SpecError, r"^llm.append_kv: attribute 'layer' is required$"),
    (lambda b, a: b.gelu(a[0], approximate="fast"), SpecError,
     r"^llm.gelu: attribute 'approximate' = 'fast' not in \['none', 'tanh'\]$"),
    (lambda b, a: b.weight(name="w"), SpecError, r"^llm.weight: result types must be given$"),
    (lambda b, a: b.frobnicate(a[0]), AttributeError, r"^llm dialect has no op 'frobnicate'$"),
    (lambda b, a: b.linear(a[0], a[5], loc="lm_head"), SpecError,
     r"^llm.linear at lm_head: operand 'weight' must have rank 2, got tensor<16xf32>$"),
    (lambda b, a: b.linear(a[0], a[6], loc="lm_head"), SpecError,
     r"^llm.linear at lm_head: input vs weight \[out, in\]: last dim 16 != 256$"),
    (lambda b, a: b.embedding(a[0], a[1]), SpecError,
     r"^llm.embedding: ids must be an integer tensor, got tensor<\?x\?x16xf32>$"),
    (lambda b, a: b.attention(a[0], a[4], a[3], layer=0, num_heads=4, num_kv_heads=2, head_dim=8, scale=1.0),
     SpecError, r"^llm.attention: operand 'query' must have rank 4, got tensor<\?x\?x16xf32>$"),
    (lambda b, a: b.attention(b.reshape(a[0], shape=[0, 0, 2, 8]), a[4], a[3], layer=0, num_heads=2,
                              num_kv_heads=2, head_dim=4, scale=1.0, loc="attn"),
     SpecError, r"^llm.attention at attn: head_dim differs between query, attribute and cache$"),
    (lambda b, a: b.attention(b.reshape(a[0], shape=[0, 0, 2, 8]), a[3], a[3], layer=0, num_heads=2,
                              num_kv_heads=2, head_dim=8, scale=1.0),
     SpecError, r"^llm.attention: cache must be !llm.kv_cache, got tensor<\?x\?xi64>$"),
])
def test_errors_are_clear(fn, make, error, message):
    b, args, _ = fn
    with pytest.raises(error, match=message):
        make(b, args)
