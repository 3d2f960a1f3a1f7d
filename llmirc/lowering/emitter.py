"""Text emission of IREE input MLIR: SSA names, tensor values with symbolic dims, linalg helpers.

The lowering writes MLIR as text (IREE's parser is the verifier) instead of building ops
through the Python bindings: the output is then exactly what `--emit iree-input` prints,
and each op lowering in ops.py reads like the IR it produces.

A tensor value (`TV`) carries its SSA name, its element type and its dims, each either a
static int or the SSA name of an `index` value. Dims are propagated symbolically from
the function arguments (`%b = tensor.dim %tokens, %c0`), so every `tensor.empty` of a
[batch, seq, ...] value uses the same `%b`/`%t` values and IREE sees equal shapes.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Callable, Sequence

Dim = int | str  # static size, or the SSA name of an index value

FLOATS = ("f16", "bf16", "f32", "f64")


@dataclass(frozen=True)
class TV:
    """A tensor SSA value with its dims (ints or index SSA names) and element type."""

    name: str
    dims: tuple[Dim, ...]
    dtype: str

    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def type(self) -> str:
        return tensor_type(self.dims, self.dtype)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOATS


def tensor_type(dims: Sequence[Dim], dtype: str) -> str:
    return "tensor<" + "".join(f"{d if isinstance(d, int) else '?'}x" for d in dims) + dtype + ">"


def affine_map(n: int, exprs: Sequence[str]) -> str:
    """affine_map<(d0, ..., d{n-1}) -> (exprs)>; exprs are strings over d0..d{n-1} (or "0")."""
    return f"affine_map<({', '.join(f'd{i}' for i in range(n))}) -> ({', '.join(exprs)})>"


def float_literal(value: float, dtype: str = "f32") -> str:
    """A literal that parses to exactly `value` rounded to `dtype` (hex bits for inf/nan)."""
    if dtype == "f32":
        value = struct.unpack("<f", struct.pack("<f", value))[0]
        if not math.isfinite(value):
            return f"0x{struct.unpack('<I', struct.pack('<f', value))[0]:08X}"
    elif not math.isfinite(value):
        if dtype == "f64":
            return f"0x{struct.unpack('<Q', struct.pack('<d', value))[0]:016X}"
        raise ValueError(f"non-finite {dtype} literal")
    # 17 significant digits after the point round-trip a double exactly; an f32 value
    # is a double, so MLIR's parse (decimal -> double -> f32) is exact.
    return f"{value:.17e}"


def dense_f32(values: Sequence[float]) -> str:
    return "dense<[" + ", ".join(float_literal(float(v)) for v in values) + "]>"


_BARE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_$.]*$")


def symbol_ref(name: str) -> str:
    """@name, quoted when the name is not a bare MLIR identifier."""
    return "@" + (name if _BARE_ID.match(name) else string_literal(name))


def string_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\5C").replace('"', '\\22').replace("\n", "\\0A") + '"'


def zero_literal(dtype: str) -> str:
    return "0.0" if dtype in FLOATS else "0"


class Emitter:
    """Accumulates the lines of one function body; hands out fresh SSA names."""

    def __init__(self, counter: list[int] | None = None) -> None:
        self.lines: list[str] = []
        self._counter = counter if counter is not None else [0]
        self._consts: dict[tuple[str, str], str] = {}
        self.indent = "  "
        self.tile: int | None = None  # systolic tile: linears' matmuls padded to it (systolic.py)
        self.function = ""  # the entry point being emitted ("prefill", "decode_b1", ...)
        self.row_chunk: int | None = None  # row-chunked prefill/extend: rows per static chunk (ops.in_row_chunks)

    # ---- names and raw ops ------------------------------------------------------------

    def fresh(self, hint: str = "v") -> str:
        self._counter[0] += 1
        return f"%{hint}{self._counter[0]}"

    def emit(self, line: str) -> None:
        self.lines.append(self.indent + line)

    def v(self, text: str, hint: str = "v") -> str:
        """Emit `%new = text` and return %new."""
        name = self.fresh(hint)
        self.emit(f"{name} = {text}")
        return name

    def const(self, value: int | float, dtype: str) -> str:
        """A scalar arith.constant, emitted once per function (at first use)."""
        if dtype in FLOATS:
            lit = float_literal(float(value), dtype)
        else:
            lit = str(int(value)) if dtype != "i1" else ("true" if value else "false")
        key = (lit, dtype)
        if key not in self._consts:
            name = self.fresh("c" if dtype == "index" else "cst")
            self.emit(f"{name} = arith.constant {lit} : {dtype}")
            self._consts[key] = name
        return self._consts[key]

    def idx(self, value: int) -> str:
        return self.const(value, "index")

    def opaque(self, value: int, dtype: str = "index") -> str:
        """A constant hidden behind util.optimization_barrier (once per function).

        Dispatches that differ only in such a value (e.g. the layer index of a KV-cache
        gather) get it as a runtime operand, so IREE compiles one executable for all layers.
        """
        key = ("opaque:" + str(value), dtype)
        if key not in self._consts:
            c = self.const(value, dtype)
            self._consts[key] = self.v(f"util.optimization_barrier {c} : {dtype}", "opq")
        return self._consts[key]

    # ---- dims -------------------------------------------------------------------------

    def dim_value(self, d: Dim) -> str:
        """An index SSA value for a dim (materialises static dims as constants)."""
        return self.idx(d) if isinstance(d, int) else d

    def mul_dims(self, dims: Sequence[Dim]) -> Dim:
        """Product of dims: an int when all are static, else an index SSA value."""
        static = math.prod(d for d in dims if isinstance(d, int))
        dyn = [d for d in dims if not isinstance(d, int)]
        if not dyn:
            return static
        acc = dyn[0]
        for d in dyn[1:]:
            acc = self.v(f"arith.muli {acc}, {d} : index", "d")
        if static != 1:
            acc = self.v(f"arith.muli {acc}, {self.idx(static)} : index", "d")
        return acc

    def add_dims(self, dims: Sequence[Dim]) -> Dim:
        """Sum of dims: an int when all are static, else an index SSA value."""
        static = sum(d for d in dims if isinstance(d, int))
        acc: Dim = static
        for d in dims:
            if not isinstance(d, int):
                acc = d if acc == 0 else self.v(f"arith.addi {self.dim_value(acc)}, {d} : index", "d")
        return acc

    def dims_of(self, name: str, type_: str, shape: Sequence[int | None]) -> tuple[Dim, ...]:
        """Dims of an existing value: tensor.dim for each dynamic one."""
        out: list[Dim] = []
        for i, s in enumerate(shape):
            if s is None:
                out.append(self.v(f"tensor.dim {name}, {self.idx(i)} : {type_}", "d"))
            else:
                out.append(s)
        return tuple(out)

    # ---- tensors ----------------------------------------------------------------------

    def empty(self, dims: Sequence[Dim], dtype: str) -> TV:
        dyn = ", ".join(d for d in dims if not isinstance(d, int))
        t = tensor_type(dims, dtype)
        return TV(self.v(f"tensor.empty({dyn}) : {t}", "e"), tuple(dims), dtype)

    def filled(self, dims: Sequence[Dim], dtype: str, value: int | float) -> TV:
        e = self.empty(dims, dtype)
        c = self.const(value, dtype)
        return TV(self.v(f"linalg.fill ins({c} : {dtype}) outs({e.name} : {e.type}) -> {e.type}", "f"),
                  e.dims, dtype)

    def collapse(self, x: TV, groups: Sequence[Sequence[int]]) -> TV:
        """tensor.collapse_shape with reassociation `groups` (no-op when every group is one dim)."""
        if all(len(g) == 1 for g in groups) and len(groups) == x.rank:
            return x
        dims = tuple(self.mul_dims([x.dims[i] for i in g]) for g in groups)
        t = tensor_type(dims, x.dtype)
        name = self.v(f"tensor.collapse_shape {x.name} {_reassoc(groups)} : {x.type} into {t}", "r")
        return TV(name, dims, x.dtype)

    def expand(self, x: TV, groups: Sequence[Sequence[int]], dims: Sequence[Dim]) -> TV:
        """tensor.expand_shape of `x` into `dims` (each source dim i becomes dims[groups[i]])."""
        if all(len(g) == 1 for g in groups) and len(groups) == len(dims):
            return TV(x.name, tuple(dims), x.dtype)
        t = tensor_type(dims, x.dtype)
        shape = ", ".join(str(d) for d in dims)
        name = self.v(f"tensor.expand_shape {x.name} {_reassoc(groups)} output_shape [{shape}] : "
                      f"{x.type} into {t}", "r")
        return TV(name, tuple(dims), x.dtype)

    def transpose(self, x: TV, perm: Sequence[int]) -> TV:
        dims = tuple(x.dims[p] for p in perm)
        e = self.empty(dims, x.dtype)
        name = self.v(f"linalg.transpose ins({x.name} : {x.type}) outs({e.name} : {e.type}) "
                      f"permutation = [{', '.join(map(str, perm))}]", "t")
        return TV(name, dims, x.dtype)

    def generic(self, loops: int, ins: Sequence[tuple[TV | tuple[str, str], Sequence[str]]],
                outs: Sequence[tuple[TV, Sequence[str]]], body: Callable[[list[str]], Sequence[str]],
                reductions: Sequence[int] = (), attrs: str = "") -> list[TV]:
        """linalg.generic over `loops` loops.

        ins/outs: (value, index exprs over d0..); an input may be a scalar `(ssa, type)` with
        exprs (). `body(block_args)` emits the region's ops (through this emitter) and
        returns the values to yield, one per output. `attrs`: more `name = value` entries of
        the op's attribute dictionary (e.g. an IREE compilation_info).
        """
        maps = [affine_map(loops, exprs) for _, exprs in list(ins) + list(outs)]
        iters = ", ".join('"reduction"' if i in reductions else '"parallel"' for i in range(loops))
        in_vals = [(v.name, v.type, v.dtype) if isinstance(v, TV) else (v[0], v[1], v[1]) for v, _ in ins]
        out_vals = [(v.name, v.type, v.dtype) for v, _ in outs]
        ins_txt = (f" ins({', '.join(n for n, _, _ in in_vals)} : {', '.join(t for _, t, _ in in_vals)})"
                   if in_vals else "")
        outs_txt = f" outs({', '.join(n for n, _, _ in out_vals)} : {', '.join(t for _, t, _ in out_vals)})"
        res_types = ", ".join(t for _, t, _ in out_vals)
        result = self.fresh("g")
        lhs = result if len(outs) == 1 else f"{result}:{len(outs)}"
        extra = f", {attrs}" if attrs else ""
        self.emit(f"{lhs} = linalg.generic {{indexing_maps = [{', '.join(maps)}], iterator_types = [{iters}]{extra}}}"
                  f"{ins_txt}{outs_txt} {{")
        args = [self.fresh("a") for _ in in_vals + out_vals]
        sig = ", ".join(f"{a}: {dt}" for a, (_, _, dt) in zip(args, in_vals + out_vals))
        self.lines.append(f"{self.indent}^bb0({sig}):")
        outer, self.indent = self.indent, self.indent + "  "
        saved = self._consts
        self._consts = dict(saved)  # constants made in the body stay in the body
        try:
            ys = list(body(args))
        finally:
            self._consts = saved
        self.emit(f"linalg.yield {', '.join(ys)} : {', '.join(dt for _, _, dt in out_vals)}")
        self.indent = outer
        self.emit(f"}} -> {res_types}" if len(outs) == 1 else f"}} -> ({res_types})")
        if len(outs) == 1:
            return [TV(result, outs[0][0].dims, outs[0][0].dtype)]
        return [TV(f"{result}#{i}", v.dims, v.dtype) for i, (v, _) in enumerate(outs)]

    def index(self, i: int) -> str:
        """linalg.index i (inside a generic body)."""
        return self.v(f"linalg.index {i} : index", "i")


def executable_head(sym: str, workgroups: int, args: str) -> list[str]:
    """The opening lines of a one-function stream.executable: `workgroups` workgroups along x,
    then `func.func @sym(args) {` (the caller closes the function, module and executable)."""
    return [f"stream.executable private {sym} {{",
            f"  stream.executable.export public {sym} workgroups() -> (index, index, index) {{",
            f"    %g = arith.constant {workgroups} : index",
            "    %one = arith.constant 1 : index",
            "    stream.return %g, %one, %one : index, index, index",
            "  }",
            "  builtin.module {",
            f"    func.func {sym}({args}) {{"]


# ---- a dispatch's rows: padded to its kernel's row block, cut back after --------------------

def rows_padded(e: Emitter, m, block: int) -> tuple[str, str]:
    """(m, m rounded up to a multiple of `block`) as index SSA values (the same one when m is a
    static multiple)."""
    mv = e.dim_value(m)
    if isinstance(m, int) and m % block == 0:
        return mv, mv
    c = e.idx(block)
    return mv, e.v(f"arith.muli {e.v(f'arith.ceildivui {mv}, {c} : index')}, {c} : index", "d")


def dynamic_rows(e: Emitter, v: TV, mv: str, mp: str) -> tuple[str, str]:
    """v [m, c] as a [?, c] tensor of mp rows (zero rows appended when mp > m) and its type."""
    dyn = tensor_type(("?",) + v.dims[1:], v.dtype)
    x = e.v(f"tensor.cast {v.name} : {v.type} to {dyn}") if isinstance(v.dims[0], int) else v.name
    if mp == mv:
        return x, dyn
    pad, zero, x_in, x = e.v(f"arith.subi {mp}, {mv} : index", "d"), e.const(0, v.dtype), x, e.fresh("pad")
    e.emit(f"{x} = tensor.pad {x_in} low[0, 0] high[{pad}, 0] {{")
    e.emit(f"^bb0({x}i: index, {x}j: index):")
    e.emit(f"  tensor.yield {zero} : {v.dtype}")
    e.emit(f"}} : {dyn} to {dyn}")
    return x, dyn


def static_rows(e: Emitter, raw: str, m, mv: str, mp: str, n: int, dtype: str) -> TV:
    """The [mp, n] result of a dispatch cut back to its m rows, static again where m is."""
    yt = tensor_type(("?", n), dtype)
    if mp != mv:
        raw = e.v(f"tensor.extract_slice {raw}[0, 0] [{mv}, {n}] [1, 1] : {yt} to {yt}", "s")
    if isinstance(m, int):
        raw = e.v(f"tensor.cast {raw} : {yt} to {tensor_type((m, n), dtype)}")
    return TV(raw, (m, n), dtype)


def row_padded_dispatch(e: Emitter, executable: str, rows: list[TV], fixed: list[tuple[str, str]], block: int,
                        n: int, dtype: str, tag: str) -> TV:
    """flow.dispatch of a kernel whose row operands (`rows`, each [m, ...]) it takes as dynamic
    [mp, ...] tensors, mp = m padded to a multiple of `block`, then its row count as an index:
    (row operands..., fixed (name, type) operands..., mp) -> [mp, n] `dtype`, cut back to [m, n]."""
    m = rows[0].dims[0]
    mv, mp = rows_padded(e, m, block)
    ins = [dynamic_rows(e, v, mv, mp) for v in rows]
    yt = tensor_type(("?", n), dtype)
    names = ", ".join([x for x, _ in ins] + [name for name, _ in fixed] + [mp])
    types = ", ".join([f"{t}{{{mp}}}" for _, t in ins] + [t for _, t in fixed] + ["index"])
    raw = e.v(f"flow.dispatch {executable}::{executable}({names}) : ({types}) -> {yt}{{{mp}}}", tag)
    return static_rows(e, raw, m, mv, mp, n, dtype)


def _reassoc(groups: Sequence[Sequence[int]]) -> str:
    return "[" + ", ".join("[" + ", ".join(map(str, g)) + "]" for g in groups) + "]"


def identity(n: int) -> list[str]:
    return [f"d{i}" for i in range(n)]
