"""A compiler pass that fuses a residual add with the rms_norm that reads it.

Match: rms_norm(add(a, b), w) with a and b of the same shape.
Rewrite: add_rms_norm(a, b, w) -> (sum, normed); other users of the add read `sum`.
Why: the sum is produced and normalized in one pass over the activations,
instead of writing it, reading it back for the norm's reduction, and again
for the scaling.
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect import Builder
from .pass_manager import register_pass
from .rewrite import attrs_of, functions, llm_ops, operands_of, producer, replace_op


@register_pass("fuse-residual-norm", "Residual add + rms_norm as one op producing both the sum and the norm.")
def fuse_residual_norm(module: ir.Module) -> None:
    for func in functions(module).values():
        for norm in llm_ops(func, "rms_norm"):
            x, w = operands_of(norm)
            add = producer(x, "add")
            if add is None or add.operands[0].type != add.operands[1].type:
                continue
            b = Builder(ir.InsertionPoint(norm))
            total, normed = b.add_rms_norm(add.operands[0], add.operands[1], w, eps=attrs_of(norm)["eps"],
                                           loc=norm.location)
            replace_op(add, total)
            replace_op(norm, normed)
