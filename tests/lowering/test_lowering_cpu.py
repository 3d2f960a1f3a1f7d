"""Compiled IREE (llvm-cpu) vs the numpy interpreter, on the same paged llm IR and weights.

One compile per attention strategy (module-scoped fixtures), then prefill and several
decode steps on a batch of rows of different lengths whose block tables interleave
non-contiguous pages. The pool is a device array passed to every call: the module must
update it in place, write only the pages of each row's block table, and send every
padding / out-of-table write to the scratch page 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.dialect import Builder, TensorT, make_context
from llmirc.artifacts.params import encode_param
from llmirc.dialect.context import functions, weight_names, weight_types
from llmirc.dialect.interpreter import run_function
from llmirc.dialect.types import from_mlir
from llmirc.frontend import import_checkpoint
from llmirc.lowering import CPU_FLAGS, compile_iree, lower_to_iree, stored_transposed
from llmirc.pipelines import PassManager, WeightStore, pipeline_for_level

rt = pytest.importorskip("iree.runtime")

BLOCK = 4
NUM_PAGES = 12
# Rows of lengths 11, 3 and 7 (T = 11); pages interleave across rows, 4 and 7 are never used.
LENS = np.array([11, 3, 7], np.int64)
TABLES = np.array([[2, 6, 9, 11, 0],
                   [5, 1, 0, 0, 0],
                   [3, 8, 10, 0, 0]], np.int64)
UNUSED = (4, 7)
DECODE_STEPS = 4
ATOL = 1e-4


class Compiled:
    """A vmfb loaded with its weights as `model`-scope parameters, on the local-task device."""

    def __init__(self, vmfb: bytes, weights: dict[str, np.ndarray]):
        self.device = rt.get_device("local-task")
        inst = rt.VmInstance()
        index = rt.ParameterIndex()
        for name, w in weights.items():
            index.add_buffer(name, np.ascontiguousarray(w).tobytes())
        self.main = rt.VmModule.copy_buffer(inst, vmfb)
        self.ctx = rt.VmContext(inst, modules=[
            rt.create_hal_module(inst, self.device),
            rt.create_io_parameters_module(inst, index.create_provider(scope="model")),
            self.main])

    def fn(self, name: str):
        return rt.FunctionInvoker(self.ctx, self.device, self.main.lookup_function(name))

    def pool(self, host: np.ndarray):
        return rt.asdevicearray(self.device, host.copy())


class Paged:
    """The tiny checkpoint through blockify (+ fusions at -O2), with the weights its IR names."""

    def __init__(self, checkpoint, level: int):
        m = import_checkpoint(checkpoint)
        store = WeightStore.from_arrays(m.weights())
        PassManager(pipeline_for_level(level, block_size=BLOCK), weights=store).run(m.module)
        self.module, self.config = m.module, m.config
        self.weights = {n: store[n] for n in weight_names(m.module)}  # incl. folded (concatenated) ones


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    """-O2, the default pipeline: fused q/k/v and gate/up weights, swiglu epilogues, add+rms_norm."""
    return Paged(tiny_checkpoint, 2)


@pytest.fixture(scope="module")
def model_o0(tiny_checkpoint):
    """-O0: the frontend's plain ops, only made paged."""
    return Paged(tiny_checkpoint, 0)


@pytest.fixture(scope="module")
def decomposed(model):
    return Compiled(compile_iree(lower_to_iree(model.module, attention="decomposed"), CPU_FLAGS), model.weights)


@pytest.fixture(scope="module")
def fused(model_o0):
    return Compiled(compile_iree(lower_to_iree(model_o0.module, attention="fused"), CPU_FLAGS), model_o0.weights)


def _initial_pool(model) -> np.ndarray:
    """Finite noise everywhere, so a stray write and an unmasked read both show."""
    t = from_mlir(functions(model.module)["prefill"].regions[0].blocks[0].arguments[3].type)
    return np.random.default_rng(7).standard_normal(t.pool_shape(NUM_PAGES)).astype(np.float32)


def _tokens(vocab: int) -> np.ndarray:
    tokens = np.random.default_rng(1).integers(3, vocab, (len(LENS), int(LENS.max()))).astype(np.int64)
    for b, n in enumerate(LENS):
        tokens[b, n:] = 0  # padding
    return tokens


def _written_mask(shape, tables: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """[pages, slots] True where rows own positions 0..lens[b]-1."""
    mask = np.zeros((shape[0], shape[3]), bool)
    for b, n in enumerate(lens):
        for p in range(int(n)):
            mask[tables[b, p // BLOCK], p % BLOCK] = True
    return mask


def _check_pool(device_pool, expected: np.ndarray, initial: np.ndarray, lens: np.ndarray) -> None:
    got = np.asarray(device_pool.to_host())
    # every live page matches the interpreter (which writes nothing for padding)...
    np.testing.assert_allclose(got[1:], expected[1:], atol=1e-5, rtol=0)
    # ...and every slot no row owns (other than the scratch page) is bit-identical to before
    untouched = ~_written_mask(got.shape, TABLES, lens)
    untouched[0] = False
    pages, slots = np.nonzero(untouched)
    np.testing.assert_array_equal(got[pages, :, :, slots], initial[pages, :, :, slots])
    for p in UNUSED:
        np.testing.assert_array_equal(got[p], initial[p])


def test_prefill_then_decode_matches_interpreter(model, decomposed):
    weights = model.weights
    prefill, decode = decomposed.fn("prefill"), decomposed.fn("decode")
    initial = _initial_pool(model)
    ref_pool = initial.copy()
    dev_pool = decomposed.pool(initial)
    tokens = _tokens(model.config.vocab_size)

    ref_logits, ref_pool = run_function(model.module, "prefill", [tokens, LENS, TABLES, ref_pool], weights)
    logits, returned = prefill(tokens, LENS, TABLES, dev_pool)
    logits = np.asarray(logits.to_host())
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(logits.argmax(-1), ref_logits.argmax(-1))
    _check_pool(dev_pool, ref_pool, initial, LENS)  # the caller's device array holds the new K/V
    np.testing.assert_array_equal(np.asarray(returned.to_host()), np.asarray(dev_pool.to_host()))

    positions = LENS.copy()
    ref_tok = dev_tok = ref_logits.argmax(-1).astype(np.int64)
    for _ in range(DECODE_STEPS):
        ref_logits, ref_pool = run_function(model.module, "decode", [ref_tok, positions, TABLES, ref_pool], weights)
        logits, _ = decode(dev_tok, positions, TABLES, dev_pool)
        logits = np.asarray(logits.to_host())
        np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=0)
        ref_tok, dev_tok = ref_logits.argmax(-1).astype(np.int64), logits.argmax(-1).astype(np.int64)
        np.testing.assert_array_equal(dev_tok, ref_tok)  # greedy tokens agree
        positions = positions + 1
        _check_pool(dev_pool, ref_pool, initial, positions)


def test_dynamic_batch_single_token(model, decomposed):
    weights = model.weights
    """B=1, T=1 after other shapes: every dim is dynamic."""
    initial = _initial_pool(model)
    args = [np.array([[5]], np.int64), np.array([1], np.int64), np.array([[4]], np.int64)]
    ref_logits, ref_pool = run_function(model.module, "prefill", args + [initial.copy()], weights)
    dev_pool = decomposed.pool(initial)
    logits, _ = decomposed.fn("prefill")(*args, dev_pool)
    np.testing.assert_allclose(np.asarray(logits.to_host()), ref_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(dev_pool.to_host())[1:], ref_pool[1:], atol=1e-5, rtol=0)


def test_bad_destinations_go_to_scratch_page(model, decomposed):
    """Padding, positions past the table and page numbers outside the pool never write live pages."""
    initial = _initial_pool(model)
    dev_pool = decomposed.pool(initial)
    tables = np.array([[NUM_PAGES + 5, 0], [-3, 0], [2, 0], [6, 0]], np.int64)
    positions = np.array([1, 0, 2 * BLOCK + 3, 2], np.int64)  # row 2 is past its 2-page table
    logits, _ = decomposed.fn("decode")(np.array([7, 8, 9, 10], np.int64), positions, tables, dev_pool)
    assert np.isfinite(np.asarray(logits.to_host())).all()
    got = np.asarray(dev_pool.to_host())
    changed = {int(p) for p in np.nonzero((got != initial).reshape(NUM_PAGES, -1).any(1))[0]}
    assert changed == {0, 6}, changed  # only row 3 (page 6, slot 2) had a real destination
    assert (got[6, :, :, 2] != initial[6, :, :, 2]).all()
    np.testing.assert_array_equal(np.delete(got[6], 2, axis=2), np.delete(initial[6], 2, axis=2))


def test_fused_attention_matches_decomposed(model, model_o0, decomposed, fused):
    """fused (on -O0 IR) vs decomposed (on -O2 IR) vs the interpreter: same logits and pool."""
    tokens = _tokens(model.config.vocab_size)
    initial = _initial_pool(model)
    ref_logits, ref_pool = run_function(model_o0.module, "prefill", [tokens, LENS, TABLES, initial.copy()],
                                        model_o0.weights)
    pools = [decomposed.pool(initial), fused.pool(initial)]
    outs = []
    for c, pool in zip((decomposed, fused), pools):
        logits, _ = c.fn("prefill")(tokens, LENS, TABLES, pool)
        step = [np.asarray(logits.to_host())]
        tok, positions = step[0].argmax(-1).astype(np.int64), LENS.copy()
        for _ in range(2):
            logits, _ = c.fn("decode")(tok, positions, TABLES, pool)
            step.append(np.asarray(logits.to_host()))
            tok, positions = step[-1].argmax(-1).astype(np.int64), positions + 1
        outs.append(step)
    np.testing.assert_allclose(outs[1][0], ref_logits, atol=ATOL, rtol=0)
    for a, b in zip(*outs):
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)
        np.testing.assert_array_equal(a.argmax(-1), b.argmax(-1))
    np.testing.assert_allclose(np.asarray(pools[1].to_host())[1:], np.asarray(pools[0].to_host())[1:],
                               atol=1e-5, rtol=0)


# ---- ops the Llama frontend does not use (quantization, collectives, gelu, ...) and
# ---- fusion ops, on shapes the -O2 model does not have (activations concatenated, biases)

def _ops_module():
    from iree.compiler import ir
    from iree.compiler.dialects import func

    ctx = make_context()
    f32 = "f32"
    with ctx, ir.Location.unknown():
        m = ir.Module.create()
        with ir.InsertionPoint(m.body):
            args = [TensorT((None, 3, 32), f32), TensorT((None,), "i64")]
            res = [TensorT((None, 3, 16), f32), TensorT((None, 3, 16), f32), TensorT((None, 3, 32), f32),
                   TensorT((None, 3), "i64"), TensorT((None, 3, 16), f32), TensorT((16, 32), f32),
                   TensorT((None, 3, 32), f32), TensorT((None, 16), f32), TensorT((3, 64), f32),
                   TensorT((3, 32), f32), TensorT((None, 48), f32), TensorT((None, 96), f32),
                   TensorT((None, 3, 40), f32), TensorT((None, 3, 8), f32), TensorT((None, 3, 16), f32),
                   TensorT((None, 3, 32), f32), TensorT((None, 3, 32), f32),
                   TensorT((None, 3, 32), f32), TensorT((None, 3, 32), f32), TensorT((None, 3, 8), f32),
                   TensorT((None, 3, 8), f32)]
            fn = func.FuncOp("ops", ([ir.Type.parse(str(t)) for t in args], [ir.Type.parse(str(t)) for t in res]))
            blk = fn.add_entry_block()
            with ir.InsertionPoint(blk):
                b = Builder()
                x, ids = blk.arguments

                def w(name, shape, dtype=f32):
                    return b.weight(name=name, result_types=[TensorT(shape, dtype)], loc=name)

                q, s = w("q", (16, 32), "i8"), w("s", (16, 4))
                func.ReturnOp([
                    b.gelu(b.linear(x, w("w", (16, 32)), bias=w("bias", (16,)))),
                    b.gelu(b.matmul(x, w("mm", (32, 16))), approximate="tanh"),
                    b.softmax(b.layer_norm(x, w("ln_w", (32,)), bias=w("ln_b", (32,)), eps=1e-5)),
                    b.argmax(x),
                    b.quantized_matmul(x, q, s, zero_points=w("z", (16, 4), "i8"), group_size=8, bits=8),
                    b.dequantize(q, s, group_size=8, bits=8),
                    b.add(b.mul(x, w("ln_w", (32,))), b.silu(x)),
                    b.quantized_matmul(b.embedding(ids, w("emb", (10, 32))), q, s, group_size=8, bits=4),
                    b.all_gather(w("sh", (2, 3, 32)), dim=1, num_shards=2),
                    b.all_reduce(w("sh", (2, 3, 32)), num_shards=2),
                    b.reshape(b.sharded_linear(x, w("w", (16, 32)), shard_dim=1, num_shards=2), shape=[0, 48]),
                    b.reshape(x, shape=[0, 96]),
                    b.slice(b.concat(x, b.gelu(x), axis=-1), axis=2, start=20, size=40),
                    b.fused_linear(x, w("w", (16, 32)), activation="swiglu"),
                    b.fused_linear(x, w("w", (16, 32)), bias=w("bias", (16,)), activation="gelu_tanh"),
                    *b.add_rms_norm(x, b.silu(x), w("ln_w", (32,)), eps=1e-5),
                    b.scale(x, factor=5.5), b.softcap(b.scale(x, factor=4.0), cap=3.0),
                    b.fused_linear(x, w("w", (16, 32)), activation="geglu"),
                    b.fused_linear(x, w("w", (16, 32)), activation="geglu_tanh"),
                ])
    return m


def test_other_ops_match_interpreter():
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((16, 32), dtype=np.float32), "bias": rng.standard_normal(16, dtype=np.float32),
        "ln_w": rng.standard_normal(32, dtype=np.float32), "ln_b": rng.standard_normal(32, dtype=np.float32),
        "mm": rng.standard_normal((32, 16), dtype=np.float32),
        "q": rng.integers(-128, 128, (16, 32)).astype(np.int8), "s": (rng.random((16, 4)) * 0.01).astype(np.float32),
        "z": rng.integers(-5, 5, (16, 4)).astype(np.int8), "sh": rng.standard_normal((2, 3, 32), dtype=np.float32),
        "emb": rng.standard_normal((10, 32), dtype=np.float32)}
    module = _ops_module()
    x = rng.standard_normal((5, 3, 32), dtype=np.float32)
    ids = np.array([1, 3, 9, 0, 2], np.int64)
    expected = run_function(module, "ops", [x, ids], weights)
    # the archive's encoding: quantized_matmul's q/s/z are stored [in, out] (lowering/quantized.py)
    types, transposed = weight_types(module), stored_transposed(module)
    params = {n: encode_param(w, types[n].dtype, n in transposed) for n, w in weights.items()}
    c = Compiled(compile_iree(lower_to_iree(module), CPU_FLAGS), params)
    got = c.fn("ops")(x, ids)
    for i, (g, e) in enumerate(zip(got, expected)):
        g = np.asarray(g.to_host())
        assert g.shape == e.shape and g.dtype == e.dtype, (i, g.shape, e.shape, g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, atol=1e-5 * max(1.0, float(np.abs(e).max())), rtol=0, err_msg=f"result {i}")


@pytest.mark.parametrize("strategy", ["decomposed", "fused"])
def test_sliding_window_and_softcap_match_interpreter(tiny_checkpoint, strategy):
    """paged_attention with window 3 and softcap 1.5 (fused falls back to decomposed for the
    cap): compiled prefill + decode logits equal the interpreter's. Decode reads only the
    pages inside the window: pages wholly before it hold NaN in the compiled pool (a NaN
    value row read with probability 0 still makes NaN), and the logits do not change."""
    from iree.compiler import ir

    m = Paged(tiny_checkpoint, 0)
    with m.module.context, ir.Location.unknown():
        for f in functions(m.module).values():
            for op in f.regions[0].blocks[0].operations:
                if op.operation.name == "llm.paged_attention":
                    op.operation.attributes["window"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64), 3)
                    op.operation.attributes["softcap"] = ir.FloatAttr.get(ir.F32Type.get(), 1.5)
    compiled = Compiled(compile_iree(lower_to_iree(m.module, attention=strategy), CPU_FLAGS), m.weights)
    initial = _initial_pool(m)
    ref_pool, dev_pool = initial.copy(), compiled.pool(initial)
    tokens = _tokens(m.config.vocab_size)
    ref, ref_pool = run_function(m.module, "prefill", [tokens, LENS, TABLES, ref_pool], m.weights)
    got, _ = compiled.fn("prefill")(tokens, LENS, TABLES, dev_pool)
    np.testing.assert_allclose(np.asarray(got.to_host()), ref, atol=ATOL, rtol=0)
    nxt = ref.argmax(-1).astype(np.int64)
    ref, _ = run_function(m.module, "decode", [nxt, LENS, TABLES, ref_pool], m.weights)
    got, _ = compiled.fn("decode")(nxt, LENS, TABLES, dev_pool)
    np.testing.assert_allclose(np.asarray(got.to_host()), ref, atol=ATOL, rtol=0)
    # decoding at position LENS[b] sees LENS[b] - 2 .. LENS[b]: rows 0 and 2 have pages wholly before it
    outside = [int(TABLES[b, c]) for b, n in enumerate(LENS) for c in range(int(n) // BLOCK)
               if (c + 1) * BLOCK <= n - 2]
    assert sorted(outside) == [2, 3, 6]
    poisoned = ref_pool.copy()
    poisoned[outside] = np.nan
    got, _ = compiled.fn("decode")(nxt, LENS, TABLES, compiled.pool(poisoned))
    np.testing.assert_allclose(np.asarray(got.to_host()), ref, atol=ATOL, rtol=0)
    full = Paged(tiny_checkpoint, 0)  # the window and cap change the answer
    plain, _ = run_function(full.module, "prefill", [tokens, LENS, TABLES, initial.copy()], full.weights)
    assert np.abs(plain - ref).max() > 1e-2


def _w4a16_module(rows: int | None):
    from iree.compiler import ir
    from iree.compiler.dialects import func

    ctx = make_context()
    with ctx, ir.Location.unknown():
        m = ir.Module.create()
        with ir.InsertionPoint(m.body):
            fn = func.FuncOp("mm", ([ir.Type.parse(str(TensorT((rows, 64), "f32")))],
                                    [ir.Type.parse(str(TensorT((rows, 32), "f32")))]))
            blk = fn.add_entry_block()
            with ir.InsertionPoint(blk):
                b = Builder()
                q = b.weight(name="q", result_types=[TensorT((32, 64), "i4")], loc="q")
                s = b.weight(name="s", result_types=[TensorT((32, 2), "f32")], loc="s")
                func.ReturnOp([b.quantized_matmul(blk.arguments[0], q, s, group_size=32, bits=4, act_bits=16)])
    return m


@pytest.mark.parametrize("rows", [1, 4, None], ids=["b1-integer", "b4-integer", "dynamic-int16-grid"])
def test_w4a16_follows_the_int16_activations(rows):
    """w4a16 on llvm-cpu: a static batch of at most 8 rows takes the int16 x uint4 integer
    product, any other the weight-only kernel on the int16 grid. Both must equal the
    interpreter's int16 rows; an input with one large channel (its int16 step, 0.09, rounds the
    others visibly) makes float activations a clearly different answer."""
    rng = np.random.default_rng(3)
    weights = {"q": rng.integers(-8, 8, (32, 64)).astype(np.int8), "s": (rng.random((32, 2)) * 0.1).astype(np.float32)}
    x = rng.standard_normal((rows or 3, 64), dtype=np.float32)
    x[:, 5] = 3000.0
    module = _w4a16_module(rows)
    expected = run_function(module, "mm", [x], weights)[0]
    types, transposed = weight_types(module), stored_transposed(module)
    params = {n: encode_param(w, types[n].dtype, n in transposed) for n, w in weights.items()}
    text = lower_to_iree(module, backend="llvm-cpu")
    assert ("i16 to i32" in text) == (rows is not None)  # the integer product only at a static batch
    got = np.asarray(Compiled(compile_iree(text, CPU_FLAGS + ["--iree-opt-data-tiling=true"]), params)
                     .fn("mm")(x).to_host())
    atol = 3e-6 * float(np.abs(expected).max())  # some f32 ulps of the outputs (|y| ~ 2000)
    np.testing.assert_allclose(got, expected, atol=atol, rtol=0)
    from llmirc.dialect.interpreter import IMPLS
    float_acts = IMPLS["quantized_matmul"]({"group_size": 32, "bits": 4, "act_bits": 0}, x, weights["q"],
                                           weights["s"])
    assert np.abs(float_acts - expected).max() > 10 * atol
