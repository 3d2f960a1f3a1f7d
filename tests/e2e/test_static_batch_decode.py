"""-O3 CPU artifacts also export `decode_b1` and `decode_b4` (decode with a static batch):
the runtime calls them for batches up to 4, padding rows at position -1, and must get
what the dynamic `decode` and transformers get."""

from __future__ import annotations

import numpy as np
import pytest

import llmirc
from llmirc.artifacts.manifest import read_manifest
from llmirc.runtime import Engine
from tests.cli import run_cli
from tests.e2e.conftest import compile_artifact
from tests.reference import hf_greedy, hf_model

PROMPTS = [[1, 17, 33, 5, 99, 7], [1, 250, 3], [1, 44, 45, 46, 47, 48, 49, 50, 51], [1, 9], [1, 200, 201]]


@pytest.fixture(scope="module")
def o3_artifact(tiny_checkpoint, tmp_path_factory):
    return compile_artifact(tiny_checkpoint, tmp_path_factory.mktemp("o3") / "tiny-o3", opt_level=3, page_size=8)


def test_manifest_names_the_static_batch_functions(o3_artifact):
    assert read_manifest(o3_artifact).entry_points["decode"]["batch_functions"] == {"1": "decode_b1",
                                                                                    "4": "decode_b4"}
    res = run_cli("inspect", o3_artifact)
    assert res.exit_code == 0 and "also decode_b1 (batch 1), decode_b4 (batch 4)" in res.stdout, res.output


def test_quantized_artifacts_keep_the_dynamic_decode(tiny_checkpoint, tmp_path):
    """Asymmetric int4 runs IREE's weight-only kernel, faster with a dynamic batch (symmetric
    int4 and int8 take lowering/gemv.py's on VNNI CPUs: tests/lowering/test_gemv.py)."""
    art = compile_artifact(tiny_checkpoint, tmp_path / "q", opt_level=3, page_size=8, quantize="int4",
                           symmetric=False)
    assert "batch_functions" not in read_manifest(art).entry_points["decode"]


@pytest.mark.parametrize("batch", [1, 3, 4, 5])  # b1 static, 3 padded to b4, b4 static, 5 dynamic
def test_static_batch_decode_equals_dynamic_decode(o3_artifact, batch):
    engines = [Engine(o3_artifact, num_pages=64) for _ in range(2)]
    prompts = PROMPTS[:batch]
    t = max(map(len, prompts))
    tokens = np.zeros((batch, t), np.int64)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    lens = np.array([len(p) for p in prompts], np.int64)
    tables = np.arange(1, 1 + batch * 4, dtype=np.int64).reshape(batch, 4)
    logits = [e.prefill(tokens, lens, tables) for e in engines]
    for step in range(6):
        nxt = logits[0].argmax(-1).astype(np.int64)
        pos = lens + step
        got = engines[0].decode(nxt, pos, tables)
        want = engines[1]._call(engines[1]._decode, nxt, pos, tables)  # the dynamic-batch function
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        logits = [got, want]
    np.testing.assert_allclose(engines[0].read_pool(), engines[1].read_pool(), atol=1e-6, rtol=0)  # page 0 too


def test_o3_generation_matches_transformers(o3_artifact, tiny_checkpoint):
    hf = hf_model(tiny_checkpoint)
    got = llmirc.load(o3_artifact).generate(PROMPTS[:3], max_tokens=24, stop_token_ids=())
    for completion, prompt in zip(got, PROMPTS[:3]):
        assert completion.token_ids == hf_greedy(hf, prompt, 24)[0]
