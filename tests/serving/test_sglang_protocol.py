"""SGLang's native protocol (/generate, /get_model_info, /server_info, /flush_cache) on the
embedded default model: the shapes SGLang's server answers, prompt logprobs that agree with
the engine's own, prefill-only requests, cumulative streams, constraints, and 400s."""

from __future__ import annotations

import json
import math
import re

import httpx
import pytest

from llmirc.serving.server import ServerThread

from .conftest import real_app
from .sse import sse_events


@pytest.fixture(scope="module")
def server(default_artifact):
    app, engine = real_app(default_artifact, served_model_name=("bible",))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client, engine, app.state.model


def _gen(client, **body):
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_model_and_server_info(server, default_artifact):
    client, _, _ = server
    info = client.get("/get_model_info").json()
    assert info["model_path"] == str(default_artifact) and info["is_generation"] is True
    assert info["tokenizer_path"] == str(default_artifact)
    for path in ("/server_info", "/get_server_info"):
        s = client.get(path).json()
        assert s["context_length"] == 256 and s["served_model_name"] == "bible" and "version" in s
    assert client.post("/concate_and_append_request", json={"src_rids": ["a"], "dst_rid": "b"}).status_code == 200


def test_generate_one_text_matches_the_engine(server):
    client, engine, model = server
    out = _gen(client, text="In the beginning", sampling_params={"max_new_tokens": 8, "temperature": 0,
                                                                  "top_k": -1})
    ids = model.encode("In the beginning")
    meta = out["meta_info"]
    assert set(out) == {"text", "output_ids", "meta_info"} and len(out["output_ids"]) == meta["completion_tokens"]
    assert meta["prompt_tokens"] == len(ids) and meta["finish_reason"]["type"] in ("length", "stop")
    assert meta["completion_tokens"] == 8 or meta["finish_reason"]["type"] == "stop"
    assert isinstance(meta["id"], str) and meta["cached_tokens"] >= 0
    assert out["text"] == model.tokenizer.decode(out["output_ids"], skip_special_tokens=True)
    # the same request by OpenAI's route gives the same greedy text
    r = client.post("/v1/completions", json={"prompt": "In the beginning", "max_tokens": 8, "temperature": 0})
    assert r.json()["choices"][0]["text"] == out["text"]


def test_lists_input_ids_n_and_finish_reasons(server):
    client, _, model = server
    batch = _gen(client, text=["And God said", "In the beginning"], sampling_params={"max_new_tokens": 3,
                                                                                     "temperature": 0})
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0]["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
    ids = model.encode("And God said")
    by_ids = _gen(client, input_ids=ids, sampling_params={"max_new_tokens": 3, "temperature": 0})
    assert isinstance(by_ids, dict) and by_ids["text"] == batch[0]["text"]
    lists = _gen(client, input_ids=[ids, ids], sampling_params={"max_new_tokens": 3, "temperature": 0})
    assert [o["text"] for o in lists] == [batch[0]["text"]] * 2
    n = _gen(client, text="And", sampling_params={"max_new_tokens": 4, "temperature": 1, "n": 3, "seed": 2})
    assert isinstance(n, list) and len(n) == 3 and len({o["meta_info"]["id"] for o in n}) == 3
    stop = _gen(client, text="And God said", sampling_params={"max_new_tokens": 30, "temperature": 0,
                                                              "stop_token_ids": [batch[0]["output_ids"][1]]})
    assert stop["meta_info"]["finish_reason"] == {"type": "stop", "matched": batch[0]["output_ids"][1]}
    assert stop["meta_info"]["completion_tokens"] == 2
    # SGLang cuts max_new_tokens to the context left (256 here) instead of refusing
    long = _gen(client, input_ids=[5] * 250, sampling_params={"max_new_tokens": 128, "ignore_eos": True,
                                                              "temperature": 0})
    assert long["meta_info"]["completion_tokens"] == 6
    assert long["meta_info"]["finish_reason"]["type"] == "length"
    full = _gen(client, input_ids=[5] * 256, sampling_params={"max_new_tokens": 0}, return_logprob=True,
                logprob_start_len=0)
    assert len(full["meta_info"]["input_token_logprobs"]) == 256 and full["output_ids"] == []


def test_prefill_only_logprobs_agree_with_the_engine(server):
    client, engine, model = server
    text = "And God said, Let there be light"
    ids = model.encode(text)
    out = _gen(client, text=text, sampling_params={"max_new_tokens": 0}, return_logprob=True,
               logprob_start_len=0, top_logprobs_num=2, return_text_in_logprobs=True)
    meta = out["meta_info"]
    assert out["text"] == "" and out["output_ids"] == [] and meta["completion_tokens"] == 0
    assert meta["finish_reason"] == {"type": "length", "length": 0}
    lps = meta["input_token_logprobs"]
    assert [e[1] for e in lps] == ids and lps[0][0] is None
    assert [e[2] for e in lps] == [model.token_text(t) for t in ids]
    assert all(isinstance(e[0], float) and e[0] <= 0 for e in lps[1:])
    assert meta["output_token_logprobs"] == [] and len(meta["input_top_logprobs"]) == len(ids)
    assert all(len(t) == 2 and t[0][0] >= t[1][0] for t in meta["input_top_logprobs"][1:])
    # the same numbers as the OpenAI route's echo logprobs (the engine's prompt logprobs)
    r = client.post("/v1/completions", json={"prompt": text, "max_tokens": 1, "echo": True, "logprobs": 0,
                                             "temperature": 0}).json()
    echo = r["choices"][0]["logprobs"]["token_logprobs"][:len(ids)]
    assert all(math.isclose(a[0], b, abs_tol=1e-5) for a, b in zip(lps[1:], echo[1:]))
    # logprob_start_len: positions from there on, the first one padded with null (SGLang's layout)
    part = _gen(client, text=text, sampling_params={"max_new_tokens": 0}, return_logprob=True,
                logprob_start_len=len(ids) - 3)["meta_info"]["input_token_logprobs"]
    assert [e[1] for e in part] == ids[-3:] and part[0][0] is None and part[1][2] is None
    assert all(math.isclose(a[0], b[0], abs_tol=1e-5) for a, b in zip(part[1:], lps[-2:]))
    default = _gen(client, text=text, sampling_params={"max_new_tokens": 2, "temperature": 0},
                   return_logprob=True)["meta_info"]
    assert [e[1] for e in default["input_token_logprobs"]] == ids[-1:]
    assert len(default["output_token_logprobs"]) == 2 and default["output_token_logprobs"][0][2] is None


def test_stream_carries_cumulative_text(server):
    client, _, _ = server
    body = {"text": "In the beginning", "sampling_params": {"max_new_tokens": 12, "temperature": 0},
            "stream": True}
    with client.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # cumulative
    full = _gen(client, **{**body, "stream": False})
    assert texts[-1] == full["text"] and chunks[-1]["meta_info"]["finish_reason"] is not None
    assert sum(len(c["output_ids"]) for c in chunks) == full["meta_info"]["completion_tokens"]
    with client.stream("POST", "/generate", json={**body, "text": ["a", "b"]}) as r:
        batch = sse_events(list(r.iter_lines()))[:-1]
    assert {c["index"] for c in batch} == {0, 1}


def test_constraints_and_flush(server):
    client, engine, _ = server
    regex = r"[0-9]{1,3}:[0-9]{1,3}"
    outs = _gen(client, text=["Genesis "] * 4, sampling_params={"max_new_tokens": 20, "temperature": 1.0,
                                                                "regex": regex})
    assert all(re.fullmatch(regex, o["text"]) and o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs)
    # a bounded integer: an unbounded one can, sampled at temperature 1, run past max_new_tokens
    schema = {"type": "object", "properties": {"verse": {"type": "integer", "minimum": 1, "maximum": 176}},
              "required": ["verse"], "additionalProperties": False}
    js = _gen(client, text="The", sampling_params={"max_new_tokens": 30, "json_schema": json.dumps(schema),
                                                   "temperature": 1.0})
    assert js["meta_info"]["finish_reason"]["type"] == "stop"
    assert isinstance(json.loads(js["text"])["verse"], int)
    _gen(client, text="And God said, Let there be light: and there was light.", sampling_params={"max_new_tokens": 0})
    assert engine.scheduler.cache.unreferenced_pages() > 0
    r = client.post("/flush_cache")
    assert r.status_code == 200 and "flushed" in r.text.lower()
    assert engine.scheduler.cache.unreferenced_pages() == 0


def test_bad_requests_are_400s(server):
    client, _, _ = server
    bad = [
        ({"sampling_params": {"max_new_tokens": 2}}, "exactly one of text and input_ids"),
        ({"text": "a", "input_ids": [1]}, "exactly one of text and input_ids"),
        ({"text": []}, "empty"),
        ({"input_ids": [[1, 99999]]}, "outside the vocabulary"),
        ({"text": "a", "sampling_params": {"regex": "([a-z"}}, "sampling_params.regex: invalid regex"),
        ({"text": "a", "sampling_params": {"ebnf": "root ::= nothing_here"}}, "sampling_params.ebnf: invalid grammar"),
        ({"text": "a", "sampling_params": {"regex": "a", "json_schema": "{}"}}, "`regex` and `json_schema`"),
        ({"text": "a", "sampling_params": {"json_schema": "{nope"}}, "not valid JSON"),
        ({"text": "a", "sampling_params": {"temperature": -1}}, "sampling_params.temperature"),
        ({"text": "a", "sampling_params": {"min_new_tokens": 3}}, "min_new_tokens is not supported"),
        ({"input_ids": [5] * 257, "sampling_params": {"max_new_tokens": 0}}, "longer than the model's context"),
        ({"input_ids": [5] * 256}, "room for at least one new token"),
        ({"text": "a", "top_logprobs_num": 50, "return_logprob": True}, "top_logprobs_num"),
    ]
    for body, needle in bad:
        for stream in (False, True):
            r = client.post("/generate", json={**body, "stream": stream})
            assert r.status_code == 400, (body, r.text)
            assert needle in r.json()["error"]["message"], (body, r.json())
    assert client.get("/health").status_code == 200


def test_native_routes_need_the_api_key(serve_fake):
    srv = serve_fake(api_key="sekret")
    with srv.client() as client:
        for method, path in (("GET", "/get_model_info"), ("GET", "/server_info"), ("POST", "/flush_cache"),
                             ("POST", "/generate"), ("POST", "/concate_and_append_request")):
            r = client.request(method, path, json={"text": "a"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        auth = {"Authorization": "Bearer sekret"}
        assert client.get("/get_model_info", headers=auth).json()["is_generation"] is True
        assert client.post("/flush_cache", headers=auth).status_code == 200
        out = client.post("/generate", headers=auth, json={"text": "a b", "sampling_params": {"max_new_tokens": 3}})
        assert out.status_code == 200 and out.json()["meta_info"]["completion_tokens"] <= 3
