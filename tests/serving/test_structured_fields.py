"""Structured output through /v1/completions and /v1/chat/completions: every spelling of the
constraint (OpenAI response_format, vLLM structured_outputs, guided_*) reaches the engine, and
bad or conflicting constraints are 400s that say what is wrong, on the embedded default model."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from llmirc.runtime.structured import Constraint
from llmirc.serving.server import ServerThread
from llmirc.serving.structured_fields import ConstraintFieldError, constraint_from_fields

from .conftest import real_app
from .sse import sse_events

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "book": {"enum": ["Genesis", "Exodus"]}},
          "required": ["name", "age", "book"], "additionalProperties": False}
REGEX = r"[A-Z][a-z]{2,8} [0-9]{1,3}:[0-9]{1,3}"


def test_each_spelling_gives_its_constraint():
    cases = {
        "response_format": ({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
                            Constraint("json", SCHEMA)),
        "structured_outputs": ({"regex": "a+", "disable_any_whitespace": True}, Constraint("regex", "a+")),
        "guided_choice": (["x", "y"], Constraint("choice", ["x", "y"])),
        "guided_grammar": ("start: \"a\"", Constraint("grammar", "start: \"a\"")),
    }
    for name, (value, want) in cases.items():
        assert constraint_from_fields({name: value})[0] == want, name
    assert constraint_from_fields({"response_format": {"type": "json_object"}})[0] == Constraint("json_object")
    assert constraint_from_fields({"structured_outputs": {"json_object": True}})[0] == Constraint("json_object")
    assert constraint_from_fields({"response_format": {"type": "text"}}) is None
    assert constraint_from_fields({"guided_json": None, "structured_outputs": {}}) is None


def test_malformed_or_conflicting_fields_name_the_field():
    with pytest.raises(ConstraintFieldError, match="`response_format` and `guided_regex`"):
        constraint_from_fields({"response_format": {"type": "json_object"}, "guided_regex": "a"})
    with pytest.raises(ConstraintFieldError, match="`structured_outputs.regex` and `structured_outputs.choice`"):
        constraint_from_fields({"structured_outputs": {"regex": "a", "choice": ["a"]}})
    with pytest.raises(ConstraintFieldError, match="json_schema needs a `schema`"):
        constraint_from_fields({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})
    with pytest.raises(ConstraintFieldError, match="type must be text, json_object or json_schema"):
        constraint_from_fields({"response_format": {"type": "yaml"}})
    with pytest.raises(ConstraintFieldError, match="structured_outputs.structural_tag is not supported"):
        constraint_from_fields({"structured_outputs": {"structural_tag": "x"}})
    with pytest.raises(ConstraintFieldError, match="guided_choice: a choice constraint takes a non-empty list"):
        constraint_from_fields({"guided_choice": []})


@pytest.fixture(scope="module")
def server(default_artifact, template_file):
    app, engine = real_app(default_artifact, template_file, served_model_name=("bible",))
    with ServerThread(app) as url:
        yield url, engine


def _complete(client, **body) -> dict:
    r = client.post("/v1/completions", json={"model": "bible", "prompt": "And God said", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_completions_and_chat_obey_every_spelling(server):
    import httpx

    url, engine = server
    with httpx.Client(base_url=url, timeout=120) as client:
        schema = _complete(client, max_tokens=120, temperature=1.0, seed=3, n=4,
                           response_format={"type": "json_schema",
                                            "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}})
        regex = _complete(client, max_tokens=40, temperature=1.0, seed=4, n=4, structured_outputs={"regex": REGEX})
        old_regex = _complete(client, max_tokens=40, temperature=1.0, seed=5, guided_regex=REGEX)
        choice = _complete(client, max_tokens=10, temperature=1.0, seed=6, n=4, guided_choice=["Yea", "Nay"])
        grammar = _complete(client, max_tokens=20, temperature=1.0, seed=7,
                            guided_grammar='root ::= "amen" | "selah" " " [0-9]')
        chat = client.post("/v1/chat/completions", json={
            "model": "bible", "messages": [{"role": "user", "content": "Who?"}], "max_tokens": 120,
            "temperature": 1.0, "seed": 8, "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}})
        assert chat.status_code == 200, chat.text
        with client.stream("POST", "/v1/chat/completions", json={
                "model": "bible", "messages": [{"role": "user", "content": "Which?"}], "max_tokens": 10,
                "temperature": 1.0, "stream": True, "guided_choice": ["Genesis", "Exodus"]}) as r:
            assert r.status_code == 200
            events = sse_events(list(r.iter_lines()))
    for c in schema["choices"]:
        assert c["finish_reason"] == "stop", c
        jsonschema.validate(json.loads(c["text"]), SCHEMA)
    for c in regex["choices"] + old_regex["choices"]:
        assert re.fullmatch(REGEX, c["text"]) and c["finish_reason"] == "stop", c
    assert {c["text"] for c in choice["choices"]} <= {"Yea", "Nay"}
    assert re.fullmatch(r"amen|selah [0-9]", grammar["choices"][0]["text"])
    jsonschema.validate(json.loads(chat.json()["choices"][0]["message"]["content"]), SCHEMA)
    assert events[-1] == "[DONE]"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert streamed in ("Genesis", "Exodus")
    assert engine.stats.num_pages_used == 0


def test_bad_constraints_are_400s_that_say_what_is_wrong(server):
    import httpx

    url, _ = server
    bad = [
        ({"guided_regex": "([a-z"}, "guided_regex: invalid regex constraint"),
        ({"guided_json": {"type": "object", "properties": {"a": {"type": "integr"}}}}, "guided_json: invalid json constraint"),
        ({"guided_json": "{not json"}, "the JSON schema is not valid JSON"),
        ({"structured_outputs": {"grammar": "root ::= missing_rule"}}, "structured_outputs.grammar: invalid grammar"),
        ({"response_format": {"type": "json_object"}, "guided_choice": ["a"]},
         "`response_format` and `guided_choice`"),
        ({"response_format": {"type": "xml"}}, "response_format type must be"),
        ({"guided_choice": "yes"}, "a choice constraint takes a non-empty list of strings"),
    ]
    with httpx.Client(base_url=url, timeout=60) as client:
        for fields, message in bad:
            for stream in (False, True):
                r = client.post("/v1/completions", json={"model": "bible", "prompt": "x", "max_tokens": 4,
                                                         "stream": stream, **fields})
                assert r.status_code == 400, (fields, r.text)
                err = r.json()["error"]
                assert message in err["message"] and err["type"] == "invalid_request_error", (fields, err)
        r = client.post("/v1/chat/completions", json={"model": "bible", "messages": [{"role": "user", "content": "x"}],
                                                      "max_tokens": 4, "guided_regex": "(("})
        assert r.status_code == 400 and "invalid regex" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "guided_regex"
        assert client.get("/health").status_code == 200  # nothing hung or died
