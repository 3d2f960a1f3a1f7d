"""A compiler pass that merges identical llm ops (same op, operands and attributes).

Why: the frontend emits one `llm.weight` per use, so a tied embedding is loaded
twice and shared subexpressions are computed twice. MLIR's CSE will not touch
unregistered ops (it cannot know they are pure); every llm op is.
"""

from __future__ import annotations

from iree.compiler import ir

from .pass_manager import register_pass
from .rewrite import functions, replace_op


def _key(op: ir.Operation, ids: dict) -> tuple:
    attrs = tuple(sorted((name, str(op.attributes[name])) for name in op.attributes))
    return (op.name, tuple(ids[v] for v in op.operands), attrs, tuple(str(r.type) for r in op.results))


@register_pass("cse", "Merge identical llm ops (weights loaded twice, repeated subexpressions).")
def cse(module: ir.Module) -> None:
    for func in functions(module).values():
        block = func.regions[0].blocks[0]
        ids: dict[ir.Value, int] = {a: i for i, a in enumerate(block.arguments)}
        seen: dict[tuple, ir.Operation] = {}
        for op in [o.operation for o in block.operations]:
            if op.name.startswith("llm."):
                key = _key(op, ids)
                if key in seen:
                    replace_op(op, list(seen[key].results))
                    continue
                seen[key] = op
            for r in op.results:
                ids[r] = len(ids)
