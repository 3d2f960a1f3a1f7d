"""IRDL description of the llm dialect, generated from the op specs, and a checker.

`export_irdl()` turns REGISTRY (plus the two cache types) into an `irdl.dialect @llm`
that upstream MLIR loads at run time: `iree-opt --irdl-file=llm.irdl.mlir model.mlir`
then verifies llm IR without any C++ for the dialect. It is an independent second
check next to our Python verifier; IRDL can express less than the specs do
(measured on iree-opt 3.13), so it checks the structure and the kinds:

- operand and result counts, optional operands (through `operandSegmentSizes`);
- tensor operands/results are builtin ranked tensors (`irdl.base "!builtin.tensor"`;
  `tensor<*xf32>` is rejected). Element type, rank and shapes are not expressible
  for builtin tensors (`irdl.parametric` only takes IRDL-defined types), so those
  stay with the Python verifier;
- cache operands are `!llm.kv_cache` / `!llm.paged_kv_cache` (`irdl.base @llm::@X`),
  and a result named like a cache operand (`append_kv` -> `cache`) is the very same
  type: one constraint variable used twice binds one value;
- every declared attribute is present and of its kind: i64 -> `#builtin.integer`,
  f32 -> `#builtin.float`, str -> `#builtin.string`, bool -> `true | false`,
  arrays -> `#builtin.dense_array` (i64 vs f32 arrays, and i64 vs i32 integers, are
  not told apart by `irdl.base`). Attributes with `choices` are enumerated exactly
  (`irdl.any_of(irdl.is 4 : i64, irdl.is 8 : i64)`);
- cache type parameters: four `#builtin.integer`s and a float dtype (f16/bf16/f32/f64);
- ops not in the registry are rejected (an IRDL dialect allows no unknown ops).

IRDL does not reject attributes an op does not declare, and it infers the segment of
a single optional operand from the operand count (ignoring `operandSegmentSizes`).
`#builtin.integer` also admits i32 and bool (`true` is an i1 integer), `#builtin.float`
also f64. `irdl.c_pred` is not evaluated at run time (iree-opt 3.13 crashes on it), and
`irdl.parametric` rejects builtin names, so neither is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import ops as _ops  # noqa: F401  (registers the op specs)
from .spec import REGISTRY, Attr, OpSpec
from .types import FLOAT_DTYPES

# (type name, parameter names): the last parameter is the element dtype.
CACHE_TYPES = (
    ("kv_cache", ("layers", "kv_heads", "head_dim", "max_seq_len", "dtype")),
    ("paged_kv_cache", ("layers", "kv_heads", "head_dim", "block_size", "dtype")),
)

_OPERAND_BASE = {
    "tensor": '"!builtin.tensor"',
    "float": '"!builtin.tensor"',
    "int": '"!builtin.tensor"',
    "kv_cache": "@llm::@kv_cache",
    "paged_kv_cache": "@llm::@paged_kv_cache",
}

_ATTR_BASE = {
    "i64": '"#builtin.integer"',
    "f32": '"#builtin.float"',
    "str": '"#builtin.string"',
    "f32_array": '"#builtin.dense_array"',
    "i64_array": '"#builtin.dense_array"',
}


def _literal(kind: str, value) -> str:
    """MLIR text of one attribute value of `kind` (for `irdl.is`)."""
    if kind == "i64":
        return f"{int(value)} : i64"
    if kind == "f32":
        return f"{float(value)!r} : f32"
    if kind == "str":
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if kind == "bool":
        return "true" if value else "false"
    raise ValueError(f"no exact IRDL literal for attribute kind {kind}")


class _Body:
    """Lines of one irdl.type/irdl.operation body with fresh SSA constraint names."""

    def __init__(self):
        self.lines: list[str] = []
        self.n = 0

    def emit(self, rhs: str, hint: str) -> str:
        self.n += 1
        name = f"%{hint}{self.n}"
        self.lines.append(f"{name} = {rhs}")
        return name

    def one_of(self, literals: list[str], hint: str) -> str:
        parts = [self.emit(f"irdl.is {lit}", hint) for lit in literals]
        return parts[0] if len(parts) == 1 else self.emit(f"irdl.any_of({', '.join(parts)})", hint)


def _attr_constraint(body: _Body, a: Attr) -> str:
    if a.choices:
        return body.one_of([_literal(a.kind, c) for c in a.choices], a.name + "_")
    if a.kind == "bool":
        return body.one_of(["true", "false"], a.name + "_")
    return body.emit(f"irdl.base {_ATTR_BASE[a.kind]}", a.name + "_")


def _operation(spec: OpSpec) -> list[str]:
    body = _Body()
    operands = []
    by_name: dict[str, tuple[str, str]] = {}  # operand name -> (constraint, kind)
    for o in spec.operands:
        c = body.emit(f"irdl.base {_OPERAND_BASE[o.kind]}", o.name + "_")
        by_name[o.name] = (c, o.kind)
        operands.append(f"{o.name}: {'optional ' if o.optional else 'variadic ' if o.variadic else ''}{c}")
    attrs = [f'"{a.name}" = {_attr_constraint(body, a)}' for a in spec.attrs]
    results = []
    for r in spec.results:
        same = by_name.get(r)
        if same is not None and same[1] in ("kv_cache", "paged_kv_cache"):
            c = same[0]  # an updated cache has exactly its operand's type
        else:
            c = body.emit('irdl.base "!builtin.tensor"', r + "_")
        # IRDL wants operand and result names distinct: append_kv's result `cache` -> `cache_out`.
        results.append(f"{r + '_out' if r in by_name else r}: {c}")
    body.lines.append(f"irdl.operands({', '.join(operands)})")
    if attrs:
        body.lines.append(f"irdl.attributes {{ {', '.join(attrs)} }}")
    body.lines.append(f"irdl.results({', '.join(results)})")
    return [f"irdl.operation @{spec.name} {{"] + ["  " + ln for ln in body.lines] + ["}"]


def _cache_type(name: str, params: tuple[str, ...]) -> list[str]:
    body = _Body()
    cs = [body.emit('irdl.base "#builtin.integer"', p + "_") for p in params[:-1]]
    cs.append(body.one_of(list(FLOAT_DTYPES), params[-1] + "_"))
    body.lines.append(f"irdl.parameters({', '.join(f'{p}: {c}' for p, c in zip(params, cs))})")
    return [f"irdl.type @{name} {{"] + ["  " + ln for ln in body.lines] + ["}"]


def export_irdl() -> str:
    """The whole dialect as IRDL text (types first, then every registered op)."""
    lines: list[str] = []
    for name, params in CACHE_TYPES:
        lines += _cache_type(name, params)
    for spec in REGISTRY.values():
        lines += _operation(spec)
    return "irdl.dialect @llm {\n" + "".join(f"  {ln}\n" for ln in lines) + "}\n"


def find_iree_opt() -> str:
    """Path of iree-opt: next to the Python executable (venv), then the iree package, then PATH."""
    candidate = Path(sys.executable).parent / "iree-opt"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    try:
        from iree.compiler.tools.binaries import find_tool

        return find_tool("iree-opt")
    except Exception:  # noqa: BLE001  (fall back to PATH below)
        pass
    found = shutil.which("iree-opt")
    if found:
        return found
    raise FileNotFoundError("iree-opt not found (install iree-base-compiler)")


def check_with_irdl(module_text: str, irdl_text: str | None = None,
                    timeout: float = 120.0) -> tuple[bool, str]:
    """Verify `module_text` with iree-opt against the IRDL description.

    Returns (ok, diagnostics): ok is iree-opt's success, diagnostics its stderr.
    """
    irdl_text = export_irdl() if irdl_text is None else irdl_text
    with tempfile.TemporaryDirectory(prefix="llmirc-irdl-") as tmp:
        irdl_path = Path(tmp) / "llm.irdl.mlir"
        irdl_path.write_text(irdl_text)
        module_path = Path(tmp) / "module.mlir"
        module_path.write_text(module_text)
        proc = subprocess.run(
            [find_iree_opt(), f"--irdl-file={irdl_path}", str(module_path), "-o", os.devnull],
            capture_output=True, text=True, timeout=timeout)
    return proc.returncode == 0, proc.stderr


__all__ = ["CACHE_TYPES", "check_with_irdl", "export_irdl", "find_iree_opt"]
