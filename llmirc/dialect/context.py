"""MLIR context set-up, parsing and printing of llm IR."""

from __future__ import annotations

from iree.compiler import ir


def make_context() -> ir.Context:
    """A context in which `llm.*` ops and `!llm.*` types parse (unregistered dialect)."""
    ctx = ir.Context()
    ctx.allow_unregistered_dialects = True
    return ctx


def parse_module(text: str, ctx: ir.Context | None = None) -> ir.Module:
    ctx = ctx or make_context()
    with ctx:
        return ir.Module.parse(text)


def print_module(module: ir.Module, debug_info: bool = False) -> str:
    """Canonical text of a module: func/builtin ops in custom form, llm ops generic.

    print -> parse -> print is the identity on this text (tested for whole models).
    """
    return module.operation.get_asm(enable_debug_info=debug_info)


def functions(module: ir.Module) -> dict[str, ir.Operation]:
    """The func.func ops of a module by symbol name."""
    out = {}
    for op in module.body.operations:
        op = op.operation
        if op.name == "func.func":
            out[ir.StringAttr(op.attributes["sym_name"]).value] = op
    return out


def location_name(loc: ir.Location) -> str:
    """'layers.0.attn.q_proj' for a NameLoc, else MLIR's own text of the location."""
    text = str(loc)
    if text.startswith('loc("') and text.endswith('")'):
        return text[5:-2]
    return text.removeprefix("loc(").removesuffix(")")


def weight_names(module: ir.Module) -> list[str]:
    """Names of every tensor the module's `llm.weight` ops reference, in first-use order."""
    names: dict[str, None] = {}

    def visit(op: ir.Operation) -> ir.WalkResult:
        op = op.operation if hasattr(op, "operation") else op
        if op.name == "llm.weight":
            names[ir.StringAttr(op.attributes["name"]).value] = None
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return list(names)


def weight_types(module: ir.Module) -> dict:
    """Name -> TensorT of every `llm.weight` of the module (the type the IR reads it as)."""
    from .types import from_mlir

    types: dict = {}

    def visit(op: ir.Operation) -> ir.WalkResult:
        op = op.operation if hasattr(op, "operation") else op
        if op.name == "llm.weight":
            types.setdefault(ir.StringAttr(op.attributes["name"]).value, from_mlir(op.results[0].type))
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return types
