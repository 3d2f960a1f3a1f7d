"""A compiler pass that fuses the q, k and v projections into one matmul.

Match: 2+ linears on the same input, all with a bias or all without, whose results are
each split into heads (`llm.reshape` to rank 4) — the attention projections.
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect.types import from_mlir
from .pass_manager import register_pass
from .rewrite import functions
from .sibling_linears import common_scope, fuse_linears, sibling_groups, users


def _feeds_heads(op: ir.Operation) -> bool:
    us = users(op.results[0])
    return bool(us) and all(u.name == "llm.reshape" and from_mlir(u.results[0].type).rank == 4 for u in us)


@register_pass("fuse-qkv", "One matmul for the q, k and v projections (concatenated weight, sliced result).")
def fuse_qkv(module: ir.Module) -> None:
    for func in functions(module).values():
        for group in sibling_groups(func):
            heads = [op for op in group if _feeds_heads(op)]
            if len(heads) > 1:
                fuse_linears(heads, loc=common_scope(heads) + "qkv_proj")

