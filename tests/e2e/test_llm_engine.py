"""LLMEngine on a real compiled artifact (ABI v2 `extend`): what the scheduler does to a
request never changes its greedy tokens.

The reference is each prompt alone through the Engine's own prefill + decode (no scheduler,
no cache, its own pages). The engine under test runs them together with a pool too small
for all of them (preemption), a step budget that cuts prompts into chunks, and shared
prefixes (prefix-cache hits), so extend runs at many start positions on shared pages.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.runtime import Engine
from llmirc.runtime.llm_engine import LLMEngine
from llmirc.runtime.sampling import SamplingParams
from llmirc.runtime.scheduler import SchedulerConfig
from tests.e2e.conftest import compile_artifact

PAGE = 4
SHARED = [1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8]  # 11 tokens: 2 full pages of 4
PROMPTS = [SHARED + [19, 23], SHARED + [42], SHARED[:6] + [77, 3, 9], [140, 200, 11, 6, 2], SHARED + [19, 23, 64],
           [31, 64, 90]]
NEW_TOKENS = 10

pytestmark = pytest.mark.skipif(not hasattr(Engine, "extend"), reason="Engine.extend (ABI v2) is not here yet")


@pytest.fixture(scope="module")
def artifact(tiny_checkpoint, tmp_path_factory):
    return compile_artifact(tiny_checkpoint, tmp_path_factory.mktemp("llm-engine") / "art", opt_level=2,
                            page_size=PAGE)


def alone(engine: Engine, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens of `prompt` by prefill + decode on pages 1.. (and the prefill logits)."""
    table = np.arange(1, 1 + -(-(len(prompt) + steps) // PAGE), dtype=np.int64)[None]
    logits = engine.prefill(np.array([prompt]), np.array([len(prompt)]), table)
    first = logits[0]
    out = []
    for i in range(steps):
        out.append(int(logits[0].argmax()))
        if i + 1 < steps:
            logits = engine.decode(np.array([out[-1]]), np.array([len(prompt) + i]), table)
    return out, first


def run_all(llm: LLMEngine, params: SamplingParams) -> dict:
    for i, p in enumerate(PROMPTS):
        llm.add_request(str(i), p, params)
    final = {}
    for _ in range(2000):
        if not llm.has_unfinished_requests():
            return final
        final.update((o.request_id, o) for o in llm.step() if o.finished)
    raise AssertionError(f"no progress: {llm.stats}")


def test_scheduled_greedy_equals_each_prompt_alone(artifact):
    ref_engine = Engine(artifact, num_pages=16)
    expected = {str(i): alone(ref_engine, p, NEW_TOKENS)[0] for i, p in enumerate(PROMPTS)}
    # 11 usable pages of 4 = 44 slots; together the prompts need about 24 pages
    llm = LLMEngine(Engine(artifact, num_pages=12), SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=7))
    assert llm._has_extend  # the real ABI v2 path, not the v1 stand-in
    final = run_all(llm, SamplingParams(max_tokens=NEW_TOKENS, stop_token_ids=()))
    assert {rid: o.outputs[0].token_ids for rid, o in final.items()} == expected
    s = llm.stats
    assert s.num_preemptions > 0 and s.prefix_cache_hits > 0 and s.num_pages_used == 0
    assert s.generation_tokens == NEW_TOKENS * len(PROMPTS)


def test_prompt_logprobs_from_extend_all(artifact):
    engine = Engine(artifact, num_pages=16)
    if not getattr(engine, "supports_all_logits", False):
        pytest.skip("this artifact has no extend_all")
    prompt = PROMPTS[0]
    llm = LLMEngine(engine, SchedulerConfig(max_num_batched_tokens=5))  # chunks of 5: three extend_all calls
    llm.add_request("p", prompt, SamplingParams(max_tokens=1, stop_token_ids=(), prompt_logprobs=3))
    out = None
    while llm.has_unfinished_requests():
        out = (llm.step() or [out])[0]
    ref = Engine(artifact, num_pages=16)
    for i in range(1, len(prompt)):
        _, logits = alone(ref, prompt[:i], 1)
        lp = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64) - logits.max()).sum()) - logits.max()
        entry = out.prompt_logprobs[i]
        assert entry[prompt[i]] == pytest.approx(lp[prompt[i]], abs=1e-3)
        assert set(np.argsort(-lp)[:3].tolist()) <= set(entry)


@pytest.fixture(scope="module")
def tpu_artifact(tiny_checkpoint, tmp_path_factory):
    # 12 usable pages of 4 (max_seq_len 32: 8 pages a sequence): too few for all the prompts at once
    return compile_artifact(tiny_checkpoint, tmp_path_factory.mktemp("llm-engine") / "tpu", target="tpu-like",
                            buckets="batch=1,4;len=8,16;pages=13", page_size=PAGE, max_seq_len=32)


def test_static_shape_target_scheduled_greedy_equals_each_prompt_alone(tpu_artifact):
    """tpu-like: every call padded to a compiled bucket; no extend_all, so prompt logprobs
    come from the decode stand-in."""
    expected = {str(i): alone(Engine(tpu_artifact), p, NEW_TOKENS)[0] for i, p in enumerate(PROMPTS)}
    llm = LLMEngine(Engine(tpu_artifact), SchedulerConfig(max_num_seqs=6, max_num_batched_tokens=9))
    assert llm._has_extend and not llm._has_all_logits
    assert llm.scheduler.config.long_prefill_token_threshold == 16  # no chunk longer than the longest bucket
    final = run_all(llm, SamplingParams(max_tokens=NEW_TOKENS, stop_token_ids=()))
    assert {rid: o.outputs[0].token_ids for rid, o in final.items()} == expected
    assert llm.stats.num_preemptions > 0 and llm.stats.prefix_cache_hits > 0 and llm.stats.num_pages_used == 0
    llm.add_request("lp", PROMPTS[0], SamplingParams(max_tokens=1, stop_token_ids=(), prompt_logprobs=0))
    out = None
    while llm.has_unfinished_requests():
        out = (llm.step() or [out])[0]
    assert out.outputs[0].token_ids == expected["0"][:1] and all(e is not None for e in out.prompt_logprobs[1:])
