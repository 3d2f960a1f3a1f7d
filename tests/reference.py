"""Independent reference numerics: Hugging Face transformers on torch CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def hf_model(checkpoint: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def hf_last_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()


def hf_greedy(model, ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy continuation and the logits of the last step, computed by transformers."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             min_new_tokens=new_tokens, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None)
    return out.sequences[0, len(ids):].tolist(), out.logits[-1][0].float().numpy()


def padded_batch(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts as one prefill batch: tokens i64[B, T] (zero-padded) and their lengths i64[B]."""
    tokens = np.zeros((len(prompts), max(map(len, prompts))), np.int64)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    return tokens, np.array([len(p) for p in prompts], np.int64)


def greedy_steps(prefill_logits: np.ndarray, positions: np.ndarray, steps: int, decode):
    """`steps` greedy decodes from the prefill's logits; decode(tokens, positions) -> logits.
    Returns each row's new tokens and the logits after the last step."""
    logits, positions = prefill_logits, positions.copy()
    out: list[list[int]] = [[] for _ in range(len(positions))]
    for _ in range(steps):
        nxt = logits.argmax(-1).astype(np.int64)
        for o, n in zip(out, nxt):
            o.append(int(n))
        logits = decode(nxt, positions)
        positions += 1
    return out, logits


def greedy_with_engine(engine, prompts: list[list[int]], steps: int, tables: np.ndarray | None = None):
    """Our side of a comparison: batched prefill + `steps` greedy decodes through the raw ABI of
    a compiled artifact's Engine. Returns the tokens and the logits after the last step."""
    b, t = len(prompts), max(map(len, prompts))
    if tables is None:
        pages = -(-(t + steps + 1) // engine.page_size)
        tables = np.arange(1, 1 + b * pages, dtype=np.int64).reshape(b, pages)
    tokens, lens = padded_batch(prompts)
    return greedy_steps(engine.prefill(tokens, lens, tables), lens, steps,
                        lambda nxt, positions: engine.decode(nxt, positions, tables))


def check_artifact_against_transformers(checkpoint: Path, artifact: Path, prompts: list[list[int]],
                                        new_tokens: int) -> list[list[int]]:
    """The compiled artifact against transformers on the same checkpoint: greedy tokens of
    `llmirc.load().generate` identical to transformers' generate, and the logits after the
    last step within 1e-3 (through the Engine's raw ABI). Returns transformers' tokens."""
    import llmirc
    from llmirc.runtime import Engine

    hf = hf_model(checkpoint)
    refs = [hf_greedy(hf, p, new_tokens) for p in prompts]
    got = llmirc.load(artifact).generate(prompts, max_tokens=new_tokens, stop_token_ids=())
    assert [c.token_ids for c in got] == [t for t, _ in refs]
    tokens, logits = greedy_with_engine(Engine(artifact, num_pages=64), prompts, new_tokens - 1)
    for row, toks, (ref_tokens, ref_logits) in zip(logits, tokens, refs):
        assert toks == ref_tokens[:new_tokens - 1]
        np.testing.assert_allclose(row, ref_logits, atol=1e-3, rtol=0)
    return [t for t, _ in refs]
