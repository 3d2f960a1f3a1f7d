"""The embedded default model (README command 1): compiled for this CPU, same text as transformers."""

from __future__ import annotations

import pytest

import llmirc
from llmirc.cli import DEFAULT_MODEL
from tests.e2e.conftest import compile_artifact


@pytest.fixture(scope="module")
def default_artifact(tmp_path_factory):
    return compile_artifact(DEFAULT_MODEL, tmp_path_factory.mktemp("default") / "art")


def test_default_model_generates_what_transformers_generates(default_artifact):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    hf = LlamaForCausalLM.from_pretrained(DEFAULT_MODEL, torch_dtype=torch.float32).eval()
    model = llmirc.load(default_artifact)
    for prompt in ["And the LORD said", "In the beginning"]:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
        (got,) = model.generate([prompt], max_tokens=24)
        assert model.encode(prompt) == ids[0].tolist()
        assert got.token_ids == ref[0, ids.shape[1]:].tolist()
        assert got.text == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
