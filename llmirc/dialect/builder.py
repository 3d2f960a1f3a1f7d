"""Building llm ops from their specs: `b.linear(x, w, loc="layers.0.q_proj")`.

Methods are not written per op: `Builder.__getattr__` turns any registered op
name into a call that checks the operands against the spec, fills attribute
defaults, infers result types and creates the op at the insertion point.
"""

from __future__ import annotations

from typing import Any

from iree.compiler import ir

from . import ops as _ops  # noqa: F401  (registers the op specs)
from .attrs import to_attr
from .spec import REQUIRED, OpSpec, SpecError, lookup
from .types import LlmType, TensorT, from_mlir, to_mlir


class Builder:
    """Creates llm ops at an insertion point. Needs an active context."""

    def __init__(self, ip: ir.InsertionPoint | None = None):
        self.ip = ip

    def create(self, spec: OpSpec, operands: list, attrs: dict[str, Any],
               result_types: list[LlmType] | None = None,
               loc: str | ir.Location | None = None) -> ir.Operation:
        if spec.is_variadic:  # b.concat(a, b, c) or b.concat([a, b, c])
            values = list(operands[0]) if len(operands) == 1 and isinstance(operands[0], (list, tuple)) \
                else list(operands)
            if not values:
                raise SpecError(f"{spec.full_name}: needs at least one operand")
            return self._make(spec, values, [[from_mlir(v.type) for v in values]], self._attr_values(spec, attrs),
                              result_types, loc, segments=None)
        if len(operands) > len(spec.operands):
            raise SpecError(f"{spec.full_name}: takes {len(spec.operands)} operands, got {len(operands)}")
        operands = list(operands) + [None] * (len(spec.operands) - len(operands))
        for o, v in zip(spec.operands, operands):
            if v is None and not o.optional:
                raise SpecError(f"{spec.full_name}: operand '{o.name}' is required")
        values = self._attr_values(spec, attrs)
        if result_types is None:
            if spec.infer is None:
                raise SpecError(f"{spec.full_name}: result types must be given")
            in_types = [None if v is None else from_mlir(v.type) for v in operands]
            for o, t in zip(spec.operands, in_types):  # as the verifier does, before infer indexes dims
                if o.rank is not None and isinstance(t, TensorT) and t.rank != o.rank:
                    raise SpecError(f"{spec.full_name}{f' at {loc}' if loc else ''}: "
                                    f"operand '{o.name}' must have rank {o.rank}, got {t}")
        else:
            in_types = []
        segments = [0 if v is None else 1 for v in operands] if spec.has_optional else None
        return self._make(spec, [v for v in operands if v is not None], in_types, values, result_types, loc,
                          segments)

    def _make(self, spec: OpSpec, operands: list[ir.Value], in_types: list, values: dict[str, Any],
              result_types: list[LlmType] | None, loc: str | ir.Location | None,
              segments: list[int] | None) -> ir.Operation:
        where = f"{spec.full_name}{f' at {loc}' if loc else ''}"
        if result_types is None:
            try:
                result_types = list(spec.infer(in_types, values))
            except SpecError as e:
                raise SpecError(f"{where}: {e}") from None
        try:
            mlir_attrs = {a.name: to_attr(a, values[a.name]) for a in spec.attrs}
        except SpecError as e:  # e.g. a value outside `choices`: name the op like the other errors
            raise SpecError(f"{where}: {e}") from None
        if segments is not None:
            mlir_attrs["operandSegmentSizes"] = ir.DenseI32ArrayAttr.get(segments)
        return ir.Operation.create(
            spec.full_name,
            results=[to_mlir(t) for t in result_types],
            operands=operands,
            attributes=mlir_attrs,
            loc=ir.Location.name(loc) if isinstance(loc, str) else loc,
            ip=self.ip,
        )

    @staticmethod
    def _attr_values(spec: OpSpec, attrs: dict[str, Any]) -> dict[str, Any]:
        """Declared attributes with builder defaults filled in; errors on unknown or missing ones."""
        attrs = dict(attrs)
        values: dict[str, Any] = {}
        for a in spec.attrs:
            v = attrs.pop(a.name, a.default)
            if v is REQUIRED:
                raise SpecError(f"{spec.full_name}: attribute '{a.name}' is required")
            values[a.name] = v
        if attrs:
            raise SpecError(f"{spec.full_name}: unknown attributes {sorted(attrs)}")
        return values

    def __getattr__(self, name: str):
        try:
            spec = lookup(name)
        except KeyError:
            raise AttributeError(f"llm dialect has no op '{name}'") from None

        def build(*operands: ir.Value | None, loc: str | ir.Location | None = None,
                  result_types: list[LlmType] | None = None, **attrs: Any):
            extra = {o.name: attrs.pop(o.name) for o in spec.operands if o.name in attrs}
            ordered = list(operands)
            for i, o in enumerate(spec.operands):
                if o.name in extra:
                    while len(ordered) <= i:
                        ordered.append(None)
                    ordered[i] = extra[o.name]
            op = self.create(spec, ordered, attrs, result_types, loc)
            return op.result if len(op.results) == 1 else tuple(op.results)

        return build
