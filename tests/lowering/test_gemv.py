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
from llmirc.artifacts.params import pack_int4
from llmirc.lowering.gemv import MAX_ROWS, ROW_BLOCK, Kernel, executable_text, fits, pack_weight
from llmirc.targets import resolve
from llmirc.targets.cpu import has_vnni
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

needs_vnni = pytest.mark.skipif(not has_vnni("host"), reason="this CPU has no avx512_vnni (the kernel's targets)")

# (rows, m, k, n, group, bits), rows None: any count (m rows, a multiple of ROW_BLOCK): 4, 2 and 1
# lines a workgroup; row blocks of 1 to 4 and two passes (8 rows); rows 5 (blocks of one);
# groups of 4 to 128; int4 and int8
SHAPES = [(1, 1, 128, 4096, 32, 4), (1, 1, 256, 1024, 128, 8), (2, 2, 64, 512, 16, 4), (3, 3, 96, 192, 32, 8),
          (4, 4, 64, 256, 64, 4), (8, 8, 32, 128, 8, 8), (5, 5, 48, 64, 24, 4), (None, 12, 64, 256, 4, 4),
          (None, 8, 128, 512, 32, 8)]


def test_kernel_blocks():
    for rows in list(range(1, MAX_ROWS + 1)) + [None]:
        for n in (64, 128, 256, 1024, 2048, 11264):
            kern = Kernel(rows, 256, n, 128)
            assert (rows or ROW_BLOCK) % kern.row_block == 0 and kern.row_block * kern.lines <= 4
            assert n % kern.columns == 0 and (n // kern.columns >= 8 or kern.lines == 1)
    assert fits(2048, 11264, 128, 4) and fits(32, 64, 8, 8)
    assert not fits(128, 688, 128, 4) and not fits(344, 128, 86, 8)  # n % 64, group % 4
    assert not fits(128, 128, 32, 2)  # 2-bit weights


def _module(shapes) -> str:
    """@mm_i(x [m, k] f32, w [n/64, k, 64] int4 / int8 blocks as bytes, s [groups, n] f32) -> [m, n]
    f32 per shape."""
    lines = ["module {"]
    for i, (r, m, k, n, g, bits) in enumerate(shapes):
        kern = Kernel(r, k, n, g, bits)
        lines += ["  " + line for line in executable_text(kern, f"@g{i}")]
        xt, wt, st, yt = (tensor_type((m, k), "f32"), tensor_type(kern.byte_dims, "i8"),
                          tensor_type((k // g, n), "f32"), tensor_type((m, n), "f32"))
        lines += [f"  func.func @mm_{i}(%x: {xt}, %w: {wt}, %s: {st}) -> {yt} {{",
                  f"    %m = arith.constant {m} : index"]
        if r is None:  # the operands of a kernel for any row count are dynamic
            xd, yd = tensor_type(("?", k), "f32"), tensor_type(("?", n), "f32")
            lines += [f"    %xd = tensor.cast %x : {xt} to {xd}",
                      f"    %yd = flow.dispatch @g{i}::@g{i}(%xd, %w, %s, %m) : ({xd}{{%m}}, {wt}, {st}, index) -> {yd}{{%m}}",
                      f"    %y = tensor.cast %yd : {yd} to {yt}"]
        else:
            lines.append(f"    %y = flow.dispatch @g{i}::@g{i}(%x, %w, %s, %m) : ({xt}, {wt}, {st}, index) -> {yt}")
        lines += [f"    return %y : {yt}", "  }"]
    return "\n".join(lines + ["}"]) + "\n"


def test_kernel_compiles_for_an_avx512_cpu():
    compile_iree(_module(SHAPES), list(resolve("cpu:sapphirerapids").compile_flags(3)))


@needs_vnni
def test_kernel_against_numpy():
    import iree.runtime as rt

    mod = rt.load_vm_flatbuffer(compile_iree(_module(SHAPES), list(resolve("cpu").compile_flags(3))),
                                driver="local-task")
    rng = np.random.default_rng(0)
    for i, (r, m, k, n, g, bits) in enumerate(SHAPES):
        lim = 1 << (bits - 1)
        w = rng.integers(-lim, lim, (n, k))  # IR [out, in]; the extremes included
        s = rng.uniform(0.5, 2.0, (k // g, n)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        blocks = pack_weight(w)
        stored = pack_int4(blocks) if bits == 4 else blocks.astype(np.int8)  # as the archive writes it
        got = np.asarray(getattr(mod, f"mm_{i}")(x, stored.view(np.int8).reshape(n // 64, k, 64 * bits // 8), s))
        want = x.astype(np.float64) @ (w.T * np.repeat(s.astype(np.float64), g, axis=0))
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0,
                                   err_msg=f"rows {r}, m {m}, k {k}, n {n}, group {g}, int{bits}")


def test_weight_only_decode_takes_the_kernel(tmp_path):
    """On a VNNI target symmetric int4 and int8 artifacts get static-batch decode functions, and
    every decode product (static and dynamic batch) is the kernel's; prefill dequantizes the same
    blocks first. Asymmetric int4 keeps IREE's kernel and a dynamic batch."""
    ckpt = make_checkpoint(tmp_path / "ckpt", CheckpointSpec(layers=1, hidden=64, heads=4, kv_heads=2,
                                                              intermediate=128, vocab=320, max_seq_len=64))
    for kw, bits in ((dict(quantize="int4", group_size=32), 4),
                     (dict(quantize="int4", group_size=32, symmetric=False), None),
                     (dict(quantize="int8"), 8)):
        out = tmp_path / f"{kw['quantize']}{kw.get('symmetric', True)}.mlir"
        compile_checkpoint(CompileOptions(ckpt, out, opt_level=3, target="cpu:sapphirerapids", emit="iree-input",
                                          **kw), progress=None)
        text = out.read_text()
        funcs = dict(re.findall(r"func\.func @(\w+)\(.*?\n(.*?)\n  }\n", text, re.S))
        assert ("decode_b1" in funcs) == bool(bits), kw
        if bits:
            assert f"flow.dispatch @gemv_i{bits}_1x" in funcs["decode_b1"]
            assert f"flow.dispatch @gemv_i{bits}_Dx" in funcs["decode"]
            assert "@gemv" not in funcs["prefill"] and "linalg.matmul" in funcs["prefill"]
            assert re.search(r"#stream.parameter.named<\"model\"::\"[^\"]*\"> : tensor<\d+x64x64xi%d>" % bits, text)
        else:
            assert "@gemv" not in text
