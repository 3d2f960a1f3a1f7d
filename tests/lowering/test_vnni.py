"""The AVX512-VNNI w8a8 and w4a8 products (llmirc/lowering/vnni.py): against numpy (w8a8's
int32 product exact; w4a8's f32 result to rounding, its int32 group sums exact), and in a
compiled w8a8 / w4a8 model (prefill; decode at batch 1, 4 and 5) against the interpreter.

Running VNNI code needs a CPU that has it; on one without, the kernels are still compiled
for a VNNI CPU (cpu:sapphirerapids) and the lowering's structure is checked, and the runs
are skipped with that reason.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.dialect.context import functions
from llmirc.dialect.interpreter import act_quantize_rows, empty_page_pool, run_function
from llmirc.dialect.types import from_mlir
from llmirc.frontend import import_checkpoint
from llmirc.lowering import compile_iree
from llmirc.lowering.emitter import tensor_type
from llmirc.lowering.vnni import (FEW_ROWS, Kernel, executable_text, int4_executable_text, int4_plan,
                                  pack_int4_weight, pack_scales, pack_weight, plan)
from llmirc.pipelines import PassManager, QuantConfig, pipeline_for_level
from llmirc.runtime import Engine
from llmirc.targets import resolve
from llmirc.targets.cpu import has_vnni
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

HOST_VNNI = has_vnni("host")
needs_vnni = pytest.mark.skipif(not HOST_VNNI, reason="this CPU has no avx512_vnni to run the kernel on")

# (rows of the plan, k, n, rows to run): few static rows with every chain count (4, 2, 1), a
# tile count that is not a multiple of 16; dynamic rows in 4-row blocks of 4, 2 and 1 tiles
SHAPES = [(1, 96, 48, 1), (2, 64, 256, 2), (3, 32, 80, 3), (4, 128, 32, 4), (8, 48, 512, 8),
          (None, 64, 256, 12), (None, 32, 96, 4), (None, 48, 80, 8), (12, 64, 320, 12)]


def test_kernel_plans():
    for rows in list(range(1, FEW_ROWS + 2)) + [None, "%d3"]:
        for n in (16, 48, 256, 320, 5632, 32000):
            kern = plan(rows, 256, n)
            assert kern.n == n and kern.k == 256 and kern.blocks * kern.tiles * 16 == n
            per = kern.blocks_per_workgroup
            assert kern.blocks % per == 0 and 1 <= per <= 16 and kern.blocks // per >= min(kern.blocks, 8)
            if isinstance(rows, int) and rows <= FEW_ROWS:  # one block of all rows, >= 4 accumulators
                assert (kern.rows, kern.tiles) == (rows, 1)
                assert kern.chains * rows >= 4 and (kern.chains - 1) * rows < 4
            else:
                assert (kern.rows, kern.chains) == (4, 1) and kern.tiles == (4 if n % 64 == 0 else 2 if n % 32 == 0 else 1)
    for n, k in ((40, 64), (64, 40), (64, 8)):
        with pytest.raises(ValueError, match="multiples of 16"):
            plan(1, k, n)


def _kernels_module(shapes) -> str:
    """@mm_i(x [m, k] u8-as-i8, w packed) -> [m, n] i32 for each shape."""
    lines = ["module {"]
    for i, (r, k, n, m) in enumerate(shapes):
        kern = plan(r, k, n)
        assert m % kern.rows == 0
        lines += ["  " + line for line in executable_text(kern, f"@k{i}")]
        xt, yt = tensor_type((m, k), "i8"), tensor_type((m, n), "i32")
        dx, dy = tensor_type(("?", k), "i8"), tensor_type(("?", n), "i32")
        lines += [f"  func.func @mm_{i}(%x: {xt}, %w: {kern.packed_type}) -> {yt} {{",
                  f"    %m = arith.constant {m} : index",
                  f"    %xd = tensor.cast %x : {xt} to {dx}",
                  f"    %yd = flow.dispatch @k{i}::@k{i}(%xd, %w, %m) : ({dx}{{%m}}, {kern.packed_type}, index) -> {dy}{{%m}}",
                  f"    %y = tensor.cast %yd : {dy} to {yt}",
                  f"    return %y : {yt}", "  }"]
    return "\n".join(lines + ["}"]) + "\n"


def _packed(w: np.ndarray) -> np.ndarray:
    """numpy's own [n, k] -> [n/16, k/4, 64] (16 columns x 4 in-features a 64-byte vector)."""
    n, k = w.shape
    return np.stack([np.stack([w[16 * t:16 * t + 16, 4 * j:4 * j + 4].reshape(-1) for j in range(k // 4)])
                     for t in range(n // 16)])


def test_pack_weight():
    w = np.random.default_rng(1).integers(-128, 128, (48, 32)).astype(np.int8)
    np.testing.assert_array_equal(pack_weight(w), _packed(w))


def test_kernels_compile_for_a_vnni_cpu():
    """Compiles wherever the tests run (a cross build), VNNI in this CPU or not."""
    compile_iree(_kernels_module(SHAPES), list(resolve("cpu:sapphirerapids").compile_flags(3)))


@needs_vnni
def test_kernels_exact_against_numpy():
    import iree.runtime as rt

    vmfb = compile_iree(_kernels_module(SHAPES), list(resolve("cpu").compile_flags(3)))
    mod = rt.load_vm_flatbuffer(vmfb, driver="local-task")
    rng = np.random.default_rng(0)
    for i, (r, k, n, m) in enumerate(SHAPES):
        xu = rng.integers(0, 256, (m, k)).astype(np.uint8)  # the u8 operand, any byte
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)  # -128 too
        got = np.asarray(getattr(mod, f"mm_{i}")(xu.view(np.int8), _packed(w)))
        want = xu.astype(np.int64) @ w.astype(np.int64).T
        np.testing.assert_array_equal(got, want, err_msg=f"plan rows {r}, k {k}, n {n}, m {m}")


# w4a8 (rows of the plan, k, n, group, rows to run): few static rows with two chains (1-3) and
# one (4-8), groups of 8 to 128, a dynamic row count in 4-row blocks of 2 tiles and of 1 (n / 16 odd)
INT4_SHAPES = [(1, 64, 48, 32, 1), (3, 128, 64, 8, 3), (4, 256, 32, 128, 4), (8, 64, 64, 16, 8),
               (None, 128, 96, 32, 12), (None, 64, 48, 64, 5)]


def test_int4_plans():
    for rows in list(range(1, FEW_ROWS + 2)) + [None]:
        for n in (16, 48, 256, 5632):
            kern = int4_plan(rows, 256, n, 32)
            assert kern.blocks * kern.tiles * 16 == n and kern.groups == 8
            if isinstance(rows, int) and rows <= FEW_ROWS:
                assert (kern.rows, kern.tiles, kern.chains) == (rows, 1, 2 if rows < 4 else 1)
            else:
                assert (kern.rows, kern.chains, kern.tiles) == (4, 1, 2 if n % 32 == 0 else 1)
    for n, k, g in ((40, 64, 32), (64, 64, 12), (64, 96, 64)):
        with pytest.raises(ValueError, match="w4a8 VNNI product"):
            int4_plan(1, k, n, g)


def _int4_packed(q: np.ndarray) -> np.ndarray:
    """numpy's own [n, k] int4 -> [n/16, k/8, 64] bytes: for tile t and in-features 8j..8j+7,
    byte 4 * lane + p = (q + 8)[16t + lane, 8j + p] | (q + 8)[16t + lane, 8j + 4 + p] << 4."""
    n, k = q.shape
    u = q.astype(np.int16) + 8
    out = np.zeros((n // 16, k // 8, 64), np.uint8)
    for t in range(n // 16):
        for j in range(k // 8):
            for lane in range(16):
                for p in range(4):
                    out[t, j, 4 * lane + p] = u[16 * t + lane, 8 * j + p] | (u[16 * t + lane, 8 * j + 4 + p] << 4)
    return out.view(np.int8)


def test_pack_int4_weight_and_scales():
    rng = np.random.default_rng(2)
    q = rng.integers(-8, 8, (32, 24)).astype(np.int8)
    np.testing.assert_array_equal(pack_int4_weight(q), _int4_packed(q))
    s = rng.random((32, 3)).astype(np.float32)
    np.testing.assert_array_equal(pack_scales(s), np.stack([s[16 * t:16 * t + 16].T for t in range(2)]))


def _int4_kernels(shapes) -> list:
    """The plan's kernel for each shape, and for a fused one its unfused twin as well."""
    kerns = []
    for r, k, n, g, m in shapes:
        kern = int4_plan(r, k, n, g)
        kerns += [(kern, m)] + ([(replace(kern, fused=False), m)] if kern.fused else [])
    return kerns


def _int4_kernels_module(kerns) -> str:
    """@mm4_i(xq [m, k], xs, xc [m, groups] -- for a fused kernel x [m, k] f32 alone --, w packed,
    s packed) -> [m, n] f32 for each (kernel, m)."""
    lines = ["module {"]
    for i, (kern, m) in enumerate(kerns):
        k, n, g = kern.k, kern.n, kern.group
        lines += ["  " + line for line in int4_executable_text(kern, f"@q{i}")]
        ins = [((m, k), "f32")] if kern.fused else [((m, k), "i8"), ((m, k // g), "f32"), ((m, k // g), "i32")]
        ts, ds = [tensor_type(d, t) for d, t in ins], [tensor_type(("?", d[1]), t) for d, t in ins]
        yt, dy = tensor_type((m, n), "f32"), tensor_type(("?", n), "f32")
        args = ", ".join(f"%x{j}: {t}" for j, t in enumerate(ts))
        lines += [f"  func.func @mm4_{i}({args}, %w: {kern.packed_type}, %s: {kern.scales_type}) -> {yt} {{",
                  f"    %m = arith.constant {m} : index"]
        lines += [f"    %d{j} = tensor.cast %x{j} : {ts[j]} to {ds[j]}" for j in range(len(ins))]
        lines += [f"    %yd = flow.dispatch @q{i}::@q{i}(" + ", ".join(f"%d{j}" for j in range(len(ins)))
                  + ", %w, %s, %m) : (" + ", ".join(f"{d}{{%m}}" for d in ds)
                  + f", {kern.packed_type}, {kern.scales_type}, index) -> {dy}{{%m}}",
                  f"    %y = tensor.cast %yd : {dy} to {yt}", f"    return %y : {yt}", "  }"]
    return "\n".join(lines + ["}"]) + "\n"


def test_int4_kernels_compile_for_a_vnni_cpu():
    kerns = _int4_kernels(INT4_SHAPES)
    assert any(kern.fused for kern, _ in kerns)
    compile_iree(_int4_kernels_module(kerns), list(resolve("cpu:sapphirerapids").compile_flags(3)))


@needs_vnni
def test_int4_kernels_against_numpy():
    """Scales of 1 make the result the int32 group sums exactly (each < 2**24); random scales
    give numpy's float64 sum to f32 rounding. A fused kernel takes f32 rows and must quantize
    them as the interpreter does (act_quantize_rows on each group) before the same sums."""
    import iree.runtime as rt

    # rows not a multiple of the block (5 dynamic rows) are the lowering's to pad: here 5 -> 8
    kerns = _int4_kernels([(r, k, n, g, m if r is not None else -(-m // 4) * 4) for r, k, n, g, m in INT4_SHAPES])
    vmfb = compile_iree(_int4_kernels_module(kerns), list(resolve("cpu").compile_flags(3)))
    mod = rt.load_vm_flatbuffer(vmfb, driver="local-task")
    rng = np.random.default_rng(0)
    for i, (kern, m) in enumerate(kerns):
        k, n, g = kern.k, kern.n, kern.group
        groups = k // g
        x = (rng.standard_normal((m, k)) * rng.choice([0.01, 1.0, 30.0], (m, k))).astype(np.float32)
        x[0, :g] = 0.0  # an all-zero group: scale 0, no division by zero
        xq, xs = act_quantize_rows(x.reshape(m, groups, g))
        xq = xq.reshape(m, k) if kern.fused else rng.integers(-128, 128, (m, k)).astype(np.int8)
        q = rng.integers(-8, 8, (n, k)).astype(np.int8)
        xc = (8 * xq.astype(np.int32).reshape(m, groups, g).sum(-1)).astype(np.int32)
        sums = np.einsum("mgi,ngi->mng", xq.reshape(m, groups, g).astype(np.int64), q.reshape(n, groups, g))
        ones_m, ones_n = np.ones((m, groups), np.float32), np.ones((n, groups), np.float32)
        rand_m, rand_n = rng.random((m, groups)).astype(np.float32), rng.random((n, groups)).astype(np.float32)
        cases = ([(xs[..., 0], ones_n), (xs[..., 0], rand_n)] if kern.fused  # the kernel's own row scales
                 else [(ones_m, ones_n), (rand_m, rand_n)])
        for xsc, ws in cases:
            args = [x] if kern.fused else [xq, xsc, xc]
            got = np.asarray(getattr(mod, f"mm4_{i}")(*args, pack_int4_weight(q), pack_scales(ws)))
            want = (sums * xsc[:, None, :].astype(np.float64) * ws[None].astype(np.float64)).sum(-1)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(),
                                       err_msg=f"{kern}, m {m}")


# ---- in a model ----------------------------------------------------------------------------

SPEC = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=320, max_seq_len=64, seed=7)
PAGE, NUM_PAGES = 8, 16
PROMPTS = [[1, 17, 33, 5, 99, 7], [4, 250, 12], [9, 9, 300, 41, 2, 60, 61], [100], [3, 3, 8, 21, 40]]
STEPS = 4
W8A8 = dict(quantize="w8a8", keep_float="")  # lm_head too
SCHEMES = {"w8a8": W8A8, "w4a8": dict(quantize="w4a8", group_size=32, keep_float="")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("vnni") / "ckpt", SPEC)


def _iree_input(checkpoint: Path, path: Path, target: str) -> str:
    compile_checkpoint(CompileOptions(checkpoint, path, opt_level=3, emit="iree-input", target=target, **W8A8),
                       progress=None)
    return path.read_text()


def test_every_w8a8_product_reads_the_stored_packed_weight(checkpoint, tmp_path):
    """For a VNNI CPU each w8a8 weight is a parameter in the packed order and every function
    multiplies through the kernel (no int8 linalg.matmul left, so no data-tiled copy); for
    one without, the weights stay [out, in] and no kernel is emitted."""
    text = _iree_input(checkpoint, tmp_path / "spr.mlir", "cpu:sapphirerapids")
    params = dict(re.findall(r'#stream\.parameter\.named<"model"::"([^"]+)"> : (\S+)', text))
    weights = [n for n in params if n.endswith(".qweight")]
    assert weights and all(re.fullmatch(r"tensor<\d+x\d+x64xi8>", params[n]) for n in weights)
    assert text.count("util.initializer") == len(weights)  # the column sums of each
    bodies = {chunk.split("(", 1)[0]: chunk for chunk in text.split("\n  func.func @")[1:]}
    assert {"prefill", "decode", "decode_b1", "decode_b4"} <= set(bodies)
    for name, body in bodies.items():
        assert body.count("flow.dispatch @vnni_") == len(weights), name
        assert "xi32>) -> tensor" not in body.replace("flow.dispatch", ""), name
    for shape in ("1x1x4", "4x1x1", "8x1x1", "2x1x2", "4x4x1"):  # decode_b1/b4 (down_proj 2 planes), dynamic
        assert f"@vnni_{shape}_" in text, shape
    plain = _iree_input(checkpoint, tmp_path / "hsw.mlir", "cpu:haswell")
    assert "stream.executable" not in plain and "flow.dispatch" not in plain
    plain_params = dict(re.findall(r'#stream\.parameter\.named<"model"::"([^"]+)"> : (\S+)', plain))
    assert all(re.fullmatch(r"tensor<\d+x\d+xi8>", plain_params[n]) for n in weights)


def _reference(checkpoint: Path, prompt: list[int], scheme: str) -> list[np.ndarray]:
    """Interpreter logits of one request alone: prefill, then STEPS greedy decodes."""
    m = import_checkpoint(checkpoint)
    store = m.weight_store()
    options = SCHEMES[scheme]
    quant = QuantConfig.parse(scheme, options.get("group_size", 128), True, "")
    PassManager(pipeline_for_level(3, PAGE, quant, "f32"), weights=store).run(m.module)
    t = from_mlir(functions(m.module)["prefill"].regions[0].blocks[0].arguments[3].type)
    pool, table = empty_page_pool(t, NUM_PAGES), np.arange(1, 4, dtype=np.int64)[None]
    logits, pool = run_function(m.module, "prefill", [np.array([prompt]), np.array([len(prompt)]), table, pool], store)
    out, pos = [logits[0]], len(prompt)
    for _ in range(STEPS):
        logits, pool = run_function(m.module, "decode", [logits.argmax(-1), np.array([pos]), table, pool], store)
        out.append(logits[0])
        pos += 1
    return out


@needs_vnni
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_prefill_and_decode_at_batch_1_4_and_5_match_the_interpreter(checkpoint, tmp_path, scheme):
    art = tmp_path / "art"
    compile_checkpoint(CompileOptions(checkpoint, art, opt_level=3, page_size=PAGE, **SCHEMES[scheme]), progress=None)
    engine = Engine(art, num_pages=NUM_PAGES)
    refs = [_reference(checkpoint, p, scheme) for p in PROMPTS]
    tables = np.arange(1, 1 + 3 * len(PROMPTS), dtype=np.int64).reshape(len(PROMPTS), 3)
    # decode_b1 one request at a time; decode_b4 four together; the dynamic decode all five
    for groups in ([[i] for i in range(len(PROMPTS))], [[0, 1, 2, 3]], [[0, 1, 2, 3, 4]]):
        for rows in groups:
            first = [engine.prefill(np.array([PROMPTS[i]]), np.array([len(PROMPTS[i])]), tables[i:i + 1])[0]
                     for i in rows]
            got = {i: [f] for i, f in zip(rows, first)}
            pos = np.array([len(PROMPTS[i]) for i in rows])
            for _ in range(STEPS):
                tokens = np.array([got[i][-1].argmax() for i in rows])
                logits = engine.decode(tokens, pos, tables[rows])
                for j, i in enumerate(rows):
                    got[i].append(logits[j])
                pos += 1
            for i in rows:
                assert [int(g.argmax()) for g in got[i]] == [int(r.argmax()) for r in refs[i]], (rows, i)
                for g, r in zip(got[i], refs[i]):
                    np.testing.assert_allclose(g, r, atol=2e-4 * max(1.0, np.abs(r).max()), rtol=0)
