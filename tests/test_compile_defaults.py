"""Feedback during a compile (stage timing, the iree-compile heartbeat) and honest defaults:
--dtype auto keeps a 16-bit checkpoint's precision, the manifest records what was stored
(dtype, each layer's group size), and model.irpa has the mode of the other files."""

from __future__ import annotations

import io
import json
import stat
import threading

import numpy as np
import pytest

from llmirc.cli import Heartbeat
from llmirc.compiler import CompileOptions, _ticking, compile_checkpoint, resolve_dtype
from llmirc.targets import resolve
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint
from tests.cli import run_cli
from tests.conftest import TINY


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_heartbeat_on_a_terminal_redraws_the_stage_line():
    s = _Stream(tty=True)
    hb = Heartbeat(s)
    hb.stage("[4/5] iree-compile for cpu:host")
    hb.tick("[4/5] iree-compile for cpu:host", 1.0)
    hb.tick("[4/5] iree-compile for cpu:host", 2.0)
    hb.stage("[5/5] write artifact out")
    assert s.getvalue() == ("[4/5] iree-compile for cpu:host\n\r[4/5] iree-compile for cpu:host / 1 s"
                            "\r[4/5] iree-compile for cpu:host - 2 s\n[5/5] write artifact out\n")


def test_heartbeat_in_a_log_is_a_plain_line_every_15_s():
    s = _Stream(tty=False)
    hb = Heartbeat(s)
    hb.stage("[4/5] iree-compile")
    for t in (1.0, 2.0, 14.9, 16.1, 29.0, 31.5, 46.0):
        hb.tick("[4/5] iree-compile", t)
    hb.close()
    assert s.getvalue().splitlines() == ["[4/5] iree-compile", "[4/5] iree-compile: still running, 16 s",
                                         "[4/5] iree-compile: still running, 32 s",
                                         "[4/5] iree-compile: still running, 46 s"]
    assert "\r" not in s.getvalue()


def test_ticking_calls_back_while_the_body_runs_and_stops_after():
    calls, first = [], threading.Event()

    def tick(line, elapsed):
        calls.append((line, elapsed))
        first.set()

    with _ticking("[4/5] iree-compile", tick, interval=0.01):
        assert first.wait(30)
    n = len(calls)
    assert calls[0][0] == "[4/5] iree-compile" and calls[0][1] > 0
    threading.Event().wait(0.05)
    assert len(calls) == n  # the helper thread is gone


@pytest.fixture(scope="module")
def int8_artifact(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "art"
    res = run_cli("compile", tiny_checkpoint, "-o", out, "-O2", "--quantize", "int8", "--timing")
    assert res.exit_code == 0, res.stderr
    return out, res.stderr


def test_timing_covers_every_stage_iree_compile_included(int8_artifact):
    _, stderr = int8_artifact
    table = stderr[stderr.index("===- llmirc stage timing -==="):].splitlines()[1:7]
    assert [ln.split()[-1] for ln in table] == ["import", "optimize", "lower", "iree-compile", "write", "total"]
    assert all(float(ln.split()[0]) >= 0 and ln.split()[1] == "s" for ln in table)
    assert "===- llmirc pass timing -===" in stderr  # the optimize stage's inside


def test_manifest_records_each_layers_group_size(int8_artifact):
    out, _ = int8_artifact
    weights = json.loads((out / "manifest.json").read_text())["compiler"]["weights"]
    sizes = weights["quantize"]["layer_group_sizes"]
    # TINY: hidden 64, intermediate 128. --group-size 128 (the default) divides only down_proj's
    # 128 in-features; the 64-in-feature layers get 64. lm_head stays float (--keep-float).
    assert weights["dtype"] == "f32" and weights["quantize"]["group_size"] == 128
    assert len(sizes) == 4 * TINY.layers  # per layer: fused q/k/v, o_proj, fused gate/up, down_proj
    assert {k: v for k, v in sizes.items() if "down_proj" in k} == {
        f"model.layers.{i}.mlp.down_proj.weight": 128 for i in range(TINY.layers)}
    assert all(v == 64 for k, v in sizes.items() if "down_proj" not in k) and not any("lm_head" in k for k in sizes)


def test_every_artifact_file_has_the_same_mode(int8_artifact):
    out, _ = int8_artifact
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes


@pytest.mark.parametrize("ckpt_dtype,target,expected,warned", [
    ("bfloat16", "cpu", "bf16", False),
    ("float16", "cpu", "f16", False),
    ("float32", "cpu", "f32", False),
    ("float16", "tpu-like", "f32", True),  # tpu-like stores f32 or bf16 only
    ("bfloat16", "vulkan", "f32", True),  # vulkan:generic: f32 only
    ("float64", "cpu", "f32", False),
])
def test_dtype_auto_rule(ckpt_dtype, target, expected, warned):
    dtype, warning = resolve_dtype("auto", ckpt_dtype, resolve(target))
    assert dtype == expected and (warning is not None) == warned
    if warned:
        assert "twice the size" in warning and ckpt_dtype in warning
    assert resolve_dtype("f32", ckpt_dtype, resolve(target)) == ("f32", None)


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    spec = CheckpointSpec(**{**TINY.__dict__, "dtype": "bfloat16"})
    return make_checkpoint(tmp_path_factory.mktemp("bf16") / "ckpt", spec)


def test_dtype_auto_keeps_a_bf16_checkpoint_in_bf16(bf16_checkpoint, tmp_path):
    out = tmp_path / "m.mlir"
    res = run_cli("compile", bf16_checkpoint, "--emit", "llm-opt", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert "weights bf16 (--dtype auto: checkpoint bfloat16)" in res.stderr
    assert "down_proj.weight.bf16" in out.read_text()
    res = run_cli("compile", bf16_checkpoint, "--emit", "llm-opt", "--target", "vulkan", "-o", out)
    assert res.exit_code == 0 and "warning: the checkpoint's weights are bfloat16 but target vulkan:generic" in res.stderr
    assert ".bf16" not in out.read_text()


def test_bf16_weights_give_the_logits_of_f32_weights(bf16_checkpoint, tmp_path):
    """Why auto may keep bf16: the values are the checkpoint's own (no rounding), and the
    matmuls widen them to f32, so the logits equal those of the f32-stored artifact."""
    from llmirc.runtime import Engine

    logits = {}
    for dtype in ("auto", "f32"):
        out = tmp_path / dtype
        r = compile_checkpoint(CompileOptions(bf16_checkpoint, out, opt_level=2, dtype=dtype), progress=None)
        assert r.dtype == ("bf16" if dtype == "auto" else "f32")
        engine = Engine(out, num_pages=8)
        table = np.array([[1, 2]])
        steps = [engine.prefill(np.array([[1, 5, 9, 33, 7, 100, 3, 8]]), np.array([8]), table)]
        for pos in range(8, 14):
            steps.append(engine.decode(steps[-1].argmax(-1), np.array([pos]), table))
        logits[dtype] = np.concatenate(steps)
    np.testing.assert_allclose(logits["auto"], logits["f32"], rtol=0, atol=1e-6)
    size = {d: (tmp_path / d / "model.irpa").stat().st_size for d in logits}
    assert size["auto"] < 0.6 * size["f32"]
