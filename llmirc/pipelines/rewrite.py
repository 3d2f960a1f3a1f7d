"""Small helpers shared by passes: walking llm ops, replacing them, fixing signatures."""

from __future__ import annotations

from typing import Callable, Iterator

from iree.compiler import ir

from ..dialect.attrs import op_attrs, op_operands
from ..dialect.context import functions
from ..dialect.spec import lookup


def llm_ops(func: ir.Operation, name: str | None = None) -> Iterator[ir.Operation]:
    """llm ops in the entry block of `func`, optionally only `llm.<name>` (snapshot list)."""
    ops = [op.operation for op in func.regions[0].blocks[0].operations]
    return iter([op for op in ops if op.name.startswith("llm.") and (name is None or op.name == "llm." + name)])


def attrs_of(op: ir.Operation) -> dict:
    return op_attrs(lookup(op.name), op)


def operands_of(op: ir.Operation) -> list[ir.Value | None]:
    return op_operands(lookup(op.name), op)


def replace_op(old: ir.Operation, new_results: list[ir.Value] | tuple[ir.Value, ...] | ir.Value) -> None:
    """Redirect every use of `old`'s results to `new_results`, then erase `old`."""
    if isinstance(new_results, ir.Value):
        new_results = [new_results]
    for r, n in zip(old.results, new_results):
        r.replace_all_uses_with(n)
    old.erase()


def producer(v: ir.Value, name: str) -> ir.Operation | None:
    """The op defining `v` if it is `llm.<name>`, else None (block arguments included)."""
    owner = v.owner
    if isinstance(owner, (ir.Operation, ir.OpView)) and owner.operation.name == "llm." + name:
        return owner.operation
    return None


Rewrite = Callable[[ir.Operation], "ir.Value | list[ir.Value] | None"]


def apply_patterns(module: ir.Module, patterns: dict[str, list[Rewrite]], to_fixed_point: bool = False) -> None:
    """tinygrad-style rewriting: for each llm op, try the rewrites listed for its name.

    A rewrite returns replacement values (the op is then replaced and erased) or None.
    With `to_fixed_point`, sweeps repeat until one changes nothing; dead ops are erased at the end.
    """
    from .dce import dce

    changed = True
    while changed:
        changed = False
        for func in functions(module).values():
            for op in llm_ops(func):
                for rewrite in patterns.get(op.name.removeprefix("llm."), []):
                    new = rewrite(op)
                    if new is not None:
                        replace_op(op, new)
                        changed = True
                        break
        changed = changed and to_fixed_point
    dce(module)


def sync_function_type(func: ir.Operation) -> None:
    """Recompute a func's type from its block arguments and its return operands."""
    block = func.regions[0].blocks[0]
    ret = [op.operation for op in block.operations][-1]
    ftype = ir.FunctionType.get([a.type for a in block.arguments], [v.type for v in ret.operands])
    func.attributes["function_type"] = ir.TypeAttr.get(ftype)


__all__ = ["functions", "llm_ops", "attrs_of", "operands_of", "replace_op", "producer", "apply_patterns",
           "sync_function_type"]
