"""The weight-only int4 decode kernel (llmirc/lowering/gemv.py) against numpy, and where the
lowering uses it.

The kernel runs on any x86 CPU with AVX-512; the targets that take it are the `vnni` ones, so
its runs are skipped (with that reason) on a CPU without avx512_vnni, and it is always
cross-compiled for cpu:sapphirerapids.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.lowering import compile_iree
from llmirc.lowering.emitter import tensor_type
from llmirc.lowering.gemv import MAX_ROWS, Kernel, executable_text, fits
from llmirc.targets import resolve
from llmirc.targets.cpu import has_vnni
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

needs_vnni = pytest.mark.skipif(not has_vnni("host"), reason="this CPU has no avx512_vnni (the kernel's targets)")

# (rows, k, n, group): 4, 2 and 1 lines a workgroup; row blocks of 1 to 4 and two passes (8
# rows); rows 5 (blocks of one); groups of 8 to 128; k below the prefetch distance
SHAPES = [(1, 128, 4096, 32), (1, 256, 1024, 128), (2, 64, 512, 16), (3, 96, 192, 32), (4, 64, 256, 64),
          (8, 32, 128, 8), (5, 48, 64, 24)]


def test_kernel_blocks():
    for rows in range(1, MAX_ROWS + 1):
        for n in (64, 128, 256, 1024, 2048, 11264):
            kern = Kernel(rows, 256, n, 128)
            assert rows % kern.row_block == 0 and kern.row_block * kern.lines <= 4
            assert n % kern.columns == 0 and (n // kern.columns >= 8 or kern.lines == 1)
    assert fits(1, 2048, 11264, 128) and fits(8, 32, 64, 8)
    assert not fits(None, 2048, 2048, 128) and not fits(9, 64, 64, 32)  # dynamic or too many rows
    assert not fits(1, 128, 688, 128) and not fits(1, 344, 128, 86)  # n % 64, group % 4


def _module(shapes) -> str:
    """@mm_i(x [rows, k] f32, w bytes [k, n/2], s [groups, n] f32) -> [rows, n] f32 per shape."""
    lines = ["module {"]
    for i, (r, k, n, g) in enumerate(shapes):
        lines += ["  " + line for line in executable_text(Kernel(r, k, n, g), f"@g{i}")]
        xt, wt, st, yt = (tensor_type((r, k), "f32"), tensor_type((k, n // 2), "i8"),
                          tensor_type((k // g, n), "f32"), tensor_type((r, n), "f32"))
        lines += [f"  func.func @mm_{i}(%x: {xt}, %w: {wt}, %s: {st}) -> {yt} {{",
                  f"    %y = flow.dispatch @g{i}::@g{i}(%x, %w, %s) : ({xt}, {wt}, {st}) -> {yt}",
                  f"    return %y : {yt}", "  }"]
    return "\n".join(lines + ["}"]) + "\n"


def test_kernel_compiles_for_an_avx512_cpu():
    compile_iree(_module(SHAPES), list(resolve("cpu:sapphirerapids").compile_flags(3)))


@needs_vnni
def test_kernel_against_numpy():
    import iree.runtime as rt

    mod = rt.load_vm_flatbuffer(compile_iree(_module(SHAPES), list(resolve("cpu").compile_flags(3))),
                                driver="local-task")
    rng = np.random.default_rng(0)
    for i, (r, k, n, g) in enumerate(SHAPES):
        q = rng.integers(-8, 8, (k, n))  # -8 and 7 included
        s = rng.uniform(0.5, 2.0, (k // g, n)).astype(np.float32)
        x = rng.standard_normal((r, k)).astype(np.float32)
        packed = ((q[:, 0::2] & 15) | ((q[:, 1::2] & 15) << 4)).astype(np.uint8)  # column 2j low, 2j + 1 high
        got = np.asarray(getattr(mod, f"mm_{i}")(x, packed.view(np.int8), s))
        want = x.astype(np.float64) @ (q * np.repeat(s.astype(np.float64), g, axis=0))
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0,
                                   err_msg=f"rows {r}, k {k}, n {n}, group {g}")


def test_symmetric_int4_decode_takes_the_kernel(tmp_path):
    """On a VNNI target a symmetric int4 artifact gets static-batch decode functions whose
    products are the kernel's (prefill keeps IREE's); asymmetric int4 and int8 do not."""
    ckpt = make_checkpoint(tmp_path / "ckpt", CheckpointSpec(layers=1, hidden=64, heads=4, kv_heads=2,
                                                              intermediate=128, vocab=320, max_seq_len=64))
    for kw, takes in ((dict(quantize="int4", group_size=32), True),
                      (dict(quantize="int4", group_size=32, symmetric=False), False),
                      (dict(quantize="int8"), False)):
        out = tmp_path / f"{kw['quantize']}{kw.get('symmetric', True)}.mlir"
        compile_checkpoint(CompileOptions(ckpt, out, opt_level=3, target="cpu:sapphirerapids", emit="iree-input",
                                          **kw), progress=None)
        text = out.read_text()
        funcs = dict(re.findall(r"func\.func @(\w+)\(.*?\n(.*?)\n  }\n", text, re.S))
        assert ("decode_b1" in funcs) == takes, kw
        if takes:
            assert "flow.dispatch @gemv_i4_1x" in funcs["decode_b1"]
            assert "@gemv" not in funcs["prefill"] and "@gemv" not in funcs["decode"]
        else:
            assert "@gemv" not in text
