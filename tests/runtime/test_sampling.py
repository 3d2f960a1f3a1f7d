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


# ----------------------------------------------------------------------------- repetition penalty

def _transformers_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: the definition we follow, run as is."""
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    proc = RepetitionPenaltyLogitsProcessor(penalty)
    return proc(torch.from_numpy(seen), torch.from_numpy(logits.copy())).numpy()


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    from llmirc.runtime.sampling import apply_repetition_penalty

    logits = _logits(3, batch=3, vocab=40)
    seen = np.random.default_rng(1).integers(0, 40, size=(3, 12))  # with repeats: each counts once
    got = apply_repetition_penalty(logits, seen.tolist(), penalty)
    np.testing.assert_allclose(got, _transformers_penalty(logits, seen, penalty), rtol=1e-6)
    untouched = np.ones(logits.shape, bool)
    for row, ids in enumerate(seen):
        untouched[row, ids] = False
    assert np.array_equal(got[untouched], logits[untouched])


def test_repetition_penalty_in_sample_changes_the_greedy_choice():
    logits = np.array([[0.0, 3.0, 2.5, -1.0], [0.0, 3.0, 2.5, -1.0]], np.float32)
    params = SamplingParams(repetition_penalty=1.5)
    # Row 0 has seen token 1: 3 / 1.5 = 2 < 2.5. Row 1 has seen only token 3 (negative: * 1.5).
    assert sample(logits, params, np.random.default_rng(0), seen=[[1, 1, 0], [3]]).tolist() == [2, 1]
    with pytest.raises(ValueError, match="needs the token ids"):
        sample(logits, params, np.random.default_rng(0))


class _FixedLogitsEngine:
    """Just enough of an ABI v1 Engine for LLMEngine: every step returns the same logits."""

    def __init__(self, logits):
        self.logits = np.asarray(logits, np.float32)
        self.num_pages, self.page_size, self.max_seq_len, self.vocab_size = 32, 4, 64, len(logits)

    def prefill(self, tokens, lens, tables):
        return np.repeat(self.logits[None], len(tokens), 0)

    def decode(self, tokens, positions, tables):
        return np.repeat(self.logits[None], len(tokens), 0)


def test_engine_penalises_prompt_and_output_tokens():
    """A numpy reference loop (penalty over prompt + output, greedy) against LLMEngine."""
    from llmirc.runtime import LLMEngine, SchedulerConfig

    base = np.array([0.1, 2.0, 1.9, 1.7, -0.5, 1.0], np.float32)
    prompt, penalty, steps = [1, 4], 1.25, 8
    seen, expected = list(prompt), []
    for _ in range(steps):
        x = base.copy()
        for t in set(seen):
            x[t] = x[t] / penalty if x[t] > 0 else x[t] * penalty
        expected.append(int(np.argmax(x)))
        seen.append(expected[-1])
    llm = LLMEngine(_FixedLogitsEngine(base), SchedulerConfig())
    llm.add_request("r", prompt, SamplingParams(max_tokens=steps, repetition_penalty=penalty))
    got = []
    while llm.has_unfinished_requests():
        for out in llm.step():
            got += out.outputs[0].new_token_ids
    assert got == expected and len(set(got)) > 1  # without the penalty: token 1 every time
    assert llm.stats.prompt_tokens == 2 and llm.stats.generation_tokens == steps


# ----------------------------------------------------------------------------- stop strings

def _reference_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


@pytest.mark.parametrize("seed", range(30))
def test_stop_string_matcher_against_a_whole_text_reference(seed):
    from llmirc.runtime.stop import StopStringMatcher

    rng = np.random.default_rng(seed)
    alphabet = list("ab c")
    pieces = ["".join(rng.choice(alphabet, size=rng.integers(0, 4))) for _ in range(25)]
    stops = ["".join(rng.choice(alphabet, size=rng.integers(1, 4))) for _ in range(rng.integers(1, 3))]
    m = StopStringMatcher(stops)
    shown, fed = "", ""
    for piece in pieces:
        fed += piece
        shown += m.feed(piece)
        expected, stopped = _reference_stop(fed, stops)
        assert expected.startswith(shown)  # nothing shown that a stop string could take back
        if stopped:
            break
    if not m.stopped:
        shown += m.flush()
    assert (shown, m.stopped) == _reference_stop(fed, stops) and m.text == shown
