"""Structured output on the embedded default model (a 1.25M-parameter model trained on the KJV
bible, whose free text is never JSON): 50 sampled generations per constraint kind at
temperature 1 with 50 seeds all parse and validate."""

from __future__ import annotations

import json
import re

import pytest

from llmirc.runtime.llm_engine import LLMEngine
from llmirc.runtime.sampling import SamplingError, SamplingParams
from llmirc.runtime.structured import Constraint
from llmirc.testing.structured import SIX_FIELD_SCHEMA as SCHEMA

REGEX = r"[A-Z][a-z]{2,8} [0-9]{1,3}:[0-9]{1,3}"
CHOICES = ["Genesis", "Exodus", "Leviticus", "Numbers"]
N = 50


@pytest.fixture(scope="module")
def engine(default_artifact):
    return LLMEngine.from_artifact(default_artifact, max_num_seqs=N)


def _run(engine: LLMEngine, prompt: str, params: list[SamplingParams], bounded: bool = True) -> list[str]:
    """The texts, in order; `bounded` (the constraint has a finite language) means every
    request must end because its grammar is complete ("stop"), none at max_tokens."""
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False).ids
    for i, p in enumerate(params):
        engine.add_request(f"r{i}", [1] + ids, p)
    texts: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for _ in range(2000):  # bounded: every request ends long before this
        for out in engine.step():
            if out.finished:
                texts[out.request_id], reasons[out.request_id] = out.outputs[0].text, out.outputs[0].finish_reason
        if not engine.has_unfinished_requests():
            break
    assert len(texts) == len(params)
    if bounded:
        assert set(reasons.values()) == {"stop"}, reasons
    else:  # an unbounded language can run into max_tokens, unfinished (as in vLLM); some end
        assert "stop" in reasons.values(), reasons
    return [texts[f"r{i}"] for i in range(len(params)) if bounded or reasons[f"r{i}"] == "stop"]


def _sampled(constraint: Constraint | None, max_tokens: int = 300) -> list[SamplingParams]:
    return [SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, structured=constraint)
            for seed in range(N)]


def test_json_schema_always_validates(engine):
    import jsonschema

    for text in _run(engine, "And the LORD said", _sampled(Constraint("json", SCHEMA))):
        jsonschema.validate(json.loads(text), SCHEMA)


def test_regex_always_matches(engine):
    for text in _run(engine, "In the beginning", _sampled(Constraint("regex", REGEX))):
        assert re.fullmatch(REGEX, text), text


def test_choice_is_always_one_of_them(engine):
    texts = _run(engine, "The book of", _sampled(Constraint("choice", CHOICES)))
    assert set(texts) <= set(CHOICES) and len(set(texts)) > 1  # sampled: not always the same one


def test_json_object_and_lark_grammar(engine):
    lark = 'start: "Amen" | "Selah" " " /[0-9]{1,2}/'
    for text in _run(engine, "Praise", _sampled(Constraint("json_object"), 200)[:10], bounded=False):
        assert isinstance(json.loads(text), dict)
    for text in _run(engine, "Praise", _sampled(Constraint("grammar", lark))[:10]):
        assert text == "Amen" or re.fullmatch(r"Selah [0-9]{1,2}", text), text


def test_free_text_of_this_model_is_not_json(engine):
    """What makes the tests above mean something: unconstrained, the model writes scripture."""
    texts = []
    for i, p in enumerate(_sampled(None, 60)[:10]):
        engine.add_request(f"free{i}", [1] + engine.tokenizer.encode("{", add_special_tokens=False).ids, p)
    for _ in range(200):
        texts += [o.outputs[0].text for o in engine.step() if o.finished]
        if not engine.has_unfinished_requests():
            break
    assert len(texts) == 10
    for text in texts:
        with pytest.raises(ValueError):
            json.loads("{" + text)


@pytest.mark.parametrize("constraint,needle", [
    (Constraint("json", '{"type": "object", "properties": '), "not valid JSON"),
    (Constraint("regex", "[a-z"), "invalid regex constraint"),
    (Constraint("grammar", "start: undefined_rule"), "invalid grammar constraint"),
])
def test_invalid_constraint_is_refused_before_queueing(engine, constraint, needle):
    with pytest.raises(SamplingError, match=needle):
        engine.add_request("bad", [1, 5, 6], SamplingParams(structured=constraint))
    assert not engine.has_unfinished_requests()
