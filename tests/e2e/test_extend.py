"""ABI v2 `extend`: new tokens after a cached prefix, on CPU (-O3) and on tpu-like buckets.

Chunked prefill, prefix-cache hits and re-prefill after preemption are all `extend` at the
cached length, so each must give the logits one prefill gives; `extend_all`'s per-position
logits (prompt logprobs) are checked against transformers.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from llmirc.errors import ArtifactError
from llmirc.runtime import Engine
from tests.e2e.conftest import compile_artifact
from tests.reference import hf_model
from tests.targets.shared import TPU_BUCKETS

PROMPT = [1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8, 19, 23, 42, 77, 3, 9, 140, 200, 11, 6, 2, 31, 64, 90, 13, 15,
          27, 150, 8, 44, 1, 120, 33, 7]  # 35 tokens: 5 pages of 8, the last partial


@pytest.fixture(scope="module")
def o3_artifact(tiny_checkpoint, tmp_path_factory):
    return compile_artifact(tiny_checkpoint, tmp_path_factory.mktemp("ext") / "o3", opt_level=3, page_size=8)


@pytest.fixture(scope="module")
def tpu_artifact(tiny_checkpoint, tmp_path_factory):
    return compile_artifact(tiny_checkpoint, tmp_path_factory.mktemp("ext") / "tpu", target="tpu-like",
                            buckets=TPU_BUCKETS)


def _table(engine: Engine, first: int, n_tokens: int) -> np.ndarray:
    return np.arange(first, first + -(-n_tokens // engine.page_size), dtype=np.int64)[None]


def _in_chunks(engine: Engine, tokens: list[int], chunk: int, table: np.ndarray, start: int = 0) -> np.ndarray:
    """Extend tokens[start:] in chunks of `chunk`; returns the logits after the last chunk."""
    logits = None
    for lo in range(start, len(tokens), chunk):
        part = tokens[lo:lo + chunk]
        logits = engine.extend(np.array([part]), np.array([lo]), np.array([len(part)]), table)
    return logits


@pytest.mark.parametrize("which", ["cpu-O3", "tpu-like"])
@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_extend_in_chunks_equals_one_prefill(request, which, chunk):
    art = request.getfixturevalue("o3_artifact" if which == "cpu-O3" else "tpu_artifact")
    pages = None if which == "tpu-like" else 33  # tpu-like: the pool size it was compiled for
    ref_engine, engine = Engine(art, num_pages=pages), Engine(art, num_pages=pages)
    table = _table(engine, 1, len(PROMPT) + 1)
    ref = ref_engine.prefill(np.array([PROMPT]), np.array([len(PROMPT)]), table)
    np.testing.assert_allclose(_in_chunks(engine, PROMPT, chunk, table), ref, atol=1e-4, rtol=0)
    # and the cache the chunks left behind decodes the next token as the prefilled one does
    nxt, pos = np.array([int(ref.argmax())]), np.array([len(PROMPT)])
    np.testing.assert_allclose(engine.decode(nxt, pos, table), ref_engine.decode(nxt, pos, table), atol=1e-4)


def test_batched_extend_rows_with_different_starts(o3_artifact):
    """Rows at different cached lengths in one call give each row's own logits."""
    a, b = PROMPT[:20], PROMPT[5:35]
    batch, alone = Engine(o3_artifact, num_pages=33), Engine(o3_artifact, num_pages=33)
    ta, tb = _table(batch, 1, 32), _table(batch, 10, 32)
    for e in (batch, alone):  # cached prefixes of 12 and 3 tokens
        e.extend(np.array([a[:12], b[:3] + [0] * 9]), np.array([0, 0]), np.array([12, 3]), np.concatenate([ta, tb]))
    new_a, new_b = a[12:], b[3:]
    tokens = np.zeros((2, len(new_b)), np.int64)
    tokens[0, :len(new_a)], tokens[1] = new_a, new_b
    got = batch.extend(tokens, np.array([12, 3]), np.array([len(new_a), len(new_b)]), np.concatenate([ta, tb]))
    ref_a = alone.extend(np.array([new_a]), np.array([12]), np.array([len(new_a)]), ta)
    ref_b = alone.extend(np.array([new_b]), np.array([3]), np.array([len(new_b)]), tb)
    np.testing.assert_allclose(got, np.concatenate([ref_a, ref_b]), atol=1e-4, rtol=0)


def test_prefix_hit_through_shared_pages_equals_a_miss(o3_artifact):
    """Sequence B reuses A's first 3 full pages (a prefix-cache hit) and extends the rest."""
    shared = PROMPT[:24]
    a, b = shared + [5, 6, 7], shared + [250, 1, 2, 3, 4]
    e = Engine(o3_artifact, num_pages=33)
    e.extend(np.array([a]), np.array([0]), np.array([len(a)]), np.array([[1, 2, 3, 4]]))
    table_b = np.array([[1, 2, 3, 9]])  # pages 1..3 are A's: positions 0..23
    hit = e.extend(np.array([b[24:]]), np.array([24]), np.array([len(b) - 24]), table_b)
    miss = Engine(o3_artifact, num_pages=33).extend(np.array([b]), np.array([0]), np.array([len(b)]),
                                                    np.array([[5, 6, 7, 8]]))
    np.testing.assert_allclose(hit, miss, atol=1e-4, rtol=0)
    assert int(hit.argmax()) == int(miss.argmax())


def test_extend_all_gives_every_positions_logits_as_transformers(o3_artifact, tiny_checkpoint):
    import torch

    e = Engine(o3_artifact, num_pages=33)
    table = _table(e, 1, len(PROMPT))
    e.extend(np.array([PROMPT[:10]]), np.array([0]), np.array([10]), table)
    got = e.extend(np.array([PROMPT[10:]]), np.array([10]), np.array([len(PROMPT) - 10]), table, all_logits=True)
    assert got.shape == (1, len(PROMPT) - 10, e.vocab_size)
    with torch.no_grad():
        ref = hf_model(tiny_checkpoint)(torch.tensor([PROMPT])).logits[0, 10:].numpy()
    np.testing.assert_allclose(got[0], ref, atol=1e-3, rtol=0)


def test_tpu_like_has_no_all_logits_and_says_so(tpu_artifact):
    e = Engine(tpu_artifact)
    assert e.supports_extend and not e.supports_all_logits
    with pytest.raises(ArtifactError, match="prompt logprobs are not compiled for static-shape targets"):
        e.extend(np.array([[1, 2]]), np.array([0]), np.array([2]), np.array([[1]]), all_logits=True)


def test_v1_artifact_still_runs_but_cannot_extend(o3_artifact, tmp_path):
    old = shutil.copytree(o3_artifact, tmp_path / "v1")
    m = json.loads((old / "manifest.json").read_text())
    m["abi_version"] = 1
    for name in ("extend", "extend_all"):
        m["entry_points"].pop(name)
    (old / "manifest.json").write_text(json.dumps(m))
    e = Engine(old, num_pages=9)
    assert e.prefill(np.array([[1, 2, 3]]), np.array([3]), np.array([[1]])).shape == (1, e.vocab_size)
    with pytest.raises(ArtifactError, match="ABI v1, which has no 'extend' entry point .* rebuild it with ABI v2"):
        e.extend(np.array([[1]]), np.array([3]), np.array([1]), np.array([[1]]))
