"""Accuracy of quantized IR on the shipped trained model: teacher-forced top-1 agreement with f32.

The interpreter runs the -O2 IR (f32, int8, int4, w8a8, w4a8 and w4a16, group size 128, symmetric: the
defaults of `llmirc compile --quantize`) over the first two 256-token windows of Genesis 1 (KJV, 510
predictions). docs/quantization.md has the numbers over the whole chapter and for the
compiled artifacts (benchmarks/quantization.py --accuracy).
"""

from __future__ import annotations

import pytest

from llmirc.cli import DEFAULT_MODEL
from llmirc.frontend import import_checkpoint
from llmirc.pipelines import PassManager, QuantConfig, pipeline_for_level
from llmirc.testing import accuracy

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL / "model.safetensors").is_file(),
                                reason="the trained default model is not built")


@pytest.fixture(scope="module")
def text_windows():
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(DEFAULT_MODEL / "tokenizer.json")).encode(accuracy.GENESIS_1,
                                                                            add_special_tokens=False).ids
    return accuracy.windows(ids, bos=1, length=256)[:2]


def _logits(windows, quant: QuantConfig | None):
    m = import_checkpoint(DEFAULT_MODEL)
    store = m.weight_store()
    PassManager(pipeline_for_level(2, 16, quant), weights=store).run(m.module)
    return accuracy.teacher_forced(accuracy.interpreter_steps(m.module, store, num_pages=17), windows)


@pytest.fixture(scope="module")
def f32_logits(text_windows):
    return _logits(text_windows, None)


@pytest.mark.parametrize("scheme,min_agreement,max_ppl_delta", [("int8", 0.99, 0.05), ("int4", 0.90, 0.5),
                                                                 ("w8a8", 0.99, 0.05), ("w4a8", 0.90, 0.5),
                                                                 ("w4a16", 0.90, 0.5)])
def test_top1_agreement_with_f32(text_windows, f32_logits, scheme, min_agreement, max_ppl_delta):
    got = _logits(text_windows, QuantConfig.parse(scheme))
    scores = accuracy.compare(f32_logits, got, accuracy.targets(text_windows))
    assert scores.positions == 510
    assert scores.agreement >= min_agreement, scores
    assert abs(scores.perplexity_delta) <= max_ppl_delta, scores
