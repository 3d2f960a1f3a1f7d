"""One small lowering function per llm op: `LOWERINGS[name](e, op) -> [result TVs]`.

Each function emits linalg/tensor/arith/math text through the Emitter and must compute
exactly what the op's numpy implementation in llmirc/dialect/interpreter.py computes (in
f32, up to rounding order). The paged-KV ops live in kv.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ..dialect.types import LlmType, TensorT
from ..errors import LlmircError
from .emitter import TV, Dim, Emitter, affine_map, dense_f32, identity

NEG_LARGE = -1.0e30  # "minus infinity" for masks: finite, so fully masked rows stay finite


class LoweringError(LlmircError):
    """llm IR that cannot be lowered to IREE input; the message names the op and its location."""


class ModuleState(Protocol):
    num_devices: int
    globals: dict  # weight name (one device) -> (global symbol, tensor type, device)
    vnni_loads: dict[str, str]  # SSA names of loads of weights stored for vnni.py -> weight name

    def load_weight(self, e: Emitter, name: str, t: TensorT) -> TV: ...

    def define(self, key: object, base: str, make: Callable[[str, Emitter], list[str]]) -> str: ...

    def load_global(self, e: Emitter, sym: str, ttext: str) -> str: ...


@dataclass
class LOp:
    """What a lowering function sees of one llm op."""

    name: str  # without the "llm." prefix
    loc: str
    attrs: dict[str, Any]
    operands: list[Any]  # TV, or None for an absent optional operand
    result_types: list[LlmType]
    module: ModuleState
    options: dict[str, Any] = field(default_factory=dict)  # lowering options, e.g. attention strategy

    def result_dims(self, i: int, dims: tuple[Dim, ...]) -> tuple[Dim, ...]:
        """`dims` with every size that the op's result type states statically filled in."""
        t = self.result_types[i]
        if not isinstance(t, TensorT) or len(t.shape) != len(dims):
            raise LoweringError(f"result {i} has type {t}, expected rank {len(dims)}")
        return tuple(s if s is not None else d for s, d in zip(t.shape, dims))


Lowering = Callable[[Emitter, LOp], list[TV]]
LOWERINGS: dict[str, Lowering] = {}


def lowering(*names: str):
    def deco(fn: Lowering) -> Lowering:
        for n in names:
            LOWERINGS[n] = fn
        return fn
    return deco


def _float_op(x: TV, fop: str, iop: str) -> str:
    return fop if x.is_float else iop


def _map_like(e: Emitter, x: TV, fn: Callable[[str], str], dims: tuple[Dim, ...] | None = None,
              dtype: str | None = None) -> TV:
    """Elementwise map of one tensor; fn(element) emits the body and returns the result."""
    out = e.empty(dims or x.dims, dtype or x.dtype)
    n = x.rank
    return e.generic(n, [(x, identity(n))], [(out, identity(n))], lambda a: [fn(a[0])])[0]


# ---- parameters and embeddings -----------------------------------------------------------

@lowering("weight")
def weight(e: Emitter, op: LOp) -> list[TV]:
    t = op.result_types[0]
    if not isinstance(t, TensorT) or any(d is None for d in t.shape):
        raise LoweringError(f"weight '{op.attrs['name']}' must have a static tensor type, got {t}")
    return [op.module.load_weight(e, op.attrs["name"], t)]


@lowering("embedding")
def embedding(e: Emitter, op: LOp) -> list[TV]:
    ids, table = op.operands
    n = ids.rank
    vocab, hidden = table.dims
    out = e.empty(op.result_dims(0, ids.dims + (hidden,)), table.dtype)
    last = e.idx(vocab - 1) if isinstance(vocab, int) else e.v(f"arith.subi {vocab}, {e.idx(1)} : index")

    def body(a):
        i = e.v(f"arith.index_cast {a[0]} : {ids.dtype} to index")
        i = e.v(f"arith.maxsi {i}, {e.idx(0)} : index")  # an out-of-range id reads a real row,
        i = e.v(f"arith.minsi {i}, {last} : index")       # never out of bounds
        h = e.index(n)
        return [e.v(f"tensor.extract {table.name}[{i}, {h}] : {table.type}")]

    return e.generic(n + 1, [(ids, identity(n))], [(out, identity(n + 1))], body)


# ---- normalization -----------------------------------------------------------------------

def _reduce_last(e: Emitter, x: TV, init: float, combine: Callable[[str, str], str],
                 pre: Callable[[str], str] | None = None) -> TV:
    """[..., N] -> [...]: acc = combine(pre(x), acc) over the last dim."""
    n = x.rank
    acc = e.filled(x.dims[:-1], x.dtype, init)

    def body(a):
        v = pre(a[0]) if pre else a[0]
        return [combine(v, a[1])]

    return e.generic(n, [(x, identity(n))], [(acc, identity(n - 1))], body, reductions=(n - 1,))[0]


@lowering("rms_norm")
def rms_norm(e: Emitter, op: LOp) -> list[TV]:
    x, w = op.operands[:2]
    return [rms_norm_values(e, x, w, op.attrs["eps"])]


def rms_norm_values(e: Emitter, x: TV, w: TV, eps_value: float) -> TV:
    """x * rsqrt(mean(x^2, -1) + eps) * w, the mean of squares accumulated in x's float type."""
    n, ft = x.rank, x.dtype
    ss = _reduce_last(e, x, 0.0, lambda v, acc: e.v(f"arith.addf {v}, {acc} : {ft}"),
                      pre=lambda v: e.v(f"arith.mulf {v}, {v} : {ft}"))
    out = e.empty(x.dims, ft)
    denom = _size_as_float(e, x.dims[-1], ft)
    eps = e.const(eps_value, ft)

    def body(a):
        xv, sv, wv = a[0], a[1], a[2]
        var = e.v(f"arith.divf {sv}, {denom} : {ft}")
        r = e.v(f"math.rsqrt {e.v(f'arith.addf {var}, {eps} : {ft}')} : {ft}")
        return [e.v(f"arith.mulf {e.v(f'arith.mulf {xv}, {r} : {ft}')}, {wv} : {ft}")]

    return e.generic(n, [(x, identity(n)), (ss, identity(n - 1)), (w, [f"d{n - 1}"])],
                     [(out, identity(n))], body)[0]


def _size_as_float(e: Emitter, size: Dim, ft: str) -> str:
    if isinstance(size, int):
        return e.const(float(size), ft)
    i = e.v(f"arith.index_cast {size} : index to i64")
    return e.v(f"arith.sitofp {i} : i64 to {ft}")


@lowering("layer_norm")
def layer_norm(e: Emitter, op: LOp) -> list[TV]:
    x, w, b = (op.operands + [None])[:3]
    n, ft = x.rank, x.dtype
    denom = _size_as_float(e, x.dims[-1], ft)
    total = _reduce_last(e, x, 0.0, lambda v, acc: e.v(f"arith.addf {v}, {acc} : {ft}"))
    mean = _map_like(e, total, lambda s: e.v(f"arith.divf {s}, {denom} : {ft}"))
    # sum((x - mean)^2)
    acc = e.filled(x.dims[:-1], ft, 0.0)

    def sq_body(a):
        d = e.v(f"arith.subf {a[0]}, {a[1]} : {ft}")
        return [e.v(f"arith.addf {e.v(f'arith.mulf {d}, {d} : {ft}')}, {a[2]} : {ft}")]

    sq = e.generic(n, [(x, identity(n)), (mean, identity(n - 1))], [(acc, identity(n - 1))], sq_body,
                   reductions=(n - 1,))[0]
    eps = e.const(op.attrs["eps"], ft)
    out = e.empty(x.dims, ft)
    ins = [(x, identity(n)), (mean, identity(n - 1)), (sq, identity(n - 1)), (w, [f"d{n - 1}"])]
    if b is not None:
        ins.append((b, [f"d{n - 1}"]))

    def body(a):
        var = e.v(f"arith.divf {a[2]}, {denom} : {ft}")
        sd = e.v(f"math.sqrt {e.v(f'arith.addf {var}, {eps} : {ft}')} : {ft}")
        y = e.v(f"arith.divf {e.v(f'arith.subf {a[0]}, {a[1]} : {ft}')}, {sd} : {ft}")
        y = e.v(f"arith.mulf {y}, {a[3]} : {ft}")
        return [e.v(f"arith.addf {y}, {a[4]} : {ft}") if b is not None else y]

    return e.generic(n, ins, [(out, identity(n))], body)


# ---- matrix products ---------------------------------------------------------------------

def _as_2d(e: Emitter, x: TV) -> TV:
    """[..., K] -> [M, K] (a [K] vector becomes [1, K])."""
    if x.rank == 1:
        return e.expand(x, [[0, 1]], (1, x.dims[0]))
    return e.collapse(x, [list(range(x.rank - 1)), [x.rank - 1]])


def _from_2d(e: Emitter, y: TV, lead: tuple[Dim, ...]) -> TV:
    """[M, N] -> lead + [N] (inverse of _as_2d)."""
    n = y.dims[1]
    if not lead:
        return e.collapse(y, [[0, 1]])
    return e.expand(y, [list(range(len(lead))), [len(lead)]], lead + (n,))


def matmul_transpose_b(e: Emitter, x2: TV, w: TV, chunked: bool = False) -> TV:
    """[M, K] x [N, K] -> [M, N] f32, contraction over K (weights stay [out, in]); `chunked`
    (cuts_rows) computes a dynamic M in static row chunks where the function asks for them
    (Emitter.row_chunk, in_row_chunks)."""
    if e.tile:  # systolic-array targets: operands padded to the tile (systolic.py)
        from .systolic import padded_matmul_transpose_b

        return padded_matmul_transpose_b(e, x2, w)
    if chunked and e.row_chunk and not isinstance(x2.dims[0], int):
        return in_row_chunks(e, x2, w.dims[0], e.row_chunk, lambda xc: matmul_transpose_b(e, xc, w))
    m, n = x2.dims[0], w.dims[0]
    acc = e.filled((m, n), x2.dtype, 0.0)
    maps = ", ".join(affine_map(3, ex) for ex in (["d0", "d2"], ["d1", "d2"], ["d0", "d1"]))
    name = e.v(f"linalg.matmul indexing_maps = [{maps}] ins({x2.name}, {w.name} : {x2.type}, {w.type}) "
               f"outs({acc.name} : {acc.type}) -> {acc.type}", "mm")
    return TV(name, acc.dims, acc.dtype)


NARROW_FLOATS = ("f16", "bf16")  # weights whose dynamic-row products in_row_chunks cuts


def cuts_rows(x, w) -> bool:
    """Whether a linear of input x and weights w (TVs or TensorTs) runs in static row chunks in
    the row-chunked prefill/extend: f32 rows times f16/bf16 weights, over token rows (x
    [B, T, ..., K]), not over the last-token rows ([B, K]: the logits), which are fewer than a
    chunk (in_row_chunks needs M >= rows)."""
    return x.rank >= 3 and x.dtype == "f32" and w.dtype in NARROW_FLOATS


def in_row_chunks(e: Emitter, x2: TV, n: int, rows: int, product: Callable[[TV], TV]) -> TV:
    """y[M, n] = product(x2) for a dynamic M of at least `rows`: `rows` rows at a time with M
    static in each product (an scf.for over the full chunks), then the M mod `rows` rows left
    as one product with a dynamic M.

    Why: with a dynamic M, IREE 3.13's CPU data tiling makes the weight the mmt4d LHS. For an
    f16 weight that means converting each f16 element and broadcasting it through shuffles
    (16 vpermps/vshuf* per 16 FMAs in the inner loop); with M static the f16 weight is the RHS
    vector operand, one vcvtph2ps per 16 FMAs, and a 128-row f32 x f16 product of one
    2048 x 5632 linear runs 1.5-1.7x faster (benchmarks/matmul_kernels.py --weights f16
    --prefill-rows 64). Both products read the one packed copy of the weight IREE makes at
    load (it folds the two encodings' identical layouts into one global). Every row's numbers
    are those of a single product.

    M >= rows is the caller's promise (the runtime calls the `_r{rows}` functions only then):
    a zero-trip scf.for in a prefill fails at run time in IREE 3.13 ("transient buffer has not
    been committed"), and guarding it with an scf.if cost 10 % on short prompts (no fusion
    across the region).
    """
    m, k = x2.dims
    ft = x2.dtype
    c0, c_rows = e.idx(0), e.idx(rows)
    e.const(0.0, ft)  # the products' constants, defined here and so visible inside the loop
    out = e.empty((m, n), ft)
    full = e.v(f"arith.muli {e.v(f'arith.divui {m}, {c_rows} : index', 'd')}, {c_rows} : index", "d")
    i, acc, chunked = e.fresh("i"), e.fresh("acc"), e.fresh("rows")
    e.emit(f"{chunked} = scf.for {i} = {c0} to {full} step {c_rows} iter_args({acc} = {out.name}) -> ({out.type}) {{")
    indent, e.indent = e.indent, e.indent + "  "
    xc = e.v(f"tensor.extract_slice {x2.name}[{i}, 0] [{rows}, {k}] [1, 1] : {x2.type} to tensor<{rows}x{k}x{ft}>", "xc")
    yc = product(TV(xc, (rows, k), ft))
    done = e.v(f"tensor.insert_slice {yc.name} into {acc}[{i}, 0] [{rows}, {n}] [1, 1] : {yc.type} into {out.type}",
               "ins")
    e.emit(f"scf.yield {done} : {out.type}")
    e.indent = indent
    e.emit("}")
    rest = e.v(f"arith.subi {m}, {full} : index", "d")
    xr = e.v(f"tensor.extract_slice {x2.name}[{full}, 0] [{rest}, {k}] [1, 1] : {x2.type} to tensor<?x{k}x{ft}>", "xr")
    yr = product(TV(xr, (rest, k), ft))
    y = e.v(f"tensor.insert_slice {yr.name} into {chunked}[{full}, 0] [{rest}, {n}] [1, 1] : {yr.type} into "
            f"{out.type}", "ins")
    return TV(y, (m, n), ft)


def _add_bias(e: Emitter, y: TV, bias: TV) -> TV:
    ft = y.dtype
    out = e.empty(y.dims, ft)
    n = y.rank
    return e.generic(n, [(y, identity(n)), (bias, [f"d{n - 1}"])], [(out, identity(n))],
                     lambda a: [e.v(f"arith.addf {a[0]}, {a[1]} : {ft}")])[0]


@lowering("linear", "sharded_linear")
def linear(e: Emitter, op: LOp) -> list[TV]:
    # sharded_linear is linear computed in slices; on one device the slices are the whole.
    x, w, b = (op.operands + [None])[:3]
    y = matmul_transpose_b(e, _as_2d(e, x), w, chunked=cuts_rows(x, w))
    if b is not None:
        y = _add_bias(e, y, b)
    return [_from_2d(e, y, op.result_dims(0, x.dims[:-1] + (w.dims[0],))[:-1])]


@lowering("matmul")
def matmul(e: Emitter, op: LOp) -> list[TV]:
    a, b = op.operands
    nb = a.rank - 2
    loops = nb + 3  # batch..., m, n, k
    m, n, k = f"d{nb}", f"d{nb + 1}", f"d{nb + 2}"
    batch = [f"d{i}" for i in range(nb)]
    rhs_map = ([k, n] if b.rank == 2 else batch + [k, n])
    acc = e.filled(op.result_dims(0, a.dims[:-1] + (b.dims[-1],)), a.dtype, 0.0)
    ft = a.dtype

    def body(x):
        return [e.v(f"arith.addf {e.v(f'arith.mulf {x[0]}, {x[1]} : {ft}')}, {x[2]} : {ft}")]

    return e.generic(loops, [(a, batch + [m, k]), (b, rhs_map)], [(acc, batch + [m, n])], body,
                     reductions=(nb + 2,))


# ---- elementwise -------------------------------------------------------------------------

def binary(e: Emitter, a: TV, b: TV, fop: str, iop: str, dims: tuple[Dim, ...] | None = None) -> TV:
    """Elementwise a (op) b; b broadcasts to a numpy-style (aligned right, size-1 dims)."""
    n, r = a.rank, b.rank
    rhs_map = []
    for j in range(r):
        i = n - r + j
        rhs_map.append("0" if b.dims[j] == 1 and a.dims[i] != 1 else f"d{i}")
    out = e.empty(dims or a.dims, a.dtype)
    opname = _float_op(a, fop, iop)
    return e.generic(n, [(a, identity(n)), (b, rhs_map)], [(out, identity(n))],
                     lambda x: [e.v(f"{opname} {x[0]}, {x[1]} : {a.dtype}")])[0]


def _binary(e: Emitter, op: LOp, fop: str, iop: str) -> list[TV]:
    a, b = op.operands
    return [binary(e, a, b, fop, iop, op.result_dims(0, a.dims))]


@lowering("add")
def add(e: Emitter, op: LOp) -> list[TV]:
    return _binary(e, op, "arith.addf", "arith.addi")


@lowering("mul")
def mul(e: Emitter, op: LOp) -> list[TV]:
    return _binary(e, op, "arith.mulf", "arith.muli")


def silu_value(e: Emitter, v: str, ft: str) -> str:
    """x / (1 + exp(-x)) on one element."""
    ex = e.v(f"math.exp {e.v(f'arith.negf {v} : {ft}')} : {ft}")
    return e.v(f"arith.divf {v}, {e.v(f'arith.addf {e.const(1.0, ft)}, {ex} : {ft}')} : {ft}")


def gelu_value(e: Emitter, v: str, ft: str, approximate: str) -> str:
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation, on one element."""
    if approximate == "tanh":
        k0, k1 = e.const((2 / 3.141592653589793) ** 0.5, ft), e.const(0.044715, ft)
        x3 = e.v(f"arith.mulf {e.v(f'arith.mulf {v}, {v} : {ft}')}, {v} : {ft}")
        inner = e.v(f"arith.addf {v}, {e.v(f'arith.mulf {k1}, {x3} : {ft}')} : {ft}")
        t = e.v(f"math.tanh {e.v(f'arith.mulf {k0}, {inner} : {ft}')} : {ft}")
    else:
        t = e.v(f"math.erf {e.v(f'arith.mulf {v}, {e.const(0.5 ** 0.5, ft)} : {ft}')} : {ft}")
    t = e.v(f"arith.addf {e.const(1.0, ft)}, {t} : {ft}")
    return e.v(f"arith.mulf {e.v(f'arith.mulf {e.const(0.5, ft)}, {v} : {ft}')}, {t} : {ft}")


@lowering("silu")
def silu(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    return [_map_like(e, x, lambda v: silu_value(e, v, x.dtype))]


@lowering("gelu")
def gelu(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    return [_map_like(e, x, lambda v: gelu_value(e, v, x.dtype, op.attrs["approximate"]))]


@lowering("scale")
def scale(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    factor = e.const(op.attrs["factor"], x.dtype)
    return [_map_like(e, x, lambda v: e.v(f"arith.mulf {v}, {factor} : {x.dtype}"))]


@lowering("softcap")
def softcap(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    ft, cap = x.dtype, e.const(op.attrs["cap"], x.dtype)

    def body(v: str) -> str:
        th = e.v(f"math.tanh {e.v(f'arith.divf {v}, {cap} : {ft}')} : {ft}")
        return e.v(f"arith.mulf {th}, {cap} : {ft}")

    return [_map_like(e, x, body)]


@lowering("softmax")
def softmax(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    return [softmax_last(e, x)]


def softmax_last(e: Emitter, x: TV) -> TV:
    out = e.empty(x.dims, x.dtype)
    name = e.v(f"linalg.softmax dimension({x.rank - 1}) ins({x.name} : {x.type}) "
               f"outs({out.name} : {out.type}) -> {out.type}", "sm")
    return TV(name, x.dims, x.dtype)


def softmax_rows(e: Emitter, x: TV) -> TV:
    """Softmax over the last dim as max, exp(x - max), sum and divide generics.

    Computes what `linalg.softmax` does, but IREE 3.13's CPU code for that op with dynamic
    dims was 30x slower than these four generics on long rows (151 vs 4.8 ms on 2688 rows
    of 1088); the attention lowering uses this one where the query length is dynamic.
    """
    n, ft = x.rank, x.dtype
    rows = identity(n)[:-1]

    def reduce(src: TV, init: float, op: str) -> TV:
        acc = e.filled(x.dims[:-1], ft, init)
        return e.generic(n, [(src, identity(n))], [(acc, rows)],
                         lambda a: [e.v(f"{op} {a[0]}, {a[1]} : {ft}")], reductions=(n - 1,))[0]

    def rowwise(src: TV, row: TV, body) -> TV:
        return e.generic(n, [(src, identity(n)), (row, rows)], [(e.empty(x.dims, ft), identity(n))], body)[0]

    mx = reduce(x, float("-inf"), "arith.maximumf")
    ex = rowwise(x, mx, lambda a: [e.v(f"math.exp {e.v(f'arith.subf {a[0]}, {a[1]} : {ft}')} : {ft}")])
    total = reduce(ex, 0.0, "arith.addf")
    return rowwise(ex, total, lambda a: [e.v(f"arith.divf {a[0]}, {a[1]} : {ft}")])


# ---- shapes ------------------------------------------------------------------------------

@lowering("reshape")
def reshape(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    target = tuple(x.dims[i] if d == 0 else d for i, d in enumerate(op.attrs["shape"]))
    target = op.result_dims(0, target)
    return [reshape_to(e, x, target)]


def reshape_to(e: Emitter, x: TV, target: tuple[Dim, ...]) -> TV:
    """Reshape by collapse_shape then expand_shape over groups of dims with equal products."""
    groups = _reshape_groups(x.dims, target)
    if groups is None:  # no grouping found (e.g. a dynamic dim is split): go through 1-D
        flat = e.collapse(x, [list(range(x.rank))]) if x.rank != 1 else x
        return e.expand(flat, [list(range(len(target)))], target)
    src_groups = [g for g, _ in groups]
    tgt_groups = [g for _, g in groups]
    mid = e.collapse(x, src_groups)
    return e.expand(mid, tgt_groups, target)


def _reshape_groups(src: tuple[Dim, ...], tgt: tuple[Dim, ...]):
    """Pair consecutive runs of src and tgt dims with equal (symbolic) products, or None."""

    def key(dims):
        static = 1
        syms: list[str] = []
        for d in dims:
            if isinstance(d, int):
                static *= d
            else:
                syms.append(d)
        return static, sorted(syms)

    if not src or not tgt:
        return None
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) and j < len(tgt):
        gs, gt = [i], [j]
        i, j = i + 1, j + 1
        while key([src[k] for k in gs]) != key([tgt[k] for k in gt]):
            (ss, ssym), (ts, tsym) = key([src[k] for k in gs]), key([tgt[k] for k in gt])
            grow_tgt = bool(set(ssym) - set(tsym)) or (not (set(tsym) - set(ssym)) and ts < ss)
            if grow_tgt and j < len(tgt):
                gt.append(j)
                j += 1
            elif not grow_tgt and i < len(src):
                gs.append(i)
                i += 1
            else:
                return None
        groups.append((gs, gt))
    # trailing unit dims join the last group
    while i < len(src):
        if src[i] != 1:
            return None
        groups[-1][0].append(i)
        i += 1
    while j < len(tgt):
        if tgt[j] != 1:
            return None
        groups[-1][1].append(j)
        j += 1
    return groups


# ---- positions, rope, sampling helpers ---------------------------------------------------

@lowering("positions")
def positions(e: Emitter, op: LOp) -> list[TV]:
    tokens, lens = op.operands
    out = e.empty(op.result_dims(0, tokens.dims), "i64")
    minus1 = e.const(-1, "i64")

    def body(a):
        t = e.v(f"arith.index_cast {e.index(1)} : index to i64")
        ln = a[0] if lens.dtype == "i64" else e.v(f"arith.extsi {a[0]} : {lens.dtype} to i64")
        live = e.v(f"arith.cmpi slt, {t}, {ln} : i64")
        return [e.v(f"arith.select {live}, {t}, {minus1} : i64")]

    return e.generic(2, [(lens, ["d0"])], [(out, identity(2))], body)


@lowering("extend_positions")
def extend_positions(e: Emitter, op: LOp) -> list[TV]:
    tokens, start, lens = op.operands
    out = e.empty(op.result_dims(0, tokens.dims), "i64")
    minus1 = e.const(-1, "i64")

    def body(a):
        t = e.v(f"arith.index_cast {e.index(1)} : index to i64")
        s0, ln = (x if dt == "i64" else e.v(f"arith.extsi {x} : {dt} to i64")
                  for x, dt in ((a[0], start.dtype), (a[1], lens.dtype)))
        live = e.v(f"arith.cmpi slt, {t}, {ln} : i64")
        return [e.v(f"arith.select {live}, {e.v(f'arith.addi {s0}, {t} : i64')}, {minus1} : i64")]

    return e.generic(2, [(start, ["d0"]), (lens, ["d0"])], [(out, identity(2))], body)


@lowering("rope")
def rope(e: Emitter, op: LOp) -> list[TV]:
    x, pos = op.operands
    inv = op.attrs["inv_freq"]
    half = len(inv)
    ft = x.dtype
    table = e.v(f"arith.constant {dense_f32(inv)} : tensor<{half}x{ft}>", "inv_freq")
    out = e.empty(x.dims, ft)
    c_half = e.idx(half)

    def body(a):
        xv, pv = a[0], a[1]
        b, t, h, i = (e.index(k) for k in range(4))
        lo = e.v(f"arith.cmpi ult, {i}, {c_half} : index")
        j = e.v(f"arith.remui {i}, {c_half} : index")  # frequency index (i < 2*half)
        up = e.v(f"arith.addi {i}, {c_half} : index")
        down = e.v(f"arith.subi {i}, {c_half} : index")
        partner = e.v(f"arith.select {lo}, {up}, {down} : index")
        xp = e.v(f"tensor.extract {x.name}[{b}, {t}, {h}, {partner}] : {x.type}")
        f = e.v(f"tensor.extract {table}[{j}] : tensor<{half}x{ft}>")
        p = e.v(f"arith.sitofp {pv} : {pos.dtype} to {ft}")
        ang = e.v(f"arith.mulf {p}, {f} : {ft}")
        cos, sin = e.v(f"math.cos {ang} : {ft}"), e.v(f"math.sin {ang} : {ft}")
        xc = e.v(f"arith.mulf {xv}, {cos} : {ft}")
        ps = e.v(f"arith.mulf {xp}, {sin} : {ft}")
        # first half: x1*cos - x2*sin; second half: x2*cos + x1*sin (rotate-half)
        sub = e.v(f"arith.subf {xc}, {ps} : {ft}")
        add_ = e.v(f"arith.addf {xc}, {ps} : {ft}")
        return [e.v(f"arith.select {lo}, {sub}, {add_} : {ft}")]

    return e.generic(4, [(x, identity(4)), (pos, ["d0", "d1"])], [(out, identity(4))], body)


@lowering("last_token")
def last_token(e: Emitter, op: LOp) -> list[TV]:
    x, lens = op.operands
    b, t, d = x.dims
    out = e.empty(op.result_dims(0, (b, d)), x.dtype)
    t_last = e.idx(t - 1) if isinstance(t, int) else e.v(f"arith.subi {t}, {e.idx(1)} : index")

    def body(a):
        i = e.v(f"arith.index_cast {a[0]} : {lens.dtype} to index")
        i = e.v(f"arith.subi {i}, {e.idx(1)} : index")
        i = e.v(f"arith.maxsi {i}, {e.idx(0)} : index")  # clamp: never read out of bounds
        i = e.v(f"arith.minsi {i}, {t_last} : index")
        return [e.v(f"tensor.extract {x.name}[{e.index(0)}, {i}, {e.index(1)}] : {x.type}")]

    return e.generic(2, [(lens, ["d0"])], [(out, identity(2))], body)


@lowering("argmax")
def argmax(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    n, ft = x.rank, x.dtype
    best = e.filled(x.dims[:-1], ft, float("-inf"))
    where = e.filled(x.dims[:-1], "i64", 0)

    def body(a):
        v, bv, bi = a
        i = e.v(f"arith.index_cast {e.index(n - 1)} : index to i64")
        gt = e.v(f"arith.cmpf ogt, {v}, {bv} : {ft}")
        eq = e.v(f"arith.cmpf oeq, {v}, {bv} : {ft}")
        first = e.v(f"arith.cmpi slt, {i}, {bi} : i64")  # ties go to the lowest index, in any order
        take = e.v(f"arith.ori {gt}, {e.v(f'arith.andi {eq}, {first} : i1')} : i1")
        return [e.v(f"arith.select {take}, {v}, {bv} : {ft}"), e.v(f"arith.select {take}, {i}, {bi} : i64")]

    res = e.generic(n, [(x, identity(n))], [(best, identity(n - 1)), (where, identity(n - 1))], body,
                    reductions=(n - 1,))
    return [res[1]]


# ---- quantization ------------------------------------------------------------------------

def _dequant_value(e: Emitter, q: str, qt: str, s: str, z: str | None, zt: str | None, ft: str) -> str:
    # An i4 weight with zero points is unsigned (0..15), as the interpreter's asymmetric int4;
    # i8 values (int8, or int4 held in i8) are signed.
    to_float = "arith.uitofp" if qt == "i4" and z is not None else "arith.sitofp"
    w = e.v(f"{to_float} {q} : {qt} to {ft}")
    if z is not None:
        w = e.v(f"arith.subf {w}, {e.v(f'arith.sitofp {z} : {zt} to {ft}')} : {ft}")
    return e.v(f"arith.mulf {w}, {s} : {ft}")


def _group_split(e: Emitter, x: TV, g: int) -> TV:
    """[..., K] -> [..., K/g, g]."""
    k = x.dims[-1]
    if not isinstance(k, int):
        raise LoweringError("the in-features of a quantized weight must be static")
    n = x.rank
    return e.expand(x, [[i] for i in range(n - 1)] + [[n - 1, n]], x.dims[:-1] + (k // g, g))


@lowering("dequantize")
def dequantize(e: Emitter, op: LOp) -> list[TV]:
    q, s, z = (op.operands + [None])[:3]
    g, ft = op.attrs["group_size"], s.dtype
    q3 = _group_split(e, q, g)
    out = e.empty(q3.dims, ft)
    ins = [(q3, identity(3)), (s, ["d0", "d1"])] + ([(z, ["d0", "d1"])] if z is not None else [])
    w3 = e.generic(3, ins, [(out, identity(3))],
                   lambda a: [_dequant_value(e, a[0], q.dtype, a[1], a[2] if z is not None else None,
                                             z.dtype if z is not None else None, ft)])[0]
    return [e.collapse(w3, [[0], [1, 2]])]


# quantized_matmul: see quantized.py (two stages, weights stored [in, out]).


FLOAT_BITS = {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}


@lowering("convert")
def convert(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    to = op.attrs["dtype"]
    if to == x.dtype:
        return [x]

    def cast(v: str) -> str:
        src = x.dtype
        if FLOAT_BITS[src] == FLOAT_BITS[to]:  # f16 <-> bf16: through f32 (exact widening)
            v, src = e.v(f"arith.extf {v} : {src} to f32"), "f32"
        kind = "arith.extf" if FLOAT_BITS[to] > FLOAT_BITS[src] else "arith.truncf"
        return e.v(f"{kind} {v} : {src} to {to}")

    return [_map_like(e, x, cast, dtype=to)]


# ---- collectives on one device -----------------------------------------------------------

@lowering("all_reduce")
def all_reduce(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    n, ft = x.rank, x.dtype
    is_sum = op.attrs["reduction"] == "sum"
    init = 0.0 if is_sum else float("-inf")
    if not x.is_float:
        init = 0 if is_sum else -(1 << 63)
    acc = e.filled(x.dims[1:], ft, init)
    fop = ("arith.addf" if is_sum else "arith.maximumf") if x.is_float else ("arith.addi" if is_sum else "arith.maxsi")
    # loops: d0 = shard (reduction, outermost in the map), d1.. = the shard's dims
    return e.generic(n, [(x, identity(n))], [(acc, [f"d{i}" for i in range(1, n)])],
                     lambda a: [e.v(f"{fop} {a[0]}, {a[1]} : {ft}")], reductions=(0,))


@lowering("all_gather")
def all_gather(e: Emitter, op: LOp) -> list[TV]:
    (x,) = op.operands
    dim = op.attrs["dim"]
    # [n, s0, .., s_dim, ..] -> [s0, .., n, s_dim, ..] -> collapse (n, s_dim)
    perm = list(range(1, dim + 1)) + [0] + list(range(dim + 1, x.rank))
    t = e.transpose(x, perm)
    groups = [[i] for i in range(dim)] + [[dim, dim + 1]] + [[i] for i in range(dim + 2, x.rank)]
    return [e.collapse(t, groups)]
