"""GGUF files compiled at -O3: an F32 GGUF of the tiny checkpoint's weights gives the same greedy
tokens and text as the safetensors artifact; a Q8_0 GGUF (linears compiled as quantized_matmul,
never dequantized) gives the interpreter's tokens and logits. Two -O3 compiles in the default
suite; Q4_0 and F16 are slow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

import llmirc  # noqa: E402
from llmirc.dialect.interpreter import empty_kv_cache, run_function  # noqa: E402
from llmirc.frontend import cache_type, import_checkpoint  # noqa: E402
from llmirc.runtime import Engine  # noqa: E402
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint, random_weights  # noqa: E402
from llmirc.testing.gguf import write_gguf  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.e2e.conftest import compile_artifact  # noqa: E402
from tests.reference import greedy_steps, greedy_with_engine, padded_batch  # noqa: E402

PROMPTS = [[1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8], [1, 250, 3]]


def interpreter_greedy(model, prompts: list[list[int]], steps: int) -> tuple[list[list[int]], np.ndarray]:
    """Greedy tokens and the last step's logits from the numpy interpreter on the imported IR."""
    w = model.weights()
    tokens, lens = padded_batch(prompts)
    logits, cache = run_function(model.module, "prefill",
                                 [tokens, lens, empty_kv_cache(cache_type(model.config), len(prompts))], w)
    state = {"cache": cache}

    def decode(nxt, positions):
        logits, state["cache"] = run_function(model.module, "decode", [nxt, positions, state["cache"]], w)
        return logits

    return greedy_steps(logits, lens, steps, decode)


def test_f32_gguf_compiles_to_the_safetensors_models_tokens(tiny_checkpoint, cpu_artifact, tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", TINY, tokenizer=tiny_checkpoint / "tokenizer.json")
    art = compile_artifact(path, tmp_path / "art", opt_level=3)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in art.iterdir()}
    ours, ref = llmirc.load(art), llmirc.load(cpu_artifact)
    got = ours.generate(PROMPTS, max_tokens=32, stop_token_ids=())
    want = ref.generate(PROMPTS, max_tokens=32, stop_token_ids=())
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    text = "In the beginning the compiler"
    assert ours.encode(text) == ref.encode(text)
    assert ours.generate([text], max_tokens=16)[0].text == ref.generate([text], max_tokens=16)[0].text


def _check_quantized(tmp_path: Path, qtype: str, steps: int = 8) -> None:
    path = write_gguf(tmp_path / f"tiny-{qtype}.gguf", TINY, qtype=qtype)
    model = import_checkpoint(path)
    assert len(model.source.quantized) == 7 * TINY.layers
    want_tokens, want_logits = interpreter_greedy(model, PROMPTS, steps)
    art = compile_artifact(path, tmp_path / "art", opt_level=3)
    got_tokens, got_logits = greedy_with_engine(Engine(art, num_pages=32), PROMPTS, steps)
    assert got_tokens == want_tokens
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-3, rtol=0)


def test_q8_0_gguf_compiles_quantized_and_matches_the_interpreter(tmp_path):
    _check_quantized(tmp_path, "Q8_0")


@pytest.mark.slow
def test_q4_0_gguf_compiles_quantized_and_matches_the_interpreter(tmp_path):
    _check_quantized(tmp_path, "Q4_0")


@pytest.mark.slow
def test_f16_gguf_compiles_to_the_f16_safetensors_models_tokens(tmp_path):
    spec = CheckpointSpec(**{**TINY.__dict__, "dtype": "float16"})
    weights = {n: w.astype(np.float16).astype(np.float32) for n, w in random_weights(spec).items()}
    ckpt = make_checkpoint(tmp_path / "ckpt", spec, weights)
    ours = llmirc.load(compile_artifact(write_gguf(tmp_path / "m.gguf", spec, weights, qtype="F16"),
                                        tmp_path / "gguf-art", opt_level=3))
    ref = llmirc.load(compile_artifact(ckpt, tmp_path / "st-art", opt_level=3))
    assert [c.token_ids for c in ours.generate(PROMPTS, max_tokens=32, stop_token_ids=())] == \
        [c.token_ids for c in ref.generate(PROMPTS, max_tokens=32, stop_token_ids=())]
