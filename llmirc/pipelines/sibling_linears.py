"""Shared by fuse-qkv and fuse-gate-up: turn sibling linears into one wider linear.

Linears that read the same input become `linear(x, concat(w1, w2, ...))`
followed by one `slice` per original result. One matmul reads x once and
streams one weight, instead of launching a matmul per projection.
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect import Builder
from ..dialect.types import from_mlir
from .rewrite import llm_ops, operands_of, producer, replace_op


def sibling_groups(func: ir.Operation) -> list[list[ir.Operation]]:
    """Bias-free linears grouped by their shared input, in program order, groups of 2+."""
    groups: dict[ir.Value, list[ir.Operation]] = {}
    for op in llm_ops(func, "linear"):
        x, w, bias = operands_of(op)
        if bias is None and producer(w, "weight") is not None:
            groups.setdefault(x, []).append(op)
    return [g for g in groups.values() if len(g) > 1]


def users(v: ir.Value) -> list[ir.Operation]:
    return [u.owner.operation if hasattr(u.owner, "operation") else u.owner for u in v.uses]


def common_scope(ops: list[ir.Operation]) -> str:
    """'model.layers.0.mlp.' for ops located at model.layers.0.mlp.gate_proj and .up_proj."""
    from ..dialect.context import location_name

    names = [location_name(op.location) for op in ops]
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    return prefix.rsplit(".", 1)[0] + "." if "." in prefix else ""


def fuse_linears(group: list[ir.Operation], loc: str) -> None:
    """Replace `group` (linears on one input) by concat + one linear + slices.

    The fused weight keeps `group`'s order (fuse-gate-up relies on [gate; up]);
    the new ops go before the earliest linear so every old use stays dominated.
    """
    first = group[0]
    for op in group[1:]:
        if op.is_before_in_block(first):
            first = op
    weights = [operands_of(op)[1] for op in group]
    for w in weights:  # weight ops take no operands: hoisting them above the first linear is always legal
        w.owner.operation.move_before(first)
    b = Builder(ir.InsertionPoint(first))
    fused = b.linear(operands_of(first)[0], b.concat(weights, axis=0, loc=loc + ".weight"), loc=loc)
    start, slices = 0, []
    for op in group:  # build every slice before erasing: the insertion point is `first`
        n = from_mlir(op.results[0].type).shape[-1]
        slices.append(b.slice(fused, axis=-1, start=start, size=n, loc=op.location))
        start += n
    for op, s in zip(group, slices):
        replace_op(op, s)
