"""The tpu-like (static-shape, systolic-tile) artifact runs here and matches transformers.

It is compiled with small buckets (conftest.TPU_BUCKETS: batch 1,4; prefill lengths 16,64;
a fixed pool of 33 pages), so every runtime path is reachable: a batch of 3 is padded to 4,
a batch of 5 runs as chunks of 4 and 1, prompts are padded to a length bucket, and a
prompt longer than the largest bucket is refused. ~25 s to compile, ~10 s to run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import llmirc
from llmirc.cli import main
from llmirc.errors import LlmircError, PromptTooLongError
from llmirc.runtime import Engine
from tests.reference import hf_greedy, hf_model

from tests.targets.shared import TPU_BUCKETS

PROMPTS = [[1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8], [1, 250, 3], [1, 44, 45, 46, 47, 48]]


@pytest.fixture(scope="module")
def tpu(target_artifact):
    return target_artifact("tpu-like", buckets=TPU_BUCKETS)


@pytest.fixture(scope="module")
def hf_runs(tiny_checkpoint):
    hf = hf_model(tiny_checkpoint)
    return [hf_greedy(hf, p, 48)[0] for p in PROMPTS]


@pytest.fixture(scope="module")
def cpu_ref(target_artifact):
    return target_artifact("cpu", opt_level=2)  # same page size (16) as tpu-like


def test_greedy_tokens_match_transformers_and_cpu(tpu, cpu_ref, hf_runs):
    got = [c.token_ids for c in llmirc.load(tpu).generate(PROMPTS, max_tokens=48, stop_token_ids=())]
    assert got == hf_runs
    cpu = [c.token_ids for c in llmirc.load(cpu_ref).generate(PROMPTS, max_tokens=48, stop_token_ids=())]
    assert got == cpu


def test_padded_calls_give_the_unpadded_logits(tpu, cpu_ref):
    """Prefill of 5 rows -> chunks of 4 and 1, T=6 -> bucket 16; decode of 3 rows -> bucket 4 (one padding row)."""
    static, dynamic = Engine(tpu), Engine(cpu_ref, num_pages=33)
    assert static.num_pages == 33 and static.max_prefill_len == 64
    tokens = np.array([[1, 5, 9, 13, 17, 21], [1, 2, 3, 0, 0, 0], [1, 7, 0, 0, 0, 0], [1, 9, 9, 9, 0, 0],
                       [1, 11, 12, 0, 0, 0]])
    lens, tables = np.array([6, 3, 2, 4, 3]), np.arange(1, 6)[:, None]
    out = {}
    for name, e in (("static", static), ("dynamic", dynamic)):
        out[name] = (e.prefill(tokens, lens, tables), e.decode(np.array([4, 8, 2]), np.array([6, 3, 2]), tables[:3]))
    for s, d in zip(out["static"], out["dynamic"]):
        np.testing.assert_allclose(s, d, atol=1e-4)
    # padding rows wrote nothing but scratch page 0: the pools agree on every other page
    np.testing.assert_allclose(static.read_pool()[1:], dynamic.read_pool()[1:], atol=1e-5)


def test_prompt_longer_than_every_bucket_is_prefilled_in_chunks(tpu, cpu_ref):
    """70 tokens (within max_seq_len 128, beyond the largest bucket 64): the engine extends in
    chunks of at most 64 and gives the dynamic CPU artifact's tokens; one raw prefill call that
    long still has no bucket."""
    prompt = [1] + [5, 9, 13, 17, 21, 25, 29] * 9 + [3] * 6
    assert len(prompt) == 70
    got = llmirc.load(tpu).generate([prompt], max_tokens=8, stop_token_ids=())[0].token_ids
    assert got == llmirc.load(cpu_ref).generate([prompt], max_tokens=8, stop_token_ids=())[0].token_ids
    with pytest.raises(PromptTooLongError, match="does not fit any compiled prefill bucket"):
        Engine(tpu).prefill(np.ones((1, 70), np.int64), np.array([70]), np.arange(1, 9)[None])


def test_pool_size_is_fixed_at_compile_time(tpu):
    with pytest.raises(LlmircError, match="compiled for a page pool of exactly 33 pages"):
        Engine(tpu, num_pages=40)
    res = CliRunner().invoke(main, ["run", str(tpu), "--prompt-ids", "1,2,3", "--num-pages", "9"])
    assert res.exit_code == 1 and "exactly 33 pages" in res.stderr


def test_inspect_shows_the_static_entry_points(tpu):
    res = CliRunner().invoke(main, ["inspect", str(tpu), "--json"])
    data = json.loads(res.stdout)
    assert data["target"]["name"] == "tpu-like" and data["target"]["static_shapes"] is True
    assert data["target"]["systolic_tile"] == 128
    assert data["entry_points"]["prefill"]["functions"] == ["prefill_b1_t16", "prefill_b1_t64", "prefill_b4_t16",
                                                            "prefill_b4_t64"]


@pytest.mark.slow
def test_bf16_systolic_matmuls_match_transformers(target_artifact, hf_runs):
    """--dtype bf16: bf16 weights and bf16 matmul operands, f32 accumulation (~25 s to compile)."""
    art = target_artifact("tpu-like", buckets=TPU_BUCKETS, dtype="bf16")
    got = [c.token_ids for c in llmirc.load(art).generate(PROMPTS, max_tokens=48, stop_token_ids=())]
    assert got == hf_runs


@pytest.mark.slow
def test_int8_weights_match_the_cpu_artifact(target_artifact):
    """--quantize int8 (weight-only int8; these matmuls are not tile-padded): same greedy tokens as the CPU
    artifact with the same quantized weights (~25 s + ~30 s to compile)."""
    art = target_artifact("tpu-like", buckets=TPU_BUCKETS, quantize="int8")
    cpu = target_artifact("cpu", quantize="int8")
    assert [c.token_ids for c in llmirc.load(art).generate(PROMPTS, max_tokens=32, stop_token_ids=())] == \
        [c.token_ids for c in llmirc.load(cpu).generate(PROMPTS, max_tokens=32, stop_token_ids=())]
