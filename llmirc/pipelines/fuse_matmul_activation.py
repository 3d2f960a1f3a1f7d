"""A compiler pass that makes activations the epilogue of the matmul before them.

Patterns (tried in order per op, tinygrad-style (op, rewrite) pairs):
- silu(linear(x, w))                               -> fused_linear{silu}
- gelu(linear(x, w))                               -> fused_linear{gelu | gelu_tanh}
- mul(act(slice(y, 0, N)), slice(y, N, N)), y = linear(x, w) of width 2N, act silu or gelu
                                                   -> fused_linear{swiglu | geglu | geglu_tanh}
Why: the activation is applied while the matmul's result is in registers,
so the [tokens, 2N] intermediate of a fused gate/up is never written out.
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect import Builder
from ..dialect.types import from_mlir
from .pass_manager import register_pass
from .rewrite import Rewrite, apply_patterns, attrs_of, operands_of, producer
from .sibling_linears import users


def _sole_use(v: ir.Value) -> bool:
    return len(users(v)) == 1


def _epilogue(op: ir.Operation, activation: str):
    lin = producer(op.operands[0], "linear")
    if lin is None or not _sole_use(lin.results[0]):
        return None
    x, w, bias = operands_of(lin)
    return Builder(ir.InsertionPoint(op)).fused_linear(x, w, bias=bias, activation=activation, loc=lin.location)


def _silu(op: ir.Operation):
    return _epilogue(op, "silu")


def _gelu(op: ir.Operation):
    return _epilogue(op, "gelu_tanh" if attrs_of(op)["approximate"] == "tanh" else "gelu")


def _gated(op: ir.Operation):
    a, b = op.operands
    silu = producer(a, "silu") or producer(a, "gelu")
    if silu is None or not _sole_use(a):
        return None
    activation = "swiglu" if silu.name == "llm.silu" else \
        "geglu_tanh" if attrs_of(silu)["approximate"] == "tanh" else "geglu"
    gate, up = producer(silu.operands[0], "slice"), producer(b, "slice")
    if gate is None or up is None or gate.operands[0] != up.operands[0]:
        return None
    y = gate.operands[0]
    lin = producer(y, "linear")
    n = from_mlir(y.type).shape[-1]
    ga, ua = attrs_of(gate), attrs_of(up)
    last = from_mlir(y.type).rank - 1
    if lin is None or n is None or len(users(y)) != 2 or not _sole_use(silu.operands[0]) \
            or (ga["axis"] % (last + 1), ga["start"], ga["size"]) != (last, 0, n // 2) \
            or (ua["axis"] % (last + 1), ua["start"], ua["size"]) != (last, n // 2, n // 2):
        return None
    x, w, bias = operands_of(lin)
    return Builder(ir.InsertionPoint(op)).fused_linear(x, w, bias=bias, activation=activation, loc=lin.location)


PATTERNS: dict[str, list[Rewrite]] = {
    "silu": [_silu],
    "gelu": [_gelu],
    "mul": [_gated],
}


@register_pass("fuse-matmul-activation", "Fold silu/gelu/SwiGLU/GeGLU into the preceding linear's epilogue.")
def fuse_matmul_activation(module: ir.Module) -> None:
    apply_patterns(module, PATTERNS)
