"""Shared by fuse-qkv and fuse-gate-up: turn sibling linears into one wider linear.

Linears that read the same input become `linear(x, concat(w1, w2, ...))`
(with `concat(b1, b2, ...)` when each has a bias) followed by one `slice` per original
result. One matmul reads x once and
streams one weight, instead of launching a matmul per projection.
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect import Builder
from ..dialect.types import from_mlir
from .rewrite import llm_ops, operands_of, producer, replace_op


def sibling_groups(func: ir.Operation) -> list[list[ir.Operation]]:
    """Linears on weight ops grouped by their shared input, in program order, groups of 2+.

    Linears with a bias (a weight op too: Qwen2's q/k/v) group apart from bias-free ones, so
    a fused linear has a bias for every row or for none."""
    groups: dict[tuple[ir.Value, bool], list[ir.Operation]] = {}
    for op in llm_ops(func, "linear"):
        x, w, bias = operands_of(op)
        if producer(w, "weight") is None or (bias is not None and producer(bias, "weight") is None):
            continue
        groups.setdefault((x, bias is not None), []).append(op)
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
    biases = [operands_of(op)[2] for op in group]
    for w in weights + [x for x in biases if x is not None]:
        w.owner.operation.move_before(first)  # weight ops take no operands: hoisting them is always legal
    b = Builder(ir.InsertionPoint(first))
    fused_w = b.concat(weights, axis=0, loc=loc + ".weight")
    if biases[0] is None:
        fused = b.linear(operands_of(first)[0], fused_w, loc=loc)
    else:
        fused = b.linear(operands_of(first)[0], fused_w, b.concat(biases, axis=0, loc=loc + ".bias"), loc=loc)
    start, slices = 0, []
    for op in group:  # build every slice before erasing: the insertion point is `first`
        n = from_mlir(op.results[0].type).shape[-1]
        slices.append(b.slice(fused, axis=-1, start=start, size=n, loc=op.location))
        start += n
    for op, s in zip(group, slices):
        replace_op(op, s)
