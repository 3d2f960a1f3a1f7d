"""Checks llm IR against the op specs and reports `op at location: what is wrong`."""

from __future__ import annotations

from iree.compiler import ir

from . import ops as _ops  # noqa: F401  (registers the op specs)
from .attrs import op_attrs, op_operands
from ..errors import LlmircError
from .context import location_name
from .spec import SpecError, lookup
from .types import KVCacheT, PagedKVCacheT, TensorT, from_mlir


class VerificationError(LlmircError, ValueError):
    """The IR breaks an op's spec. `errors` holds every message found."""

    def __init__(self, errors: list[str]):
        super().__init__(errors[0] if len(errors) == 1 else f"{len(errors)} errors:\n" + "\n".join(errors))
        self.errors = errors


def _compatible(actual, expected) -> bool:
    if isinstance(actual, TensorT) and isinstance(expected, TensorT):
        return (actual.dtype == expected.dtype and actual.rank == expected.rank and all(
            a is None or e is None or a == e for a, e in zip(actual.shape, expected.shape)))
    return actual == expected


def verify_op(op: ir.Operation) -> None:
    """Raise SpecError (without op name) if `op` breaks its spec."""
    try:
        spec = lookup(op.name)
    except KeyError:
        raise SpecError("not an op of the llm dialect") from None
    attrs = op_attrs(spec, op)
    operands = op_operands(spec, op)
    types = []
    for o, v in zip(spec.operands, operands):
        if o.variadic:
            types.append([_value_type(x, f"{o.name}[{i}]") for i, x in enumerate(v)])
            continue
        t = None if v is None else _value_type(v, o.name)
        types.append(t)
        if o.rank is not None and isinstance(t, TensorT) and t.rank != o.rank:
            raise SpecError(f"operand '{o.name}' must have rank {o.rank}, got {t}")
        if o.kind == "kv_cache" and not isinstance(t, KVCacheT) or \
                o.kind == "paged_kv_cache" and not isinstance(t, PagedKVCacheT):
            raise SpecError(f"operand '{o.name}' must be !llm.{o.kind}, got {t}")
    if len(op.results) != len(spec.results):
        raise SpecError(f"expected {len(spec.results)} results, got {len(op.results)}")
    if spec.infer is not None:
        expected = spec.infer(types, attrs)
        for i, (r, e) in enumerate(zip(op.results, expected)):
            actual = _value_type(r, f"result {i}")
            if not _compatible(actual, e):
                raise SpecError(f"result {i} has type {actual}, expected {e}")
    if spec.verify is not None:
        spec.verify(types, attrs)


def _value_type(v: ir.Value, what: str):
    try:
        return from_mlir(v.type)
    except ValueError:
        raise SpecError(f"{what} has unsupported type {v.type}") from None


def verify_module(module: ir.Module | ir.Operation, context: str = "") -> None:
    """Verify every llm op (and MLIR's own structural checks). Collects all errors.

    `context` (e.g. "after pass fuse-qkv") is appended to each message so a
    broken pass is named in the error.
    """
    root = module.operation if isinstance(module, ir.Module) else module
    errors: list[str] = []
    suffix = f" ({context})" if context else ""

    def visit(op: ir.Operation) -> ir.WalkResult:
        op = op.operation if hasattr(op, "operation") else op
        if op.name.startswith("llm."):
            try:
                verify_op(op)
            except SpecError as e:
                errors.append(f"'{op.name}' at {location_name(op.location)}: {e}{suffix}")
        return ir.WalkResult.ADVANCE

    root.walk(visit)
    if not errors:
        try:
            root.verify()
        except ir.MLIRError as e:
            errors.append(f"MLIR verifier: {e}{suffix}")
    if errors:
        raise VerificationError(errors)
