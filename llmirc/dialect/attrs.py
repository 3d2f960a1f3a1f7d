"""Conversion between Python values and the builtin attributes llm ops carry."""

from __future__ import annotations

from typing import Any

from iree.compiler import ir

from .spec import Attr, OpSpec, SpecError


def to_attr(spec: Attr, value: Any) -> ir.Attribute:
    """Python value -> MLIR attribute of the kind `spec` declares (needs a context)."""
    kind = spec.kind
    if spec.choices and value not in spec.choices:
        raise SpecError(f"attribute '{spec.name}' = {value!r} not in {list(spec.choices)}")
    if kind == "i64":
        return ir.IntegerAttr.get(ir.IntegerType.get_signless(64), int(value))
    if kind == "f32":
        return ir.FloatAttr.get_f32(float(value))
    if kind == "str":
        return ir.StringAttr.get(str(value))
    if kind == "bool":
        return ir.BoolAttr.get(bool(value))
    if kind == "f32_array":
        return ir.DenseF32ArrayAttr.get([float(v) for v in value])
    if kind == "i64_array":
        return ir.DenseI64ArrayAttr.get([int(v) for v in value])
    raise AssertionError(kind)


_READERS = {
    "i64": (ir.IntegerAttr, lambda a: a.value),
    "f32": (ir.FloatAttr, lambda a: a.value),
    "str": (ir.StringAttr, lambda a: a.value),
    "bool": (ir.BoolAttr, lambda a: a.value),
    "f32_array": (ir.DenseF32ArrayAttr, lambda a: tuple(a)),
    "i64_array": (ir.DenseI64ArrayAttr, lambda a: tuple(a)),
}


def from_attr(spec: Attr, attr: ir.Attribute) -> Any:
    """MLIR attribute -> Python value; SpecError if it is not of the declared kind."""
    cls, read = _READERS[spec.kind]
    if spec.kind == "bool" and not str(attr) in ("true", "false"):
        raise SpecError(f"attribute '{spec.name}' must be a bool, got {attr}")
    try:
        value = read(cls(attr))
    except (ValueError, TypeError):
        raise SpecError(f"attribute '{spec.name}' must be {spec.kind}, got {attr}") from None
    if spec.choices and value not in spec.choices:
        raise SpecError(f"attribute '{spec.name}' = {value!r} not in {list(spec.choices)}")
    return value


def op_attrs(spec: OpSpec, op: ir.Operation) -> dict[str, Any]:
    """All declared attributes of `op` as Python values; SpecError names a missing one."""
    out: dict[str, Any] = {}
    for a in spec.attrs:
        if a.name not in op.attributes:
            raise SpecError(f"missing attribute '{a.name}' ({a.kind})")
        out[a.name] = from_attr(a, op.attributes[a.name])
    return out


def op_operands(spec: OpSpec, op: ir.Operation) -> list:
    """Operands in spec order, with None for absent optional operands.

    A variadic op (its sole operand is variadic) gets one entry: the list of values.

    Ops with optional operands carry `operandSegmentSizes` (as MLIR's
    AttrSizedOperandSegments does), which is also what IRDL expects.
    """
    values = list(op.operands)
    if spec.is_variadic:
        if not values:
            raise SpecError(f"operand '{spec.operands[0].name}' needs at least one value")
        return [values]  # type: ignore[list-item]
    if not spec.has_optional:
        if len(values) != len(spec.operands):
            raise SpecError(f"expected {len(spec.operands)} operands, got {len(values)}")
        return values
    if "operandSegmentSizes" not in op.attributes:
        raise SpecError("missing attribute 'operandSegmentSizes' (the op has optional operands)")
    sizes = list(ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"]))
    if len(sizes) != len(spec.operands) or sum(sizes) != len(values):
        raise SpecError(f"operandSegmentSizes {sizes} does not fit {len(values)} operands")
    out: list[ir.Value | None] = []
    it = iter(values)
    for o, n in zip(spec.operands, sizes):
        if n not in ((0, 1) if o.optional else (1,)):
            raise SpecError(f"operand '{o.name}' has segment size {n}")
        out.append(next(it) if n else None)
    return out
