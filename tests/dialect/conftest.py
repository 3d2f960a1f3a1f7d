"""Fixtures for the dialect tests: the tiny Llama's IR, a module using every op, and
helpers that break one op of printed IR by editing its text."""

from __future__ import annotations

import re

import pytest
from iree.compiler import ir
from iree.compiler.dialects import func

from llmirc.dialect import REGISTRY, Builder, KVCacheT, PagedKVCacheT, TensorT, make_context, print_module
from llmirc.frontend import import_checkpoint


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The imported tiny checkpoint (2 layers, 4 query heads over 2 KV heads)."""
    return import_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session")
def model_text(tiny_model) -> str:
    return print_module(tiny_model.module)


@pytest.fixture(scope="session")
def model_text_debug(tiny_model) -> str:
    """Printed with locations: llm ops carry NameLocs such as model.layers.0.self_attn.q_proj."""
    return print_module(tiny_model.module, debug_info=True)


# ---- editing printed IR ------------------------------------------------------------------

def op_lines(text: str, loc: str) -> list[int]:
    """Indices of the llm op lines located at NameLoc `loc` (prefill's first, then decode's)."""
    m = re.search(r"^(#loc\d*) = loc\(\"" + re.escape(loc) + r"\"\)$", text, re.M)
    ends = [f'loc("{loc}")'] + ([f"loc({m.group(1)})"] if m else [])
    lines = text.split("\n")
    found = [i for i, ln in enumerate(lines) if '"llm.' in ln and any(ln.endswith(e) for e in ends)]
    assert found, f"no llm op at {loc}"
    return found


def edit_op(text: str, loc: str, *subs: tuple[str, str], occurrence: int = 0) -> str:
    """Apply regex substitutions (each must match exactly once) to one op's line.

    `occurrence` 0 is the op in `prefill`, 1 the one in `decode` (they share locations).
    """
    lines = text.split("\n")
    i = op_lines(text, loc)[occurrence]
    for pattern, repl in subs:
        lines[i], n = re.subn(pattern, repl, lines[i])
        assert n == 1, f"{pattern!r} matched {n} times in: {lines[i]}"
    return "\n".join(lines)


def edit_first_user(text: str, loc: str, *subs: tuple[str, str], occurrence: int = 0) -> str:
    """Like edit_op, on the first line after the op at `loc` that uses its (single) result."""
    lines = text.split("\n")
    i = op_lines(text, loc)[occurrence]
    name = re.match(r"\s*(%\w+) = ", lines[i]).group(1)
    use = re.compile(r"[(\s]" + re.escape(name) + r"[,)]")
    j = next(j for j in range(i + 1, len(lines)) if use.search(lines[j]))
    for pattern, repl in subs:
        lines[j], n = re.subn(pattern, repl, lines[j])
        assert n == 1, f"{pattern!r} matched {n} times in: {lines[j]}"
    return "\n".join(lines)


@pytest.fixture(scope="session")
def ir_edits():
    """The two helpers above, for test modules (conftest is not importable by name)."""
    return edit_op, edit_first_user


# Hand-broken variants of the tiny model's IR: name -> (edit, expected verifier message).
# Every message names the op and its location, as the verifier promises.
def broken_model(text: str, case: str) -> str:
    norm = "model.layers.0.input_layernorm"
    q = "model.layers.0.self_attn.q_proj"
    if case == "operand_count":
        return edit_op(text, norm, (r'"llm.rms_norm"\((%\w+), %\w+\)', r'"llm.rms_norm"(\1)'),
                       (r": \((tensor<[^>]*>), tensor<64xf32>\)", r": (\1)"))
    if case == "missing_attribute":
        return edit_op(text, norm, (r" \{eps = [^}]*\}", ""))
    if case == "missing_attribute_decode":
        return edit_op(text, norm, (r" \{eps = [^}]*\}", ""), occurrence=1)
    if case == "attribute_kind":
        return edit_op(text, norm, (r"eps = [^}]*\}", 'eps = "tiny"}'))
    if case == "linear_shape":
        text = edit_op(text, q + ".weight", (r"-> tensor<64x64xf32>", "-> tensor<64x32xf32>"))
        return edit_op(text, q, (r", tensor<64x64xf32>\)", ", tensor<64x32xf32>)"))
    if case == "result_type":
        text = edit_op(text, q, (r"-> tensor<\?x\?x64xf32>", "-> tensor<?x?x48xf32>"))
        return edit_first_user(text, q, (r": \(tensor<\?x\?x64xf32>\)", ": (tensor<?x?x48xf32>)"))
    raise KeyError(case)


BROKEN_MESSAGES = {
    "operand_count": "'llm.rms_norm' at model.layers.0.input_layernorm: expected 2 operands, got 1",
    "missing_attribute": "'llm.rms_norm' at model.layers.0.input_layernorm: missing attribute 'eps' (f32)",
    "missing_attribute_decode": "'llm.rms_norm' at model.layers.0.input_layernorm: missing attribute 'eps' (f32)",
    "attribute_kind": "'llm.rms_norm' at model.layers.0.input_layernorm: attribute 'eps' must be f32, got \"tiny\"",
    "linear_shape": "'llm.linear' at model.layers.0.self_attn.q_proj: input vs weight [out, in]: last dim 64 != 32",
    "result_type": "'llm.linear' at model.layers.0.self_attn.q_proj: result 0 has type tensor<?x?x48xf32>, "
                   "expected tensor<?x?x64xf32>",
}


@pytest.fixture(scope="session")
def broken():
    """broken(text, case) -> the edited IR text; see BROKEN_MESSAGES for the cases."""
    return broken_model


@pytest.fixture(scope="session")
def broken_messages():
    return BROKEN_MESSAGES


# ---- one module with every op of the dialect ------------------------------------------------

CACHE = KVCacheT(layers=2, kv_heads=2, head_dim=4, max_seq_len=16)
POOL = PagedKVCacheT(layers=2, kv_heads=2, head_dim=4, block_size=4)


def build_all_ops_module() -> ir.Module:
    """Every registered op (optional operands both absent and present), built by the Builder."""
    f32 = "f32"
    with make_context(), ir.Location.unknown():
        module = ir.Module.create()
        args = [TensorT((2, 3, 8), f32), TensorT((2, 3), "i64"), TensorT((2,), "i64"), CACHE, POOL,
                TensorT((2, 4), "i64"), TensorT((2, 3, 8), f32)]
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp("all_ops", ([ir.Type.parse(str(t)) for t in args], []))
            block = fn.add_entry_block()
        with ir.InsertionPoint(block):
            b = Builder()
            x, ids, lens, cache, pool, bt, shards = block.arguments

            def w(name, *shape):
                return b.weight(name=name, result_types=[TensorT(shape, f32)], loc=name)

            b.embedding(ids, w("emb", 10, 8), loc="embedding")
            nw = w("norm", 8)
            b.rms_norm(x, nw, loc="rms_norm")
            b.layer_norm(x, nw, loc="layer_norm")
            b.layer_norm(x, nw, nw, eps=1e-3, loc="layer_norm_bias")
            lw = w("lin", 16, 8)
            y = b.linear(x, lw, bias=w("lin_bias", 16), loc="linear_bias")
            b.linear(x, lw, loc="linear")
            b.matmul(x, w("mm", 8, 5), loc="matmul")
            b.add(x, nw, loc="add")
            b.mul(x, x, loc="mul")
            b.silu(x, loc="silu")
            b.gelu(x, approximate="tanh", loc="gelu")
            b.softmax(x, loc="softmax")
            b.scale(x, factor=8.0, loc="scale")
            b.softcap(x, cap=30.0, loc="softcap")
            q = b.reshape(y, shape=[0, 0, 4, 4], loc="reshape_q")
            k = b.reshape(b.linear(x, w("k", 8, 8)), shape=[0, 0, 2, 4], loc="reshape_k")
            pos = b.positions(ids, lens, loc="positions")
            b.extend_positions(ids, lens, lens, loc="extend_positions")
            q = b.rope(q, pos, inv_freq=[1.0, 0.1], loc="rope")
            heads = dict(num_heads=4, num_kv_heads=2, head_dim=4, scale=0.5)
            c = b.append_kv(cache, k, k, pos, layer=0, loc="append_kv")
            b.attention(q, c, pos, layer=0, loc="attention", **heads)
            p = b.paged_append_kv(pool, bt, k, k, pos, layer=1, loc="paged_append_kv")
            b.paged_attention(q, p, bt, pos, layer=1, loc="paged_attention", **heads)
            b.last_token(x, lens, loc="last_token")
            b.argmax(x, loc="argmax")
            routing = b.moe_router(x, w("router", 4, 8), top_k=2, loc="moe_router")
            b.moe_ffn(x, *routing, w("gate_up", 4, 6, 8), w("down", 4, 8, 3), activation="gelu", loc="moe_ffn")
            eq = [b.weight(name=n, result_types=[TensorT(s, d)], loc=n) for n, s, d in (
                ("gq", (4, 6, 8), "i4"), ("gs", (4, 6, 2), f32), ("dq", (4, 8, 3), "i4"), ("ds", (4, 8, 1), f32),
                ("gz", (4, 6, 2), "i8"), ("dz", (4, 8, 1), "i8"))]
            b.quantized_moe_ffn(x, *routing, *eq, bits=4, gate_up_group_size=4, down_group_size=3,
                                loc="quantized_moe_ffn")
            vals, scales, zeros = b.quantize(lw, bits=4, group_size=4, symmetric=False, loc="quantize")
            b.dequantize(vals, scales, zeros, bits=4, group_size=4, loc="dequantize_zeros")
            b.dequantize(vals, scales, group_size=4, loc="dequantize")
            b.quantized_matmul(x, vals, scales, zeros, bits=4, group_size=4, loc="quantized_matmul")
            b.sharded_linear(x, lw, shard_dim=0, num_shards=2, loc="sharded_linear")
            b.all_gather(shards, dim=1, num_shards=2, loc="all_gather")
            b.all_reduce(shards, num_shards=2, reduction="max", loc="all_reduce")
            b.device_all_reduce(x, x, loc="device_all_reduce")
            b.device_all_gather(x, x, dim=2, loc="device_all_gather")
            cat = b.concat(lw, lw, axis=0, loc="concat")
            b.slice(cat, axis=0, start=16, size=16, loc="slice")
            b.fused_linear(x, cat, activation="swiglu", loc="fused_linear_swiglu")
            b.fused_linear(x, lw, bias=w("lin_bias2", 16), activation="gelu_tanh", loc="fused_linear")
            b.add_rms_norm(x, x, nw, eps=1e-5, loc="add_rms_norm")
            b.convert(x, dtype="f16", loc="convert")
            func.ReturnOp([])
    names = set()
    module.operation.walk(lambda op: names.add(op.operation.name) or ir.WalkResult.ADVANCE)
    missing = {s.full_name for s in REGISTRY.values()} - names
    assert not missing, f"add these new ops to build_all_ops_module: {sorted(missing)}"
    return module


@pytest.fixture(scope="session")
def all_ops_text() -> str:
    return print_module(build_all_ops_module(), debug_info=True)
