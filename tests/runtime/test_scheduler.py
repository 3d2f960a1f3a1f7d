"""Scheduler + LLMEngine on the fake executor (tests/runtime/fake_executor.py).

The fake computes logits from the tokens it reads back through the block tables, so every
test that compares tokens with `reference_greedy` (the request alone, no engine at all)
also checks the pages: tables, sharing, cache hits and positions after preemption.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.errors import LlmircError, PoolExhaustedError, PromptTooLongError, RequestError, SchedulerConfigError
from llmirc.runtime.llm_engine import LLMEngine, RequestOutput
from llmirc.runtime.sampling import SamplingError, SamplingParams
from llmirc.runtime.scheduler import SchedulerConfig

from tests.runtime.fake_executor import VOCAB, FakeExecutor, V1FakeExecutor, reference_greedy

PAGE = 4
MAX_STEPS = 5000  # far more than any test needs: reaching it means the engine hangs


def make_engine(num_pages: int = 64, executor_cls=FakeExecutor, max_seq_len: int = 64, **config) -> LLMEngine:
    config.setdefault("max_num_seqs", 16)
    config.setdefault("max_num_batched_tokens", 256)
    ex = executor_cls(num_pages, PAGE, max_seq_len)
    engine = LLMEngine(ex, SchedulerConfig(**config))
    ex.page_pool = engine.pool  # every write checks that its page is not shared
    return engine


def prompts(count: int, seed: int = 0, lo: int = 3, hi: int = 20) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=int(rng.integers(lo, hi))).tolist() for _ in range(count)]


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, RequestOutput]:
    """Add every request, step until all are finished (or fail on a hang); the final outputs."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, prompt, params)
    return drain(engine)


def drain(engine: LLMEngine) -> dict[str, RequestOutput]:
    final: dict[str, RequestOutput] = {}
    for _ in range(MAX_STEPS):
        if not engine.has_unfinished_requests():
            return final
        for out in engine.step():
            assert out.request_id not in final, "a request reported after it finished"
            if out.finished:
                final[out.request_id] = out
    raise AssertionError(f"no progress after {MAX_STEPS} steps: {engine.stats}")


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, stop_token_ids=(), **kw)


def tokens_of(final: dict[str, RequestOutput]) -> dict[str, list[int]]:
    return {rid: out.outputs[0].token_ids for rid, out in final.items()}


def assert_all_free(engine: LLMEngine) -> None:
    """Nothing but the prefix cache holds a page, and dropping the cache frees them all."""
    assert engine.stats.num_pages_used == 0 and engine.stats.num_running == engine.stats.num_waiting == 0
    engine.reset_prefix_cache()
    assert engine.pool.free_pages == engine.pool.capacity


# ----------------------------------------------------------------------------- greedy = alone

def test_batched_greedy_equals_each_request_alone():
    ps = prompts(6)
    engine = make_engine()
    final = run(engine, {str(i): (p, greedy(10)) for i, p in enumerate(ps)})
    assert tokens_of(final) == {str(i): reference_greedy(p, 10)[0] for i, p in enumerate(ps)}
    assert all(o.outputs[0].finish_reason == "length" for o in final.values())
    assert_all_free(engine)


def test_one_step_mixes_chunked_prefill_and_decode_under_the_budget():
    engine = make_engine(max_num_batched_tokens=8)
    engine.add_request("short", [1, 2, 3], greedy(6))
    engine.step()  # prefill of "short" (3 tokens), then it decodes one token a step
    engine.add_request("long", list(range(5, 25)), greedy(3))  # 20 tokens: 7 per step at most
    engine.executor.calls.clear()
    engine.step()
    kinds = {c[0]: c for c in engine.executor.calls}
    assert set(kinds) == {"decode", "extend"}  # one decode row + one prefill chunk, in one step
    assert kinds["extend"][3].tolist() == [7] and kinds["decode"][1].shape == (1, 1)
    final = drain(engine)
    assert tokens_of(final) == {"short": reference_greedy([1, 2, 3], 6)[0],
                                "long": reference_greedy(list(range(5, 25)), 3)[0]}


@pytest.mark.parametrize("budget", [1, 3, 5, 7])
def test_chunked_prefill_gives_the_tokens_of_unchunked(budget):
    ps = prompts(4, seed=1, lo=9, hi=30)
    requests = {str(i): (p, greedy(8)) for i, p in enumerate(ps)}
    whole = tokens_of(run(make_engine(max_num_batched_tokens=512), requests))
    engine = make_engine(max_num_batched_tokens=budget)
    chunked = tokens_of(run(engine, requests))
    assert chunked == whole == {str(i): reference_greedy(p, 8)[0] for i, p in enumerate(ps)}
    assert max(int(c[3].sum()) for c in engine.executor.calls) <= budget


def test_long_prefill_threshold_caps_one_request_per_step():
    engine = make_engine(max_num_batched_tokens=64, long_prefill_token_threshold=5)
    final = run(engine, {"a": (list(range(1, 30)), greedy(4))})
    assert tokens_of(final)["a"] == reference_greedy(list(range(1, 30)), 4)[0]
    assert max(int(c[3].max()) for c in engine.executor.calls) == 5


def test_max_num_seqs_caps_the_running_set():
    engine = make_engine(max_num_seqs=2)
    for i, p in enumerate(prompts(5, seed=2)):
        engine.add_request(str(i), p, greedy(5))
    seen_running = []
    while engine.has_unfinished_requests():
        engine.step()
        seen_running.append(engine.stats.num_running)
    assert max(seen_running) == 2
    assert max(len(c[1]) for c in engine.executor.calls) <= 2


# ----------------------------------------------------------------------------- preemption

def test_preemption_under_a_tiny_pool_gives_the_tokens_of_a_large_pool():
    ps = prompts(10, seed=3, lo=4, hi=18)
    requests = {str(i): (p, greedy(14)) for i, p in enumerate(ps)}
    large = make_engine(num_pages=200)
    expected = tokens_of(run(large, requests))
    assert large.stats.num_preemptions == 0
    # 9 usable pages = 36 slots: one request needs up to 8 pages, all ten need about 60.
    small = make_engine(num_pages=10)
    got = tokens_of(run(small, requests))
    assert got == expected == {str(i): reference_greedy(p, 14)[0] for i, p in enumerate(ps)}
    assert small.stats.num_preemptions > 0
    assert_all_free(small)


@pytest.mark.parametrize("caching", [True, False])
def test_preempted_request_resumes_first_at_the_right_positions(caching):
    engine = make_engine(num_pages=7, enable_prefix_caching=caching)  # 6 pages = 24 slots
    a, b = list(range(1, 10)), list(range(11, 20))  # 9 tokens each, up to 9 + 10 - 1 = 18 slots = 5 pages
    engine.add_request("a", a, greedy(10))
    engine.add_request("b", b, greedy(10))
    engine.add_request("c", [5, 6], greedy(2))  # waits behind them
    final: dict[str, RequestOutput] = {}
    admitted_after_preemption: list[str] = []
    for _ in range(MAX_STEPS):
        if not engine.has_unfinished_requests():
            break
        before = engine.stats.num_preemptions
        final.update((o.request_id, o) for o in engine.step() if o.finished)
        if engine.stats.num_preemptions > before:  # "b" (the newest) went back to the front
            assert [s.request_id for s in engine.scheduler.waiting] == ["b", "c"]
        elif engine.stats.num_preemptions:
            admitted_after_preemption += [s.request_id for s in engine.scheduler.running
                                          if s.request_id not in admitted_after_preemption + ["a"]]
    assert engine.stats.num_preemptions > 0 and list(final)[0] == "a"
    assert admitted_after_preemption == ["b", "c"]  # the preempted one resumed first
    # "b" was recomputed from its prompt + output tokens: still the tokens of it alone
    assert tokens_of(final) == {"a": reference_greedy(a, 10)[0], "b": reference_greedy(b, 10)[0],
                                "c": reference_greedy([5, 6], 2)[0]}


def test_request_that_cannot_fit_alone_is_refused_before_queueing():
    engine = make_engine(num_pages=4)  # 3 pages = 12 slots
    with pytest.raises(PoolExhaustedError, match=r"request 'x' needs up to 5 KV pages .* only 3; raise --num-pages"):
        engine.add_request("x", list(range(1, 11)), greedy(8))
    assert not engine.has_unfinished_requests()
    engine.add_request("y", list(range(1, 11)), greedy(3))  # 10 + 3 - 1 = 12 slots: fits exactly
    assert tokens_of(drain(engine)) == {"y": reference_greedy(list(range(1, 11)), 3)[0]}


def test_many_requests_through_a_pool_that_holds_one_at_a_time():
    ps = prompts(6, seed=4, lo=8, hi=13)
    engine = make_engine(num_pages=6, max_seq_len=32)  # 5 pages: each needs 4-5
    final = run(engine, {str(i): (p, greedy(8)) for i, p in enumerate(ps)})
    assert tokens_of(final) == {str(i): reference_greedy(p, 8)[0] for i, p in enumerate(ps)}
    assert_all_free(engine)


# ----------------------------------------------------------------------------- abort

@pytest.mark.parametrize("caching", [True, False])
def test_abort_frees_pages_at_once(caching):
    engine = make_engine(num_pages=40, enable_prefix_caching=caching, max_num_batched_tokens=6)
    ps = prompts(5, seed=5, lo=10, hi=20)
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, greedy(20))
    for _ in range(4):
        engine.step()
    assert engine.stats.num_pages_used > 0 and engine.stats.num_waiting > 0  # some run, some wait
    for i in range(5):
        engine.abort(str(i))
    engine.abort("unknown")  # no-op
    assert engine.stats.num_pages_used == 0 and engine.stats.num_running == engine.stats.num_waiting == 0
    if not caching:
        assert engine.pool.free_pages == engine.pool.capacity
    outs = engine.step()
    assert sorted(o.request_id for o in outs) == [str(i) for i in range(5)]
    assert all(o.finished and o.outputs[0].finish_reason == "abort" for o in outs)
    assert not engine.has_unfinished_requests() and engine.step() == []
    assert_all_free(engine)


def test_abort_of_one_request_leaves_the_others_intact():
    ps = prompts(3, seed=6)
    engine = make_engine()
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, greedy(12))
    engine.step()
    engine.step()
    engine.abort("1")
    final = drain(engine)
    assert final["1"].outputs[0].finish_reason == "abort"
    assert tokens_of(final)["0"] == reference_greedy(ps[0], 12)[0]
    assert tokens_of(final)["2"] == reference_greedy(ps[2], 12)[0]
    assert_all_free(engine)


# ----------------------------------------------------------------------------- prefix cache

def test_prefix_hit_is_counted_and_gives_the_tokens_of_a_miss():
    shared = list(range(1, 15))  # 14 tokens: 3 full pages
    a, b = shared + [20, 21], shared + [30]
    engine = make_engine()
    first = run(engine, {"a": (a, greedy(6))})
    assert first["a"].num_cached_tokens == 0
    assert (engine.stats.prefix_cache_queries, engine.stats.prefix_cache_hits) == (16, 0)
    second = run(engine, {"b": (b, greedy(6))})
    assert second["b"].num_cached_tokens == 12  # the 3 full pages of the shared prefix
    assert (engine.stats.prefix_cache_queries, engine.stats.prefix_cache_hits) == (16 + 15, 12)
    miss = run(make_engine(enable_prefix_caching=False), {"b": (b, greedy(6))})
    assert tokens_of(second) == tokens_of(miss) == {"b": reference_greedy(b, 6)[0]}
    computed = engine.executor.calls[-6:]
    assert computed[0][2].tolist() == [12]  # b's first step started at position 12


def test_identical_prompt_hit_is_capped_at_length_minus_one():
    p = list(range(1, 13))  # exactly 3 pages
    engine = make_engine()
    run(engine, {"a": (p, greedy(4))})
    out = run(engine, {"b": (p, greedy(4))})
    assert out["b"].num_cached_tokens == 8  # not 12: the last token must be computed for its logits
    assert tokens_of(out)["b"] == reference_greedy(p, 4)[0]


def test_generated_tokens_are_cached_too():
    p = list(range(1, 7))
    engine = make_engine()
    first = run(engine, {"a": (p, greedy(10))})
    follow = p + first["a"].outputs[0].token_ids  # a multi-turn follow-up: prompt + answer + more
    out = run(engine, {"b": (follow + [3], greedy(3))})
    assert out["b"].num_cached_tokens == 12  # (6 + 10 - 1 computed) // 4 = 3 full pages
    assert tokens_of(out)["b"] == reference_greedy(follow + [3], 3)[0]


def test_cache_evicts_to_make_room_and_stays_correct():
    engine = make_engine(num_pages=12)  # 11 pages: the cache fills them up, then must give way
    ps = prompts(12, seed=7, lo=8, hi=16)
    for i, p in enumerate(ps):
        assert tokens_of(run(engine, {str(i): (p, greedy(6))}))[str(i)] == reference_greedy(p, 6)[0]
    assert engine.scheduler.cache.num_cached_pages <= engine.pool.capacity
    assert_all_free(engine)


def test_prompt_logprobs_request_takes_no_cached_prefix():
    p = list(range(1, 15))
    engine = make_engine()
    run(engine, {"a": (p, greedy(2))})
    out = run(engine, {"b": (p, greedy(2, prompt_logprobs=1))})
    assert out["b"].num_cached_tokens == 0 and all(e is not None for e in out["b"].prompt_logprobs[1:])


# ----------------------------------------------------------------------------- n > 1, seeds

def test_n_completions_share_the_prompt_pages():
    prompt = list(range(1, 19))  # 18 tokens: 4 full pages to share
    engine = make_engine()
    engine.add_request("r", prompt, SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=6, stop_token_ids=()))
    final = drain(engine)
    out = final["r"]
    assert [c.index for c in out.outputs] == [0, 1, 2] and out.finished
    # the prompt was computed once, then each completion computed its own 2 tail tokens
    assert [c[3].tolist() for c in engine.executor.calls if c[0] == "extend"] == [[18], [2, 2]]
    tables = [row for c in engine.executor.calls for row in c[4].tolist()]
    firsts = {tuple(t[:4]) for t in tables if len(t) >= 5}
    assert len(firsts) == 1  # every completion's table starts with the same 4 pages
    assert engine.executor.tokens_computed == 18 + 2 * 2 + 3 * 5  # prompt once, tails, 5 decodes each
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1  # different draws per completion
    assert_all_free(engine)


def test_n_completions_share_pages_without_the_prefix_cache():
    prompt = list(range(1, 19))
    engine = make_engine(enable_prefix_caching=False)
    engine.add_request("r", prompt, SamplingParams(n=2, max_tokens=4, stop_token_ids=()))
    out = drain(engine)["r"]
    assert [c.token_ids for c in out.outputs] == [reference_greedy(prompt, 4)[0]] * 2
    assert engine.executor.tokens_computed == 18 + 2 + 2 * 3
    assert engine.pool.free_pages == engine.pool.capacity


def _sampled(engine_kwargs, requests):
    return {rid: [c.token_ids for c in o.outputs] for rid, o in run(make_engine(**engine_kwargs), requests).items()}


def test_seeded_sampling_is_the_same_alone_and_batched():
    ps = prompts(5, seed=8)
    params = {str(i): SamplingParams(temperature=1.0, top_p=0.9, seed=100 + i, max_tokens=10, stop_token_ids=())
              for i in range(5)}
    alone = {rid: _sampled({}, {rid: (ps[int(rid)], p)})[rid] for rid, p in params.items()}
    batched = _sampled({}, {rid: (ps[int(rid)], p) for rid, p in params.items()})
    squeezed = _sampled({"num_pages": 10, "max_num_batched_tokens": 5},
                        {rid: (ps[int(rid)], p) for rid, p in params.items()})
    assert alone == batched == squeezed
    assert len({tuple(v[0]) for v in alone.values()}) == 5
    with_n = _sampled({}, {"x": (ps[0], SamplingParams(n=2, temperature=1.0, top_p=0.9, seed=100, max_tokens=10,
                                                       stop_token_ids=()))})
    assert with_n["x"][0] == alone["0"][0]  # completion 0 of a seeded n > 1 request draws from `seed`


def test_unseeded_requests_draw_independently():
    p = [1, 2, 3]
    out = _sampled({}, {str(i): (p, SamplingParams(temperature=2.0, max_tokens=12, stop_token_ids=()))
                        for i in range(4)})
    assert len({tuple(v[0]) for v in out.values()}) > 1


# ----------------------------------------------------------------------------- everything at once

@pytest.mark.parametrize("seed", range(4))
def test_greedy_never_changes_preempted_cached_chunked_batched(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, VOCAB, size=12).tolist()
    ps = [base[:int(rng.integers(2, 12))] + rng.integers(0, VOCAB, size=int(rng.integers(1, 10))).tolist()
          for _ in range(12)]  # shared prefixes of varied length
    max_tokens = [int(rng.integers(1, 16)) for _ in ps]
    requests = {str(i): (p, greedy(m)) for i, (p, m) in enumerate(zip(ps, max_tokens))}
    expected = {str(i): reference_greedy(p, m)[0] for i, (p, m) in enumerate(zip(ps, max_tokens))}
    engine = make_engine(num_pages=12, max_num_batched_tokens=int(rng.integers(3, 20)), max_num_seqs=6)
    assert tokens_of(run(engine, requests)) == expected
    assert engine.stats.num_preemptions > 0 and engine.stats.prefix_cache_hits > 0
    assert engine.stats.generation_tokens == sum(max_tokens) and engine.stats.prompt_tokens == sum(map(len, ps))
    assert_all_free(engine)


def test_v1_executor_gives_the_same_tokens():
    """Without `extend`, prefill + one decode per position stand in for it (ABI v1 artifacts)."""
    ps = prompts(5, seed=9, lo=6, hi=20)
    requests = {str(i): (p, greedy(8, prompt_logprobs=2 if i == 0 else None)) for i, p in enumerate(ps)}
    v2 = run(make_engine(num_pages=14, max_num_batched_tokens=9), requests)
    engine = make_engine(num_pages=14, max_num_batched_tokens=9, executor_cls=V1FakeExecutor)
    v1 = run(engine, requests)
    assert tokens_of(v1) == tokens_of(v2) == {str(i): reference_greedy(p, 8)[0] for i, p in enumerate(ps)}
    assert v1["0"].prompt_logprobs == v2["0"].prompt_logprobs
    assert {c[0] for c in engine.executor.calls} == {"prefill", "decode"}


# ----------------------------------------------------------------------------- limits and errors

def test_max_model_len_ends_with_length():
    engine = make_engine(max_seq_len=20)
    out = run(engine, {"a": (list(range(1, 16)), greedy(50))})["a"].outputs[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"
    capped = make_engine(max_model_len=17)
    assert capped.max_model_len == 17
    assert len(run(capped, {"a": (list(range(1, 16)), greedy(50))})["a"].outputs[0].token_ids) == 2


def test_bad_requests_are_refused_before_queueing():
    engine = make_engine(max_seq_len=20)
    with pytest.raises(PromptTooLongError, match="request 'a' has 21 prompt tokens but the model's max length is 20"):
        engine.add_request("a", [1] * 21, greedy(2))
    with pytest.raises(RequestError, match="empty prompt"):
        engine.add_request("a", [], greedy(2))
    with pytest.raises(RequestError, match=f"token id {VOCAB} outside the vocabulary"):
        engine.add_request("a", [1, VOCAB], greedy(2))
    with pytest.raises(SamplingError, match="stop strings need a tokenizer"):
        engine.add_request("a", [1], SamplingParams(stop=("x",)))
    engine.add_request("a", [1], greedy(2))
    with pytest.raises(RequestError, match="already in use"):
        engine.add_request("a", [2], greedy(2))
    assert engine.stats.num_waiting == 1
    with pytest.raises(LlmircError):
        engine.add_request("b", [1], {"max_tokens": 3})
    with pytest.raises(RequestError, match="list of token ids"):
        engine.add_request("b", ["x"], greedy(2))


def test_max_model_len_past_the_model_is_refused():
    with pytest.raises(SchedulerConfigError, match="max_model_len 65 is more than the model's max_seq_len 64"):
        make_engine(max_model_len=65)


@pytest.mark.parametrize("kwargs", [{"max_num_seqs": 0}, {"max_num_batched_tokens": 0}, {"max_model_len": 0},
                                    {"long_prefill_token_threshold": -1}])
def test_bad_scheduler_config(kwargs):
    with pytest.raises(SchedulerConfigError):
        SchedulerConfig(**kwargs)


def test_stop_token_and_eos():
    p = [5, 6, 7]
    full, _ = reference_greedy(p, 12)
    stop = full[4]
    engine = LLMEngine(FakeExecutor(64, PAGE), SchedulerConfig(), eos_token_ids=(stop,))
    out = run(engine, {"eos": (p, SamplingParams(max_tokens=12)),
                       "ignore": (p, SamplingParams(max_tokens=12, ignore_eos=True)),
                       "explicit": (p, SamplingParams(max_tokens=12, stop_token_ids=(full[2],)))})
    c = {rid: o.outputs[0] for rid, o in out.items()}
    assert (c["eos"].token_ids, c["eos"].finish_reason, c["eos"].stop_reason) == (full[:full.index(stop) + 1], "stop",
                                                                                stop)
    assert (c["ignore"].token_ids, c["ignore"].finish_reason) == (full, "length")
    assert c["explicit"].token_ids == full[:full.index(full[2]) + 1] and c["explicit"].stop_reason == full[2]


def test_outputs_stream_new_tokens_once():
    engine = make_engine()
    engine.add_request("a", [1, 2, 3], greedy(5))
    streamed, last = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            c = out.outputs[0]
            streamed += c.new_token_ids
            assert c.token_ids == streamed
            last = out
    assert last.finished and streamed == reference_greedy([1, 2, 3], 5)[0]
    assert last.prompt_token_ids == [1, 2, 3] and last.prompt_logprobs is None and last.outputs[0].logprobs is None


@pytest.mark.parametrize("seed", range(3))
def test_random_arrivals_and_aborts_leak_no_page(seed):
    """Requests arrive and are aborted between steps, under a tight pool: the ones that finish
    have their tokens alone, the aborted ones stop at once, and every page comes back."""
    rng = np.random.default_rng(100 + seed)
    engine = make_engine(num_pages=9, max_num_batched_tokens=int(rng.integers(4, 16)), max_num_seqs=5)
    base = rng.integers(0, VOCAB, size=10).tolist()
    sent: dict[str, tuple[list[int], int]] = {}
    final: dict[str, RequestOutput] = {}
    aborted: set[str] = set()
    for step in range(400):
        if len(sent) < 30 and rng.random() < 0.4:
            rid = str(len(sent))
            p = base[:int(rng.integers(0, 10))] + rng.integers(0, VOCAB, size=int(rng.integers(1, 8))).tolist()
            sent[rid] = (p, int(rng.integers(1, 12)))
            engine.add_request(rid, p, greedy(sent[rid][1]))
        live = [r for r in sent if r not in final and r not in aborted]
        if live and rng.random() < 0.05:
            victim = str(rng.choice(live))
            engine.abort(victim)
            aborted.add(victim)
        final.update((o.request_id, o) for o in engine.step() if o.finished)
        if len(sent) == 30 and not engine.has_unfinished_requests():
            break
    assert not engine.has_unfinished_requests() and set(final) == set(sent)
    for rid, (p, m) in sent.items():
        c = final[rid].outputs[0]
        if rid in aborted:
            assert c.finish_reason == "abort" and len(c.token_ids) < m
        else:
            assert c.token_ids == reference_greedy(p, m)[0] and c.finish_reason == "length"
    assert aborted and engine.stats.num_preemptions > 0
    assert_all_free(engine)
