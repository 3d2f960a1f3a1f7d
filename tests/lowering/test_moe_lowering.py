"""The mixture-of-experts ops compiled for llvm-cpu against the interpreter, one module: the
router (top-2 of 4, and top-3 without renormalisation), the float expert FFN (dense lowering),
the quantized one (int8 with zero points, symmetric int4, grouped and one group per row), and the
gathered expert FFN of a static single token (lowering/moe.py: use_gathered)."""

from __future__ import annotations

import numpy as np
from iree.compiler import ir
from iree.compiler.dialects import func

from llmirc.artifacts.params import encode_param
from llmirc.dialect import Builder, TensorT, make_context
from llmirc.dialect.interpreter import IMPLS, run_function
from llmirc.lowering import CPU_FLAGS, compile_iree, lower_to_iree
from tests.lowering.test_lowering_cpu import Compiled

E, H, INTER = 4, 32, 16


def _module() -> ir.Module:
    f32 = "f32"
    with make_context(), ir.Location.unknown():
        m = ir.Module.create()
        with ir.InsertionPoint(m.body):
            x_t = TensorT((None, 3, H), f32)
            res = [TensorT((None, 3, 2), f32), TensorT((None, 3, 2), "i64"), TensorT((None, 3, 3), f32),
                   TensorT((None, 3, 3), "i64"), x_t, x_t, x_t, x_t]
            fn = func.FuncOp("moe", ([ir.Type.parse(str(x_t))], [ir.Type.parse(str(t)) for t in res]))
            blk = fn.add_entry_block()
            with ir.InsertionPoint(blk):
                b = Builder()
                (x,) = blk.arguments

                def w(name, shape, dtype=f32):
                    return b.weight(name=name, result_types=[TensorT(shape, dtype)], loc=name)

                router = w("router", (E, H))
                wts, idx = b.moe_router(x, router, top_k=2)
                wts3, idx3 = b.moe_router(x, router, top_k=3, normalize=False)
                gu, down = w("gate_up", (E, 2 * INTER, H)), w("down", (E, H, INTER))
                q8 = [w("gq8", (E, 2 * INTER, H), "i8"), w("gs8", (E, 2 * INTER, H // 8)),
                      w("dq8", (E, H, INTER), "i8"), w("ds8", (E, H, INTER // 8))]
                z8 = dict(gate_up_zero_points=w("gz8", (E, 2 * INTER, H // 8), "i8"),
                          down_zero_points=w("dz8", (E, H, INTER // 8), "i8"))
                q4 = [w("gq4", (E, 2 * INTER, H), "i4"), w("gs4", (E, 2 * INTER, 1)),
                      w("dq4", (E, H, INTER), "i4"), w("ds4", (E, H, 2))]
                func.ReturnOp([
                    wts, idx, wts3, idx3,
                    b.moe_ffn(x, wts, idx, gu, down),
                    b.moe_ffn(x, wts3, idx3, gu, down, activation="gelu_tanh"),
                    b.quantized_moe_ffn(x, wts, idx, *q8, **z8, bits=8, gate_up_group_size=8, down_group_size=8),
                    b.quantized_moe_ffn(x, wts, idx, *q4, bits=4, gate_up_group_size=H, down_group_size=8),
                ])
            # one token, static: 1 x 2 routed slots < 4 experts, the gathered lowering
            one = TensorT((1, 1, H), f32)
            fn = func.FuncOp("moe_one", ([ir.Type.parse(str(one))], [ir.Type.parse(str(one))] * 2))
            blk = fn.add_entry_block()
            with ir.InsertionPoint(blk):
                b = Builder()
                (x,) = blk.arguments
                wts, idx = b.moe_router(x, w("router", (E, H)), top_k=2)
                gu, down = w("gate_up", (E, 2 * INTER, H)), w("down", (E, H, INTER))
                func.ReturnOp([b.moe_ffn(x, wts, idx, gu, down), b.moe_ffn(x, wts, idx, gu, down, activation="gelu")])
    return m


def _quantized(w: np.ndarray, bits: int, g: int, symmetric: bool) -> tuple[np.ndarray, ...]:
    e, n, k = w.shape
    q, s, z = IMPLS["quantize"]({"bits": bits, "group_size": g, "symmetric": symmetric}, w.reshape(e * n, k))
    return q.reshape(e, n, k), s.reshape(e, n, -1), z.reshape(e, n, -1)


def test_moe_ops_match_interpreter():
    rng = np.random.default_rng(0)
    gate_up = rng.standard_normal((E, 2 * INTER, H), dtype=np.float32) * 0.3
    down = rng.standard_normal((E, H, INTER), dtype=np.float32) * 0.3
    weights = {"router": rng.standard_normal((E, H), dtype=np.float32), "gate_up": gate_up, "down": down}
    for bits, (gg, dg), sym in ((8, (8, 8), False), (4, (H, 8), True)):
        (gq, gs, gz), (dq, ds, dz) = _quantized(gate_up, bits, gg, sym), _quantized(down, bits, dg, sym)
        weights |= {f"gq{bits}": gq, f"gs{bits}": gs, f"dq{bits}": dq, f"ds{bits}": ds}
        if not sym:
            weights |= {f"gz{bits}": gz, f"dz{bits}": dz}
    module = _module()
    x = rng.standard_normal((5, 3, H), dtype=np.float32)
    expected = run_function(module, "moe", [x], weights)
    types = {"gq4": "i4", "dq4": "i4"} | {n: "i8" for n in ("gq8", "dq8", "gz8", "dz8")}
    params = {n: encode_param(v, types.get(n, "f32")) for n, v in weights.items()}
    compiled = Compiled(compile_iree(lower_to_iree(module), CPU_FLAGS), params)
    got = list(compiled.fn("moe")(x))
    for row in range(2):  # the gathered lowering, token by token
        one = x[row: row + 1, :1]
        expected += run_function(module, "moe_one", [one], weights)
        got += list(compiled.fn("moe_one")(one))
    for i, (g, e) in enumerate(zip(got, expected)):
        g = np.asarray(g.to_host())
        assert g.shape == e.shape and g.dtype == e.dtype, (i, g.shape, e.shape, g.dtype, e.dtype)
        if e.dtype == np.int64:
            np.testing.assert_array_equal(g, e, err_msg=f"result {i}")
        else:
            np.testing.assert_allclose(g, e, atol=1e-5 * max(1.0, float(np.abs(e).max())), rtol=0,
                                       err_msg=f"result {i}")
    # the routing really picks different experts per token, and top-3 weights are unnormalised
    assert len(np.unique(expected[1][..., 0])) > 1 and np.all(expected[2].sum(-1) < 1.0)
