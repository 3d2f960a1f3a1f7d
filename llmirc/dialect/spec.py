"""The records an op is declared with (ODS in miniature) and the registry of ops.

An op is data: operands, attributes with kinds and builder defaults, a
result-type rule and an optional extra verifier. The builder, the verifier, the
IRDL exporter and the interpreter all read the same records, so adding an op is
adding one `OpSpec` in ops.py plus its numpy semantics in the interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .types import LlmType, TensorT

REQUIRED = object()  # an attribute the builder cannot default

# Operand constraint names: what an operand must be.
OPERAND_KINDS = ("tensor", "float", "int", "kv_cache", "paged_kv_cache")
# Attribute kinds and the builtin attribute each is stored as.
ATTR_KINDS = ("i64", "f32", "str", "bool", "f32_array", "i64_array")


class SpecError(ValueError):
    """An op breaks its spec; the verifier prefixes the op name and location."""


@dataclass(frozen=True)
class Operand:
    name: str
    kind: str = "tensor"
    rank: int | None = None  # required rank; None accepts any rank
    optional: bool = False
    variadic: bool = False  # one or more values; only allowed as an op's sole operand


@dataclass(frozen=True)
class Attr:
    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple = ()


# infer(operand types, attrs) -> result types; raises SpecError when operands do not fit.
InferFn = Callable[[Sequence[LlmType | None], dict[str, Any]], tuple[LlmType, ...]]


@dataclass(frozen=True)
class OpSpec:
    name: str  # without the "llm." prefix
    summary: str
    operands: tuple[Operand, ...]
    attrs: tuple[Attr, ...] = ()
    results: tuple[str, ...] = ("result",)
    infer: InferFn | None = None  # None: result types are given explicitly at build time
    verify: Callable[[Sequence[LlmType | None], dict[str, Any]], None] | None = None

    @property
    def full_name(self) -> str:
        return "llm." + self.name

    @property
    def has_optional(self) -> bool:
        return any(o.optional for o in self.operands)

    @property
    def is_variadic(self) -> bool:
        return bool(self.operands) and self.operands[0].variadic


REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    assert spec.name not in REGISTRY, spec.name
    for o in spec.operands:
        assert o.kind in OPERAND_KINDS, (spec.name, o)
        assert not o.variadic or len(spec.operands) == 1, (spec.name, "variadic must be the sole operand")
    for a in spec.attrs:
        assert a.kind in ATTR_KINDS, (spec.name, a)
    REGISTRY[spec.name] = spec
    return spec


def lookup(op_name: str) -> OpSpec:
    """Spec for 'llm.X' or 'X'; raises KeyError for ops not in the dialect."""
    return REGISTRY[op_name.removeprefix("llm.")]


# ---- helpers for result-type rules -------------------------------------------------

def dims_match(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise SpecError(message)


def tensor(t: LlmType | None, what: str) -> TensorT:
    expect(isinstance(t, TensorT), f"{what} must be a tensor, got {t}")
    return t  # type: ignore[return-value]

