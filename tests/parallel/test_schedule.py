"""The schedule IREE makes of a tensor-parallel module: each device runs its own shard work
and waits on another device only for the values a collective brings (tests/parallel/schedule.py
says how that is read off the stream IR). Without the barrier that pins each collective's
local partial, device 0 computes its lm_head shard only after device 1 has finished its own:
the check sees that."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from llmirc.frontend.config import ModelConfig
from llmirc.frontend.decoder import build_decoder, weight_shapes
from llmirc.lowering import devices, lower_to_iree
from llmirc.pipelines import PassManager, WeightStore, pipeline_for_level
from llmirc.targets import resolve
from tests.parallel.schedule import cross_device_waits, needless_waits, parse_schedule

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, max_seq_len=64)


def _schedule(tp: int) -> str:
    """iree-compile's stream IR right after execution scheduling, for the -O2 module at `tp`."""
    from iree.compiler.tools.binaries import find_tool

    rng = np.random.default_rng(0)
    store = WeightStore.from_arrays({k: rng.standard_normal(s).astype(np.float32)
                                     for k, s in weight_shapes(CONFIG).items()})
    module = build_decoder(CONFIG)
    PassManager(pipeline_for_level(2, block_size=4, tp=tp), weights=store).run(module)
    flags = resolve("cpu").compile_flags(2, num_devices=tp)
    res = subprocess.run([find_tool("iree-compile"), "-", "--compile-to=stream", "-o", "/dev/null",
                          "--mlir-print-ir-after=iree-stream-schedule-execution", "--mlir-disable-threading",
                          *flags], input=lower_to_iree(module), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stderr


@pytest.mark.parametrize("tp", [2, 4])
def test_devices_wait_on_each_other_only_at_collectives(tp):
    text = _schedule(tp)
    for fn in ("prefill", "decode"):
        regions, joins = parse_schedule(text, fn)
        assert {r.device for r in regions} == {f"__device_{i}" for i in range(tp)}
        # 2 layers x 2 all-reduces on every device + the gather: the devices do exchange values
        assert len(cross_device_waits(regions, joins)) >= 4 * tp
        assert needless_waits(regions, joins) == [], fn


def test_check_sees_the_wait_without_the_barrier(monkeypatch):
    monkeypatch.setattr(devices, "barrier", lambda e, x, d: x)
    text = _schedule(2)
    problems = [p for fn in ("prefill", "decode") for p in needless_waits(*parse_schedule(text, fn))]
    assert problems and all("on __device_0 waits on" in p for p in problems), problems
