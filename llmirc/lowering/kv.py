"""Lowering of the paged KV-cache ops: scatter into the page pool, attention through it.

pool[num_pages, layers, 2, block_size, kv_heads, head_dim]; position p of row b lives in
page block_tables[b, p // block_size], slot p % block_size (docs/abi.md). Page 0 is the
scratch page: every write that has no valid destination (padding positions < 0, positions
past the block table, a page number outside the pool) is redirected there, so no index
ever leaves the pool.

Two attention strategies (docs/attention-strategy.md has the measurements):
- "decomposed": gather K/V pages, Q.K^T contraction, scale + mask, linalg.softmax, P.V
  contraction. Compiles for llvm-cpu, CUDA, HIP and Vulkan; 2-6x faster than fused on CPU.
- "fused": gather K/V pages, additive f32 mask, iree_linalg_ext.attention. Compiles for
  llvm-cpu, CUDA and HIP, not Vulkan (online_attention fails to bufferize); ~0.75-0.95x
  the decomposed time on an H100 (CUDA).
Both read K/V in the pool's own [B, S, KH, D] order (no transposed copy), and GQA is
handled by viewing the queries as [B, KH, G*T, D]: one matrix per KV head.
"""

from __future__ import annotations

from .emitter import TV, Dim, Emitter, affine_map, identity
from .ops import NEG_LARGE, LOp, LoweringError, lowering, softmax_last, softmax_rows

STRATEGIES = ("decomposed", "fused")


def _pool_dims(pool: TV):
    num_pages, layers, two, bs, kh, d = pool.dims
    return num_pages, layers, bs, kh, d


def _to_dtype(e: Emitter, v: str, src: str, dst: str) -> str:
    if src == dst:
        return v
    widths = {"f16": 16, "bf16": 16, "f32": 32, "f64": 64}
    op = "arith.truncf" if widths[dst] < widths[src] else "arith.extf"
    return e.v(f"{op} {v} : {src} to {dst}")


# ---- writes ----------------------------------------------------------------------------

def _scatter_indices(e: Emitter, pool: TV, bt: TV, pos: TV, layer: int, kv: int) -> TV:
    """[B, T, 4] i64 rows (page, layer, kv, slot) for every (b, t); invalid ones -> page 0."""
    num_pages, _, bs, _, _ = _pool_dims(pool)
    b_, t_ = pos.dims
    cap = e.mul_dims([bt.dims[1], bs])  # positions the block table covers
    cap64 = e.v(f"arith.index_cast {e.dim_value(cap)} : index to i64")
    pages64 = e.v(f"arith.index_cast {e.dim_value(num_pages)} : index to i64")
    out = e.empty((b_, t_, 4), "i64")
    # layer and K/V index as runtime values: one executable serves every layer
    zero64, layer64, kv64 = e.const(0, "i64"), e.opaque(layer, "i64"), e.opaque(kv, "i64")
    c_bs = e.idx(bs)

    def body(a):
        p = a[0] if pos.dtype == "i64" else e.v(f"arith.extsi {a[0]} : {pos.dtype} to i64")
        b, c = e.index(0), e.index(2)
        in_table = e.v(f"arith.andi {e.v(f'arith.cmpi sge, {p}, {zero64} : i64')}, "
                       f"{e.v(f'arith.cmpi slt, {p}, {cap64} : i64')} : i1")
        ps = e.v(f"arith.select {in_table}, {p}, {zero64} : i64")
        pi = e.v(f"arith.index_cast {ps} : i64 to index")
        col = e.v(f"arith.divui {pi}, {c_bs} : index")
        slot = e.v(f"arith.index_cast {e.v(f'arith.remui {pi}, {c_bs} : index')} : index to i64")
        page = e.v(f"tensor.extract {bt.name}[{b}, {col}] : {bt.type}")
        if bt.dtype != "i64":
            page = e.v(f"arith.extsi {page} : {bt.dtype} to i64")
        in_pool = e.v(f"arith.andi {e.v(f'arith.cmpi sge, {page}, {zero64} : i64')}, "
                      f"{e.v(f'arith.cmpi slt, {page}, {pages64} : i64')} : i1")
        ok = e.v(f"arith.andi {in_table}, {in_pool} : i1")
        page = e.v(f"arith.select {ok}, {page}, {zero64} : i64")
        slot = e.v(f"arith.select {ok}, {slot}, {zero64} : i64")
        r = slot
        for k, val in ((2, kv64), (1, layer64), (0, page)):
            is_k = e.v(f"arith.cmpi eq, {c}, {e.idx(k)} : index")
            r = e.v(f"arith.select {is_k}, {val}, {r} : i64")
        return [r]

    return e.generic(3, [(pos, ["d0", "d1"])], [(out, identity(3))], body)[0]


def scatter_rows(e: Emitter, pool: TV, updates: TV, indices: TV) -> TV:
    """pool[indices[n, 0:4]] = updates[n] (updates [N, KH, D]); returns the updated pool."""
    if updates.dtype != pool.dtype:
        n = updates.rank
        out = e.empty(updates.dims, pool.dtype)
        updates = e.generic(n, [(updates, identity(n))], [(out, identity(n))],
                            lambda a: [_to_dtype(e, a[0], updates.dtype, pool.dtype)])[0]
    dt = pool.dtype
    name = e.fresh("pool")
    e.emit(f"{name} = iree_linalg_ext.scatter dimension_map = [0, 1, 2, 3] unique_indices(false) "
           f"ins({updates.name}, {indices.name} : {updates.type}, {indices.type}) outs({pool.name} : {pool.type}) {{")
    a, b = e.fresh("a"), e.fresh("a")
    e.lines.append(f"{e.indent}^bb0({a}: {dt}, {b}: {dt}):")
    e.emit(f"  iree_linalg_ext.yield {a} : {dt}")
    e.emit(f"}} -> {pool.type}")
    return TV(name, pool.dims, pool.dtype)


@lowering("paged_append_kv")
def paged_append_kv(e: Emitter, op: LOp) -> list[TV]:
    pool, bt, k, v, pos = op.operands
    layer = op.attrs["layer"]
    for kv, val in ((0, k), (1, v)):
        idx = e.collapse(_scatter_indices(e, pool, bt, pos, layer, kv), [[0, 1], [2]])
        rows = e.collapse(val, [[0, 1], [2], [3]])
        pool = scatter_rows(e, pool, rows, idx)
    return [pool]


# ---- reads -----------------------------------------------------------------------------

def gather_pages(e: Emitter, pool: TV, bt: TV, layer: int, kv: int, dtype: str, head_major: bool = False) -> TV:
    """K or V of `layer` for every row through the block tables: [B, S, KH, D], S = P * block_size,
    or with `head_major` [B * KH, S, D] (the batch-matmul operand of decomposed attention).

    `iree_linalg_ext.gather` copies rows of D contiguous elements out of the whole pool seen
    as [pages * layers * 2 * block * KH, D] (a free reshape of the contiguous pool), one row
    index per output row computed from the block table; the output comes out in the order
    asked for, so there is no transpose. A generic reading the pool element by element
    through `tensor.extract` ran at 1-2 GB/s and took two thirds of a batch-8 decode step at
    context 1088 (docs/performance.md). A block-table entry outside the pool reads the
    scratch page.
    """
    num_pages, layers, bs, kh, d = _pool_dims(pool)
    b_, p_ = bt.dims
    it = bt.dtype
    last_page = e.v(f"arith.index_cast {e.v(f'arith.subi {e.dim_value(num_pages)}, {e.idx(1)} : index')} "
                    f": index to {it}")
    zero = e.const(0, it)
    # row of (page, slot, h) = (((page * L + layer) * 2 + kv) * bs + slot) * KH + h
    base = e.opaque((layer * 2 + kv) * bs * kh, it)  # runtime value: one executable serves every layer
    per_page, c_kh = e.const(layers * 2 * bs * kh, it), e.const(kh, it)
    # loops (b, p, slot, h), or (b, h, p, slot) head-major
    i_p, i_slot, i_h = (2, 3, 1) if head_major else (1, 2, 3)
    rows = e.empty((b_, kh, p_, bs) if head_major else (b_, p_, bs, kh), it)

    def row(a):
        bad = e.v(f"arith.ori {e.v(f'arith.cmpi slt, {a[0]}, {zero} : {it}')}, "
                  f"{e.v(f'arith.cmpi sgt, {a[0]}, {last_page} : {it}')} : i1")
        page = e.v(f"arith.select {bad}, {zero}, {a[0]} : {it}")
        slot, h = (e.v(f"arith.index_cast {e.index(i)} : index to {it}") for i in (i_slot, i_h))
        r = e.v(f"arith.addi {e.v(f'arith.muli {page}, {per_page} : {it}')}, {base} : {it}")
        r = e.v(f"arith.addi {r}, {e.v(f'arith.muli {slot}, {c_kh} : {it}')} : {it}")
        return [e.v(f"arith.addi {r}, {h} : {it}")]

    idx = e.generic(4, [(bt, ["d0", f"d{i_p}"])], [(rows, identity(4))], row)[0]
    flat = e.collapse(pool, [[0, 1, 2, 3, 4], [5]])
    out = e.empty(idx.dims + (d,), pool.dtype)
    got = TV(e.v(f"iree_linalg_ext.gather dimension_map = [0] ins({flat.name}, {idx.name} : {flat.type}, "
                 f"{idx.type}) outs({out.name} : {out.type}) -> {out.type}", "gp"), out.dims, pool.dtype)
    if pool.dtype != dtype:
        got = e.generic(5, [(got, identity(5))], [(e.empty(got.dims, dtype), identity(5))],
                        lambda a: [_to_dtype(e, a[0], pool.dtype, dtype)])[0]
    return e.collapse(got, [[0, 1], [2, 3], [4]] if head_major else [[0], [1, 2], [3], [4]])


@lowering("paged_attention")
def paged_attention(e: Emitter, op: LOp) -> list[TV]:
    q, pool, bt, pos = op.operands
    strategy = op.options.get("attention", "decomposed")
    layer, nh, kh, hd = op.attrs["layer"], op.attrs["num_heads"], op.attrs["num_kv_heads"], op.attrs["head_dim"]
    scale, window, softcap = op.attrs["scale"], op.attrs.get("window", 0), op.attrs.get("softcap", 0.0)
    g = nh // kh
    ft = q.dtype
    b_, t_ = q.dims[0], q.dims[1]
    if strategy not in STRATEGIES:
        raise LoweringError(f"unknown attention strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if softcap and strategy == "fused":
        strategy = "decomposed"  # iree_linalg_ext.attention has no score soft-capping
    # q [B, T, NH, D] -> [B, T, KH, G, D] -> [B, KH, G, T, D] -> [B, KH, G*T, D]: one matrix per KV head
    if window > 0:
        bt, pos = _window_view(e, bt, pos, window, _pool_dims(pool)[2])
    q5 = e.expand(q, [[0], [1], [2, 3], [4]], (b_, t_, kh, g, hd))
    q4 = e.collapse(e.transpose(q5, [0, 2, 3, 1, 4]), [[0], [1], [2, 3], [4]])
    if strategy == "decomposed":
        # Two batch matmuls over B*KH: IREE tiles and vectorizes named batch matmuls well, and
        # a contraction generic with every parallel dim static (decode_b{B}) failed to compile
        # ("large vector sizes") or ran as 2 workgroups (docs/performance.md).
        k = gather_pages(e, pool, bt, layer, 0, ft, head_major=True)  # [B*KH, S, D]
        v = gather_pages(e, pool, bt, layer, 1, ft, head_major=True)
        q3 = e.collapse(q4, [[0, 1], [2], [3]])  # [B*KH, G*T, D]
        scores = _batch_matmul(e, q3, k, transpose_b=True)  # [B*KH, G*T, S]
        probs = _masked_softmax(e, scores, pos, (b_, kh, g, t_), scale, window, softcap)
        out4 = e.expand(_batch_matmul(e, probs, v), [[0, 1], [2], [3]], (b_, kh, q4.dims[2], hd))
    else:
        k = gather_pages(e, pool, bt, layer, 0, ft)  # [B, S, KH, D]
        v = gather_pages(e, pool, bt, layer, 1, ft)
        mask = e.collapse(_additive_mask(e, pos, (b_, kh, g, t_, k.dims[1]), ft, window), [[0], [1], [2, 3], [4]])
        out4 = _fused_attention(e, q4, k, v, mask, scale)

    # [B, KH, G*T, D] -> [B, KH, G, T, D] -> [B, T, KH, G, D] with padding rows zeroed -> [B, T, NH, D]
    out5 = e.expand(out4, [[0], [1], [2, 3], [4]], (b_, kh, g, t_, hd))
    res = e.empty((b_, t_, kh, g, hd), ft)
    zero, zero64 = e.const(0.0, ft), e.const(0, pos.dtype)

    def body(a):
        live = e.v(f"arith.cmpi sge, {a[1]}, {zero64} : {pos.dtype}")
        return [e.v(f"arith.select {live}, {a[0]}, {zero} : {ft}")]

    # loops over the result (b, t, h, g, d)
    y = e.generic(5, [(out5, ["d0", "d2", "d3", "d1", "d4"]), (pos, ["d0", "d1"])],
                  [(res, identity(5))], body)[0]
    return [e.collapse(y, [[0], [1], [2, 3], [4]])]


def _window_view(e: Emitter, bt: TV, pos: TV, window: int, bs: int) -> tuple[TV, TV]:
    """The block-table columns a sliding-window layer can see, and positions relative to them.

    Row b's queries hold consecutive positions (a prefill, extend or decode chunk) ending at
    p_hi, so every key it can see lies in [p_hi - T - window + 2, p_hi]: at most
    W = ceil((window + T - 1) / bs) + 1 pages. The view is those W columns of the table,
    starting at page column c_b (clamped so the view stays inside the table), and positions
    p - c_b * bs; the attention after it reads W pages instead of the table's P, so a
    decode step far past the window reads the window's pages, not the whole history.
    Padding positions (< 0) stay as they are. When W >= P (static shapes) the table is
    returned unchanged.
    """
    b_, p_ = bt.dims
    t_ = pos.dims[1]
    pdt = pos.dtype
    if isinstance(t_, int):
        need: Dim = -(-(window + t_ - 1) // bs) + 1
        if isinstance(p_, int) and need >= p_:
            return bt, pos
    else:
        span = e.v(f"arith.addi {t_}, {e.idx(window - 1 + bs - 1)} : index", "d")
        need = e.v(f"arith.addi {e.v(f'arith.divui {span}, {e.idx(bs)} : index', 'd')}, {e.idx(1)} : index", "d")
    w = (min(p_, need) if isinstance(p_, int) and isinstance(need, int)
         else e.v(f"arith.minui {e.dim_value(p_)}, {e.dim_value(need)} : index", "d"))

    def cast(d: Dim) -> str:
        return e.v(f"arith.index_cast {e.dim_value(d)} : index to {pdt}")

    # p_hi[b] = max_t pos[b, t] (-1 for a row of padding)
    hi = e.generic(2, [(pos, ["d0", "d1"])], [(e.filled((b_,), pdt, -1), ["d0"])],
                   lambda a: [e.v(f"arith.maxsi {a[0]}, {a[1]} : {pdt}")], reductions=(1,))[0]
    back = e.v(f"arith.addi {cast(t_)}, {e.const(window - 2, pdt)} : {pdt}")  # T + window - 2
    last_col = e.v(f"arith.subi {cast(p_)}, {cast(w)} : {pdt}")
    zero, c_bs = e.const(0, pdt), e.const(bs, pdt)

    def first_col(a):
        lo = e.v(f"arith.maxsi {e.v(f'arith.subi {a[0]}, {back} : {pdt}')}, {zero} : {pdt}")
        return [e.v(f"arith.minsi {e.v(f'arith.divsi {lo}, {c_bs} : {pdt}')}, {last_col} : {pdt}")]

    start = e.generic(1, [(hi, ["d0"])], [(e.empty((b_,), pdt), ["d0"])], first_col)[0]

    def column(a):
        col = e.v(f"arith.addi {e.v(f'arith.index_cast {a[0]} : {pdt} to index')}, {e.index(1)} : index")
        return [e.v(f"tensor.extract {bt.name}[{e.index(0)}, {col}] : {bt.type}")]

    view = e.generic(2, [(start, ["d0"])], [(e.empty((b_, w), bt.dtype), ["d0", "d1"])], column)[0]

    def relative(a):
        shifted = e.v(f"arith.subi {a[0]}, {e.v(f'arith.muli {a[1]}, {c_bs} : {pdt}')} : {pdt}")
        return [e.v(f"arith.select {e.v(f'arith.cmpi sge, {a[0]}, {zero} : {pdt}')}, {shifted}, {a[0]} : {pdt}")]

    rel = e.generic(2, [(pos, ["d0", "d1"]), (start, ["d0"])], [(e.empty(pos.dims, pdt), ["d0", "d1"])], relative)[0]
    return view, rel


def _batch_matmul(e: Emitter, a: TV, b: TV, transpose_b: bool = False) -> TV:
    """linalg.batch_matmul: a [N, M, K] x b [N, K, M'] (or [N, M', K] with transpose_b) -> [N, M, M']."""
    ft = a.dtype
    acc = e.filled((a.dims[0], a.dims[1], b.dims[1] if transpose_b else b.dims[2]), ft, 0.0)
    maps = ""
    if transpose_b:
        maps = "indexing_maps = [" + ", ".join(affine_map(4, ex) for ex in (
            ["d0", "d1", "d3"], ["d0", "d2", "d3"], ["d0", "d1", "d2"])) + "] "
    name = e.v(f"linalg.batch_matmul {maps}ins({a.name}, {b.name} : {a.type}, {b.type}) "
               f"outs({acc.name} : {acc.type}) -> {acc.type}", "bmm")
    return TV(name, acc.dims, ft)


def _visible(e: Emitter, s_loop: int, p: str, pos_dtype: str, window: str | None = None) -> str:
    """i1: key index (loop `s_loop`) <= position p, and > p - window given a window constant
    (false for every key when p < 0)."""
    s = e.v(f"arith.index_cast {e.index(s_loop)} : index to {pos_dtype}")
    vis = e.v(f"arith.cmpi sle, {s}, {p} : {pos_dtype}")
    if window is not None:
        lo = e.v(f"arith.subi {p}, {window} : {pos_dtype}")
        vis = e.v(f"arith.andi {vis}, {e.v(f'arith.cmpi sgt, {s}, {lo} : {pos_dtype}')} : i1")
    return vis


def _masked_softmax(e: Emitter, scores: TV, pos: TV, bkgt: tuple, scale: float, window: int,
                    softcap: float) -> TV:
    """softmax(mask(scores)) over S, scores and result [B*KH, G*T, S].

    A static T (decode: T = 1, static-shape buckets) keeps `linalg.softmax` on the
    [B, KH, G, T, S] view, which IREE compiles well there. A dynamic T (prefill, extend)
    gets the softmax as generics (max, exp, sum, divide) on the batch-matmul layout itself:
    `linalg.softmax` with dynamic dims took 81 % of an extend step at 1k keys (about 45 ns a
    score; the generics were 30x faster alone), while at T = 1 the generics made decode
    slower (22 -> 29 ms a batch-1 step) (docs/performance.md).
    """
    b_, kh, g, t_ = bkgt
    if isinstance(t_, int):
        s5 = e.expand(scores, [[0, 1], [2, 3], [4]], (b_, kh, g, t_, scores.dims[2]))
        masked = _mask_scores(e, s5, pos.dtype, lambda a: (a[1], 4), [(pos, ["d0", "d3"])], scale, window, softcap)
        return e.collapse(softmax_last(e, masked), [[0, 1], [2, 3], [4]])

    c_kh, c_t = e.idx(kh), e.dim_value(t_)

    def row_position(a):  # row r is batch r / KH, column c is query c % T
        b = e.v(f"arith.divui {e.index(0)}, {c_kh} : index")
        t = e.v(f"arith.remui {e.index(1)}, {c_t} : index")
        return e.v(f"tensor.extract {pos.name}[{b}, {t}] : {pos.type}"), 2

    masked = _mask_scores(e, scores, pos.dtype, row_position, [], scale, window, softcap)
    return _pinned(e, softmax_rows(e, masked))


def _mask_scores(e: Emitter, scores: TV, pdt: str, position, extra_ins: list, scale: float, window: int = 0,
                 softcap: float = 0.0) -> TV:
    """score * scale (soft-capped: C * tanh(x / C)) where key s is visible to the query, else
    NEG_LARGE. `position(block_args)` gives the query's position and the loop of s."""
    ft = scores.dtype
    n = scores.rank
    out = e.empty(scores.dims, ft)
    c_scale, neg = e.const(scale, ft), e.const(NEG_LARGE, ft)
    c_window = e.const(window, pdt) if window > 0 else None  # constants outside the region
    cap = e.const(softcap, ft) if softcap else None

    def body(a):
        p, s_loop = position(a)
        vis = _visible(e, s_loop, p, pdt, c_window)
        x = e.v(f"arith.mulf {a[0]}, {c_scale} : {ft}")
        if cap is not None:
            th = e.v(f"math.tanh {e.v(f'arith.divf {x}, {cap} : {ft}')} : {ft}")
            x = e.v(f"arith.mulf {th}, {cap} : {ft}")
        return [e.v(f"arith.select {vis}, {x}, {neg} : {ft}")]

    return e.generic(n, [(scores, identity(n)), *extra_ins], [(out, identity(n))], body)[0]


def _pinned(e: Emitter, x: TV) -> TV:
    """`x` behind an optimization barrier, its dynamic dims re-attached (tie_shape).

    With the softmax generics fused into the P.V batch matmul's operand packing, IREE 3.13
    failed to compile dynamic-shape attention ("affine.delinearize_index: no basis element
    may be statically non-positive"); the barrier keeps them apart.
    """
    dyn = [e.dim_value(d) for d in x.dims if not isinstance(d, int)]
    if not dyn:
        return x
    ob = e.v(f"util.optimization_barrier {x.name} : {x.type}", "ob")
    return TV(e.v(f"flow.tensor.tie_shape {ob} : {x.type}{{{', '.join(dyn)}}}", "ts"), x.dims, x.dtype)


def _additive_mask(e: Emitter, pos: TV, dims, ft: str, window: int = 0) -> TV:
    """[B, KH, G, T, S]: 0 where key s is visible to the query, else NEG_LARGE."""
    out = e.empty(dims, ft)
    zero, neg = e.const(0.0, ft), e.const(NEG_LARGE, ft)
    c_window = e.const(window, pos.dtype) if window > 0 else None

    def body(a):
        return [e.v(f"arith.select {_visible(e, 4, a[0], pos.dtype, c_window)}, {zero}, {neg} : {ft}")]

    return e.generic(5, [(pos, ["d0", "d3"])], [(out, identity(5))], body)[0]


def _fused_attention(e: Emitter, q: TV, k: TV, v: TV, mask: TV, scale: float) -> TV:
    """iree_linalg_ext.attention: q [B, KH, M, D], k/v [B, S, KH, D], additive mask [B, KH, M, S]."""
    ft = q.dtype
    out = e.empty(q.dims, ft)
    # loops: d0 batch, d1 kv head, d2 query (m), d3 head dim (k1), d4 key (k2), d5 value dim (n)
    maps = ", ".join(affine_map(6, ex) for ex in (
        ["d0", "d1", "d2", "d3"], ["d0", "d4", "d1", "d3"], ["d0", "d4", "d1", "d5"], [],
        ["d0", "d1", "d2", "d4"], ["d0", "d1", "d2", "d5"]))
    c_scale = e.const(scale, ft)
    name = e.fresh("attn")
    e.emit(f"{name} = iree_linalg_ext.attention <{{indexing_maps = [{maps}]}}> "
           f"ins({q.name}, {k.name}, {v.name}, {c_scale}, {mask.name} : {q.type}, {k.type}, {v.type}, {ft}, "
           f"{mask.type}) outs({out.name} : {out.type}) {{")
    s = e.fresh("a")
    e.lines.append(f"{e.indent}^bb0({s}: {ft}):")
    e.emit(f"  iree_linalg_ext.yield {s} : {ft}")
    e.emit(f"}} -> {out.type}")
    return TV(name, out.dims, ft)
