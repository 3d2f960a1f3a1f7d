"""A compiler pass that evaluates weight-only computations at compile time.

Match: an llm op whose operands all come from `llm.weight` (today: the concat
that fuse-qkv and fuse-gate-up build). Rewrite: one `llm.weight` naming a new
tensor that the WeightStore derives lazily with the interpreter's own op
semantics, so the artifact holds the fused weight and not its parts.
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect import Builder
from ..dialect.interpreter import IMPLS
from ..dialect.types import from_mlir
from .pass_manager import register_pass
from .rewrite import attrs_of, functions, llm_ops, operands_of, producer, replace_op

FOLDABLE = ("concat",)


def _weight_name(v: ir.Value) -> str | None:
    w = producer(v, "weight")
    return None if w is None else attrs_of(w)["name"]


@register_pass("fold-weights", "Evaluate weight-only ops (concatenated weights) at compile time.",
               needs_weights=True)
def fold_weights(module: ir.Module, weights) -> None:
    from .dce import dce

    for func in functions(module).values():
        for op in llm_ops(func):
            kind = op.name.removeprefix("llm.")
            if kind not in FOLDABLE:
                continue
            args = operands_of(op)
            flat = args[0] if isinstance(args[0], list) else args
            names = [_weight_name(v) for v in flat]
            if None in names:
                continue
            attrs = attrs_of(op)
            name = f"{kind}({','.join(names)})"
            if name not in weights:
                impl = IMPLS[kind]
                group = isinstance(args[0], list)
                weights.derive(name, lambda impl=impl, a=attrs, n=names, g=group:
                               impl(a, [weights[x] for x in n]) if g else impl(a, *[weights[x] for x in n]))
            new = Builder(ir.InsertionPoint(op)).weight(name=name, result_types=[from_mlir(op.results[0].type)],
                                                        loc=op.location)
            replace_op(op, new)
    dce(module)
