"""Sampling: greedy is argmax, the filters reduce to greedy at their limits, seeds reproduce."""

import numpy as np
import pytest

from llmirc.runtime.sampling import SamplingParams, sample


def _logits(seed=0, batch=4, vocab=50):
    return np.random.default_rng(seed).normal(size=(batch, vocab)).astype(np.float32) * 3


def test_greedy_is_argmax_and_first_on_ties():
    logits = _logits()
    logits[1, [7, 3, 40]] = 100.0  # a three-way tie: the lowest id wins
    out = sample(logits, SamplingParams(), np.random.default_rng(0))
    assert out.dtype == np.int64
    assert out.tolist() == np.argmax(logits, axis=-1).tolist()
    assert out[1] == 3


@pytest.mark.parametrize("seed", range(5))
def test_top_k_1_is_greedy(seed):
    logits = _logits(seed)
    logits[0, [9, 2]] = 50.0  # tie: top-1 must keep the same token as argmax
    params = SamplingParams(temperature=1.5, top_k=1, seed=seed)
    assert sample(logits, params, np.random.default_rng(seed)).tolist() == np.argmax(logits, -1).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_tiny_top_p_is_greedy(seed):
    logits = _logits(seed)
    params = SamplingParams(temperature=1.0, top_p=1e-6)
    assert sample(logits, params, np.random.default_rng(seed)).tolist() == np.argmax(logits, -1).tolist()


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = np.zeros((8, 100), np.float32)  # uniform: every draw is pure chance
    params = SamplingParams(temperature=1.0)

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [sample(logits, params, rng).tolist() for _ in range(3)]

    assert draws(123) == draws(123)
    assert draws(123) != draws(124)


def test_top_k_keeps_only_the_k_best():
    logits = _logits(1, batch=1, vocab=30)
    best = set(np.argsort(-logits[0])[:3].tolist())
    rng = np.random.default_rng(0)
    seen = {int(sample(logits, SamplingParams(temperature=5.0, top_k=3), rng)[0]) for _ in range(300)}
    assert seen == best


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float64))
    rng = np.random.default_rng(0)
    seen = {int(sample(logits, SamplingParams(temperature=1.0, top_p=0.7), rng)[0]) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3


def test_temperature_one_follows_softmax():
    probs = np.array([0.6, 0.3, 0.1])
    logits = np.log(probs)[None, :].repeat(2000, axis=0)
    out = sample(logits, SamplingParams(temperature=1.0), np.random.default_rng(7))
    freq = np.bincount(out, minlength=3) / len(out)
    assert np.allclose(freq, probs, atol=0.04)


@pytest.mark.parametrize("kwargs", [{"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_tokens": 0}])
def test_bad_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)
