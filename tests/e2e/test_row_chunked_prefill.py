"""-O3 CPU artifacts with f16/bf16 linears also export `prefill_r64` and `extend_r64`: the
same functions with those linears computed 64 token rows at a time, rows static
(lowering/ops.py in_row_chunks). The runtime calls them for calls of at least 64 token rows
(B x T); they must compute what the plain functions and the interpreter compute."""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.artifacts.manifest import read_manifest
from llmirc.dialect.context import functions
from llmirc.dialect.interpreter import empty_page_pool, run_function
from llmirc.dialect.types import from_mlir
from llmirc.frontend import import_checkpoint
from llmirc.pipelines import PassManager, pipeline_for_level
from llmirc.runtime import Engine
from tests.e2e.conftest import compile_artifact

PAGE, NUM_PAGES, ROWS = 8, 40, 64
rng = np.random.default_rng(11)
# 2 x 70 = 140 token rows: two full chunks and 12 rows left; the batch pads the short row
PROMPTS = [[1] + rng.integers(3, 300, 69).tolist(), [1] + rng.integers(3, 300, 40).tolist()]


@pytest.fixture(scope="module")
def f16_artifact(tiny_checkpoint, tmp_path_factory):
    return compile_artifact(tiny_checkpoint, tmp_path_factory.mktemp("rows") / "tiny-f16-o3", opt_level=3,
                            page_size=PAGE, dtype="f16")


def _tables(b: int) -> np.ndarray:
    return np.arange(1, 1 + b * 16, dtype=np.int64).reshape(b, 16)


def _batch(prompts):
    tokens = np.zeros((len(prompts), max(map(len, prompts))), np.int64)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    return tokens, np.array([len(p) for p in prompts], np.int64)


def test_manifest_names_the_row_chunked_functions(f16_artifact):
    eps = read_manifest(f16_artifact).entry_points
    assert eps["prefill"]["row_functions"] == {str(ROWS): f"prefill_r{ROWS}"}
    assert eps["extend"]["row_functions"] == {str(ROWS): f"extend_r{ROWS}"}
    assert "row_functions" not in eps["extend_all"] and "row_functions" not in eps["decode"]


def test_long_prompts_match_the_interpreter(f16_artifact, tiny_checkpoint):
    """Prefill of 140 token rows (the r64 variant) and 4 greedy decode steps against the numpy
    interpreter running the same -O3 f16 IR."""
    m = import_checkpoint(tiny_checkpoint)
    store = m.weight_store()
    PassManager(pipeline_for_level(3, PAGE, None, "f16"), weights=store).run(m.module)
    t = from_mlir(functions(m.module)["prefill"].regions[0].blocks[0].arguments[3].type)
    tokens, lens = _batch(PROMPTS)
    tables = _tables(len(PROMPTS))
    engine = Engine(f16_artifact, num_pages=NUM_PAGES)
    assert tokens.size >= ROWS and ROWS in engine._prefill_by_rows
    want, pool = run_function(m.module, "prefill", [tokens, lens, tables, empty_page_pool(t, NUM_PAGES)], store)
    got = engine.prefill(tokens, lens, tables)
    pos = lens.copy()
    for _ in range(4):
        np.testing.assert_allclose(got, want, atol=2e-4 * max(1.0, np.abs(want).max()), rtol=0)
        assert (got.argmax(-1) == want.argmax(-1)).all()
        nxt = want.argmax(-1).astype(np.int64)
        want, pool = run_function(m.module, "decode", [nxt, pos, tables, pool], store)
        got = engine.decode(nxt, pos, tables)
        pos += 1


def test_row_chunked_functions_equal_the_plain_ones(f16_artifact):
    """prefill_r64 / extend_r64 against prefill / extend on the same rows: each row is one
    product either way, so the logits agree to rounding (bitwise in practice)."""
    engine = Engine(f16_artifact, num_pages=NUM_PAGES)
    tokens, lens = _batch(PROMPTS)
    tables = _tables(len(PROMPTS))
    chunked = engine.prefill(tokens, lens, tables)
    plain = engine._call(engine._prefill, tokens, lens, tables)
    np.testing.assert_allclose(chunked, plain, atol=1e-5, rtol=0)
    # extend 66 new tokens per row after a cached 4-token prefix (132 rows: the r64 variant)
    new = np.array([p[4:70] for p in (PROMPTS[0], PROMPTS[0][:4] + PROMPTS[1] * 2)], np.int64)
    start, new_lens = np.array([4, 4], np.int64), np.array([66, 66], np.int64)
    engine.prefill(tokens[:, :4], np.array([4, 4], np.int64), tables)
    chunked = engine.extend(new, start, new_lens, tables)
    plain = engine._call(engine._extend, new, start, new_lens, tables)
    np.testing.assert_allclose(chunked, plain, atol=1e-5, rtol=0)
    # other tokens give other logits: the comparisons above can fail
    assert np.abs(chunked - engine.extend(new[:, :33], start, new_lens // 2, tables)).max() > 1e-3


def test_probe_calls_the_row_chunked_functions(f16_artifact, capsys):
    """The module test-run (runtime/probe.py) calls every entry point, these with 64 rows."""
    from llmirc.runtime.probe import _probe

    _probe(str(f16_artifact), "local-task")
    called = capsys.readouterr().out
    assert f"calling prefill_r{ROWS}" in called and f"calling extend_r{ROWS}" in called
