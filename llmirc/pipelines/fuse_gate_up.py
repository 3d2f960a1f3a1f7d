"""A compiler pass that fuses the SwiGLU gate and up projections into one matmul.

Match: two bias-free linears on the same input, g and u, used as mul(silu(g), u).
"""

from __future__ import annotations

from iree.compiler import ir

from .pass_manager import register_pass
from .rewrite import functions
from .sibling_linears import common_scope, fuse_linears, sibling_groups, users


def _swiglu_pair(group: list[ir.Operation]) -> list[ir.Operation] | None:
    for gate in group:
        silus = users(gate.results[0])
        if len(silus) != 1 or silus[0].name != "llm.silu":
            continue
        muls = users(silus[0].results[0])
        if len(muls) != 1 or muls[0].name != "llm.mul":
            continue
        other = [v for v in muls[0].operands if v != silus[0].results[0]]
        for up in group:
            if up is not gate and other and other[0] == up.results[0]:
                return [gate, up]
    return None


@register_pass("fuse-gate-up", "One matmul for the SwiGLU gate and up projections.")
def fuse_gate_up(module: ir.Module) -> None:
    for func in functions(module).values():
        for group in sibling_groups(func):
            pair = _swiglu_pair(group)
            if pair:
                fuse_linears(pair, loc=common_scope(pair) + "gate_up_proj")
