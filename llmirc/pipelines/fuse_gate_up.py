"""A compiler pass that fuses the gate and up projections of a gated MLP into one matmul.

Match: two linears on the same input (both with a bias or neither), g and u, used as mul(act(g), u) with act silu
(SwiGLU) or gelu, erf or tanh (Gemma's GeGLU); fuse-matmul-activation then makes the activation
the fused matmul's epilogue.
"""

from __future__ import annotations

from iree.compiler import ir

from .pass_manager import register_pass
from .rewrite import functions
from .sibling_linears import common_scope, fuse_linears, sibling_groups, users


GATE_ACTIVATIONS = ("llm.silu", "llm.gelu")


def _gated_pair(group: list[ir.Operation]) -> list[ir.Operation] | None:
    for gate in group:
        silus = users(gate.results[0])
        if len(silus) != 1 or silus[0].name not in GATE_ACTIVATIONS:
            continue
        muls = users(silus[0].results[0])
        if len(muls) != 1 or muls[0].name != "llm.mul":
            continue
        other = [v for v in muls[0].operands if v != silus[0].results[0]]
        for up in group:
            if up is not gate and other and other[0] == up.results[0]:
                return [gate, up]
    return None


@register_pass("fuse-gate-up", "One matmul for the gate and up projections of a SwiGLU / GeGLU MLP.")
def fuse_gate_up(module: ir.Module) -> None:
    for func in functions(module).values():
        for group in sibling_groups(func):
            pair = _gated_pair(group)
            if pair:
                fuse_linears(pair, loc=common_scope(pair) + "gate_up_proj")
