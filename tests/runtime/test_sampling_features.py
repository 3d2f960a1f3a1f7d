"""The per-request sampling features of SamplingParams, each against its own numpy computation.

Through LLMEngine on the fake executor (whose logits are `fake_logits` of the sequence), the
references below re-run the request alone in plain numpy: penalties, logprobs and prompt
logprobs are checked value by value.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmirc.runtime.llm_engine import LLMEngine
from llmirc.runtime.sampling import (SamplingError, SamplingParams, apply_presence_frequency_penalty, sample,
                                     top_logprobs)
from llmirc.runtime.scheduler import SchedulerConfig
from tests.runtime.fake_executor import VOCAB, FakeExecutor, fake_logits


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - (m + np.log(np.sum(np.exp(x - m))))


def engine(**config) -> LLMEngine:
    return LLMEngine(FakeExecutor(64, 4, 64), SchedulerConfig(**config))


def run_one(params: SamplingParams, prompt: list[int], **config):
    e = engine(**config)
    e.add_request("r", prompt, params)
    final = None
    while e.has_unfinished_requests():
        for out in e.step():
            final = out
    return final


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs", [
    {"n": 0}, {"n": 1.5}, {"min_p": -0.1}, {"min_p": 1.5}, {"presence_penalty": 2.5}, {"frequency_penalty": -3.0},
    {"logprobs": -1}, {"logprobs": 21}, {"prompt_logprobs": -2}, {"seed": 1.5}, {"stop_token_ids": (-1,)},
])
def test_out_of_range_params_are_sampling_errors(kwargs):
    with pytest.raises(SamplingError):
        SamplingParams(**kwargs)


def test_defaults_are_off():
    p = SamplingParams()
    assert (p.n, p.min_p, p.presence_penalty, p.frequency_penalty, p.logprobs, p.prompt_logprobs, p.ignore_eos) == \
        (1, 0.0, 0.0, 0.0, None, None, False)


# ----------------------------------------------------------------------------- min_p

def test_min_p_keeps_tokens_within_the_ratio_of_the_best():
    logits = np.log(np.array([[0.4, 0.3, 0.15, 0.1, 0.05]]))
    # min_p 0.3: threshold 0.12 -> tokens 0, 1, 2 stay, renormalised to 0.4/0.85, 0.3/0.85, 0.15/0.85
    rng = np.random.default_rng(0)
    draws = sample(np.repeat(logits, 6000, 0), SamplingParams(temperature=1.0, min_p=0.3), rng)
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0], atol=0.025)
    assert freq[3] == freq[4] == 0


def test_min_p_acts_after_temperature():
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    # at temperature 0.5 the probabilities are ~ p^2: 0.25, 0.09, 0.04 -> ratios 1, 0.36, 0.16
    draws = sample(np.repeat(logits, 3000, 0), SamplingParams(temperature=0.5, min_p=0.3), np.random.default_rng(1))
    assert set(np.unique(draws).tolist()) == {0, 1}


def test_min_p_one_is_greedy():
    logits = np.random.default_rng(2).normal(size=(6, 30)).astype(np.float32)
    out = sample(logits, SamplingParams(temperature=1.0, min_p=1.0), np.random.default_rng(0))
    assert out.tolist() == logits.argmax(-1).tolist()


# ----------------------------------------------------------------------------- presence / frequency

def test_presence_frequency_penalty_against_a_loop():
    logits = np.random.default_rng(3).normal(size=(2, 10)).astype(np.float32)
    outputs = [[1, 1, 4, 9, 1], []]
    got = apply_presence_frequency_penalty(logits, outputs, 0.5, 0.25)
    want = logits.astype(np.float64).copy()
    for tok in set(outputs[0]):
        want[0, tok] -= 0.5 + 0.25 * outputs[0].count(tok)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _reference(prompt, steps, rep=1.0, presence=0.0, frequency=0.0):
    """Greedy with the penalties, written out: repetition over prompt + output, the others over output."""
    seq, out = list(prompt), []
    for _ in range(steps):
        x = fake_logits(seq).astype(np.float64)
        for t in set(seq):
            x[t] = x[t] / rep if x[t] > 0 else x[t] * rep
        for t in set(out):
            x[t] -= presence + frequency * out.count(t)
        out.append(int(np.argmax(x)))
        seq.append(out[-1])
    return out


@pytest.mark.parametrize("rep,presence,frequency", [(1.0, 0.0, 2.0), (1.0, 1.5, 0.0), (1.3, 0.5, 0.5),
                                                    (1.0, -1.0, 0.0)])
def test_penalties_through_the_engine(rep, presence, frequency):
    prompt = [3, 1, 4, 1, 5]
    params = SamplingParams(max_tokens=20, stop_token_ids=(), repetition_penalty=rep, presence_penalty=presence,
                            frequency_penalty=frequency)
    got = run_one(params, prompt).outputs[0].token_ids
    assert got == _reference(prompt, 20, rep, presence, frequency)
    if presence > 0 or frequency > 0:
        assert got != _reference(prompt, 20)  # the penalty changed something


def test_presence_penalty_ignores_prompt_tokens():
    prompt = [7, 7, 7]
    out = run_one(SamplingParams(max_tokens=1, stop_token_ids=(), presence_penalty=2.0), prompt).outputs[0]
    assert out.token_ids == [int(np.argmax(fake_logits(prompt)))]  # first token: no output yet, nothing penalised


# ----------------------------------------------------------------------------- logprobs

@pytest.mark.parametrize("k", [0, 1, 5])
def test_logprobs_are_the_raw_model_logprobs(k):
    prompt = [2, 9, 4]
    params = SamplingParams(max_tokens=6, stop_token_ids=(), logprobs=k, temperature=0.8, seed=3)
    out = run_one(params, prompt).outputs[0]
    assert len(out.logprobs) == len(out.token_ids) == 6
    seq = list(prompt)
    for tok, entry in zip(out.token_ids, out.logprobs):
        lp = np_log_softmax(fake_logits(seq))
        best = sorted(range(VOCAB), key=lambda t: (-lp[t], t))[:k]
        assert set(entry) == set(best) | {tok}
        for t, v in entry.items():
            assert v == pytest.approx(lp[t], abs=1e-9)
        seq.append(tok)


def test_top_logprobs_includes_the_sampled_token_and_breaks_ties_by_id():
    row = np.array([1.0, 3.0, 3.0, -2.0])
    assert list(top_logprobs(row, 1, 3)) == [1, 3]
    total = np.log(np.exp(row).sum())
    assert top_logprobs(row, 2, 1) == pytest.approx({1: 3.0 - total, 2: 3.0 - total})


@pytest.mark.parametrize("budget", [256, 3])  # one extend call, or chunks (and decode rows) across steps
def test_prompt_logprobs(budget):
    prompt = [5, 1, 8, 2, 2, 7, 3, 0, 9]
    out = run_one(SamplingParams(max_tokens=2, stop_token_ids=(), prompt_logprobs=2), prompt,
                  max_num_batched_tokens=budget)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for i in range(1, len(prompt)):
        lp = np_log_softmax(fake_logits(prompt[:i]))
        best = sorted(range(VOCAB), key=lambda t: (-lp[t], t))[:2]
        entry = out.prompt_logprobs[i]
        assert set(entry) == set(best) | {prompt[i]}
        assert entry[prompt[i]] == pytest.approx(lp[prompt[i]], abs=1e-9)


def test_n_with_prompt_logprobs_and_logprobs():
    prompt = list(range(1, 11))
    out = run_one(SamplingParams(n=2, max_tokens=3, stop_token_ids=(), prompt_logprobs=0, logprobs=0,
                                 temperature=1.0, seed=4), prompt)
    assert len(out.outputs) == 2 and all(len(c.logprobs) == 3 for c in out.outputs)
    assert all(set(e) == {t} for c in out.outputs for e, t in zip(c.logprobs, c.token_ids))
    assert [list(e) for e in out.prompt_logprobs[1:]] == [[t] for t in prompt[1:]]


# ----------------------------------------------------------------------------- seeds

def test_seed_gives_each_completion_its_own_stream():
    a, b = SamplingParams(seed=5), SamplingParams(seed=5)
    assert a.rng(0).random() == b.rng(0).random() and a.rng(1).random() == b.rng(1).random()
    assert a.rng(0).random() != a.rng(1).random()
    assert SamplingParams(seed=5).rng(0).random() == np.random.default_rng(5).random()


def test_negative_seeds_are_seeds_too():
    assert SamplingParams(seed=-1).rng(0).random() == np.random.default_rng(2**64 - 1).random()
    assert SamplingParams(seed=-1).rng(1).random() == SamplingParams(seed=2**64 - 1).rng(1).random()
