"""A compiler pass that erases llm ops whose results are never used.

MLIR's own DCE treats ops of an unregistered dialect as side-effecting and
keeps them; every llm op is pure (caches are SSA values), so we can drop them.
"""

from __future__ import annotations

from iree.compiler import ir

from .pass_manager import register_pass
from .rewrite import functions


@register_pass("dce", "Erase llm ops whose results are unused.")
def dce(module: ir.Module) -> None:
    for func in functions(module).values():
        for op in reversed([o.operation for o in func.regions[0].blocks[0].operations]):
            if op.name.startswith("llm.") and all(not list(r.uses) for r in op.results):
                op.erase()
