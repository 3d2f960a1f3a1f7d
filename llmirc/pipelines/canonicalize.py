"""A compiler pass of local simplifications, written as (op name, rewrite) pairs.

Each rewrite looks at one op and returns replacement values or None; the pass
applies them until nothing changes. Adding a simplification is adding a pair.
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect import Builder
from ..dialect.types import from_mlir
from .pass_manager import register_pass
from .rewrite import Rewrite, apply_patterns, attrs_of, producer

def _identity_reshape(op: ir.Operation):
    """reshape to the type it already has -> its input."""
    src = op.operands[0]
    # Non-zero shape entries give static dims, so equal types mean every dim is kept.
    return [src] if from_mlir(src.type) == from_mlir(op.results[0].type) else None


def _reshape_of_reshape(op: ir.Operation):
    """reshape(reshape(x)) -> reshape(x) when the outer shape keeps no dim of the inner by copy."""
    inner = producer(op.operands[0], "reshape")
    if inner is None:
        return None
    outer_shape, inner_shape = attrs_of(op)["shape"], attrs_of(inner)["shape"]
    # A 0 in the outer shape copies the inner result's dim; rewrite it to what the inner op copied.
    merged = []
    for i, d in enumerate(outer_shape):
        if d != 0:
            merged.append(d)
        elif i < len(inner_shape) and inner_shape[i] == 0:
            merged.append(0)
        elif i < len(inner_shape):
            merged.append(inner_shape[i])
        else:
            return None
    return [Builder(ir.InsertionPoint(op)).reshape(inner.operands[0], shape=merged, loc=op.location)]


PATTERNS: dict[str, list[Rewrite]] = {
    "reshape": [_identity_reshape, _reshape_of_reshape],
}


@register_pass("canonicalize", "Local simplifications (identity and chained reshapes), to a fixed point.")
def canonicalize(module: ir.Module) -> None:
    apply_patterns(module, PATTERNS, to_fixed_point=True)
