"""Prefill's linears in static row chunks (`prefill_rows`, lowering/ops.py in_row_chunks).

A dynamic row count of an f16/bf16 linear is cut into full chunks with the rows static, then
the rows left as one dynamic-row product; every row must come out as one product computes it,
for row counts on both sides of a chunk boundary, and only prefill/extend functions are cut,
only over token rows ([B, T, K] inputs; not the last-token rows the logits are computed on).
"""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.artifacts.params import encode_param
from llmirc.dialect import Builder, TensorT, make_context
from llmirc.lowering import CPU_FLAGS, compile_iree, lower_to_iree

rt = pytest.importorskip("iree.runtime")

K, N, CHUNK = 64, 48, 32
ROWS = [1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 19]  # around the chunk boundaries


def _linear_module(fname: str, dtype: str, lead: tuple = (1, None)):
    """func @fname(x f32[*lead, K]) -> f32[*lead, N] = linear(x, w (dtype)[N, K], b f32[N])."""
    from iree.compiler import ir
    from iree.compiler.dialects import func

    with make_context(), ir.Location.unknown():
        m = ir.Module.create()
        with ir.InsertionPoint(m.body):
            fn = func.FuncOp(fname, ([ir.Type.parse(str(TensorT((*lead, K), "f32")))],
                                     [ir.Type.parse(str(TensorT((*lead, N), "f32")))]))
            blk = fn.add_entry_block()
            with ir.InsertionPoint(blk):
                b = Builder()
                w = b.weight(name="w", result_types=[TensorT((N, K), dtype)], loc="w")
                bias = b.weight(name="b", result_types=[TensorT((N,), "f32")], loc="b")
                func.ReturnOp([b.linear(blk.arguments[0], w, bias)])
    return m


def _run(text: str, weights: dict[str, np.ndarray], dtype: str):
    device = rt.get_device("local-task")
    inst = rt.VmInstance()
    index = rt.ParameterIndex()
    index.add_buffer("w", encode_param(weights["w"], dtype, False))
    index.add_buffer("b", weights["b"].tobytes())
    main = rt.VmModule.copy_buffer(inst, compile_iree(text, CPU_FLAGS + ["--iree-opt-data-tiling=true"]))
    ctx = rt.VmContext(inst, modules=[rt.create_hal_module(inst, device),
                                      rt.create_io_parameters_module(inst, index.create_provider(scope="model")),
                                      main])
    fn = rt.FunctionInvoker(ctx, device, main.lookup_function(main.function_names[0]))
    return lambda x: np.asarray(fn(x).to_host())


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_prefill_linear_in_row_chunks_equals_one_product(dtype):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((N, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    wide = encode_param(w, dtype, False)  # the weight as the artifact stores it, widened back to f32
    wide = (np.frombuffer(wide, np.float16).astype(np.float32) if dtype == "f16" else
            (np.frombuffer(wide, np.uint16).astype(np.uint32) << 16).view(np.float32) if dtype == "bf16" else
            np.frombuffer(wide, np.float32)).reshape(N, K)
    text = lower_to_iree(_linear_module("prefill", dtype), backend="llvm-cpu", prefill_rows=CHUNK)
    assert "scf.for" in text and f"tensor<{CHUNK}x{K}xf32>" in text
    run = _run(text, {"w": w, "b": bias}, dtype)
    for m in ROWS:
        x = rng.standard_normal((m, K)).astype(np.float32)
        expected = x.astype(np.float64) @ wide.T.astype(np.float64) + bias
        got = run(x[None])[0]
        assert got.shape == (m, N)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5, err_msg=f"{m} rows")


@pytest.mark.parametrize("fname,option,dtype,lead", [("decode", CHUNK, "f16", (1, None)),
                                                     ("prefill", None, "f16", (1, None)),
                                                     ("prefill", CHUNK, "f32", (1, None)),
                                                     ("prefill", CHUNK, "f16", (None,))])
def test_only_narrow_float_token_rows_of_prefill_with_the_option_are_cut(fname, option, dtype, lead):
    """f32 weights keep one product: in the 100M model two 64-row chunks of a 128-token
    prefill read the f32 weights twice and were 1.2x slower, although alone, from cache, the
    chunked f32 product is faster. A [B, K] input (the last tokens' rows, as lm_head in
    prefill) has fewer rows than a chunk and is one product too."""
    text = lower_to_iree(_linear_module(fname, dtype, lead), backend="llvm-cpu", prefill_rows=option)
    assert "scf.for" not in text
