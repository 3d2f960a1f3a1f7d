"""The HTTP server over a fake engine with LLMEngine's contract: every endpoint, the error
objects, the streaming format and usage chunk, disconnects, metrics, a free event loop."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from .sse import sse_events


def wait_until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_error(r, status: int, *needles: str, param: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    for n in needles:
        assert n in err["message"], err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def complete(c, **body):
    return c.post("/v1/completions", json={"model": "fake", "temperature": 0, **body})


def test_models_and_health(serve_fake):
    s = serve_fake()
    with s.client() as c:
        assert c.get("/health").status_code == 200
        assert c.get("/version").json()["version"]
        data = c.get("/v1/models").json()
    assert data["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in data["data"]] == [("fake", "model", 128)]


def test_completion_text_tokens_and_usage(serve_fake, tokenizer):
    s = serve_fake()
    with s.client() as c:
        r = complete(c, prompt="In the beginning", max_tokens=5, ignore_eos=True)
        ids = tokenizer.encode("In the beginning", add_special_tokens=False).ids
        by_ids = complete(c, prompt=[1] + ids, max_tokens=5, ignore_eos=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "fake" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    prompt_len = 1 + len(ids)  # BOS added, as for llmirc run
    assert body["usage"] == {"prompt_tokens": prompt_len, "completion_tokens": 5, "total_tokens": prompt_len + 5}
    assert by_ids.json()["choices"][0]["text"] == choice["text"]  # the same prompt as token ids


def test_several_prompts_and_n(serve_fake):
    s = serve_fake()
    with s.client() as c:
        r = complete(c, prompt=["a b", "c d e"], n=2, max_tokens=3, ignore_eos=True)
        single = complete(c, prompt="c d e", max_tokens=3, ignore_eos=True)
    choices = r.json()["choices"]
    assert [ch["index"] for ch in choices] == [0, 1, 2, 3]
    assert choices[2]["text"] == single.json()["choices"][0]["text"]  # prompt 1, choice 0
    assert r.json()["usage"]["completion_tokens"] == 12


def test_seeded_sampling_repeats(serve_fake):
    s = serve_fake()
    with s.client() as c:
        a, b = (complete(c, prompt="x", max_tokens=8, temperature=1.0, seed=7, ignore_eos=True).json()
                for _ in range(2))
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_stop_string_cuts_the_text(serve_fake):
    s = serve_fake()
    with s.client() as c:
        full = complete(c, prompt="hello", max_tokens=30, ignore_eos=True).json()["choices"][0]["text"]
        stop = full[len(full) // 2: len(full) // 2 + 2]
        cut = complete(c, prompt="hello", max_tokens=30, ignore_eos=True, stop=[stop]).json()["choices"][0]
    assert stop and cut["finish_reason"] == "stop" and cut["stop_reason"] == stop
    assert cut["text"] == full[:full.find(stop)]


def test_completion_logprobs(serve_fake):
    s = serve_fake()
    with s.client() as c:
        r = complete(c, prompt="hi", max_tokens=4, logprobs=2, ignore_eos=True).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert all(2 <= len(t) <= 3 for t in lp["top_logprobs"])  # top 2 + the sampled token
    offsets = [sum(len(t) for t in lp["tokens"][:i]) for i in range(4)]  # each token decoded alone
    assert lp["text_offset"] == offsets
    assert all(lp["token_logprobs"][i] == max(lp["top_logprobs"][i].values()) for i in range(4))
    with serve_fake().client() as c, c.stream("POST", "/v1/completions", json={
            "prompt": "hi", "max_tokens": 4, "logprobs": 1, "temperature": 0, "ignore_eos": True, "stream": True}) as r:
        chunks = [e["choices"][0] for e in sse_events(r.iter_lines())[:-1]]
    streamed = [(tok, off) for ch in chunks for tok, off in zip(ch["logprobs"]["tokens"], ch["logprobs"]["text_offset"])]
    assert streamed == list(zip(lp["tokens"], lp["text_offset"]))  # offsets continue across chunks


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "n": 1000}, "n"),
    ({"prompt": "x", "logprobs": 99}, "logprobs"),
    ({"temperature": 0}, "prompt"),
    ({"prompt": {"not": "a prompt"}}, None),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": [5, 99999]}, None),  # the engine refuses an id outside the vocabulary
    ({"prompt": []}, "prompt"),
])
def test_bad_fields_are_400(serve_fake, body, param):
    s = serve_fake()
    with s.client() as c:
        err = assert_error(c.post("/v1/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err


def test_bad_json_and_unknown_route(serve_fake):
    s = serve_fake()
    with s.client() as c:
        assert_error(c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
                     400, "JSON")
        assert_error(c.get("/v1/nothing"), 404)
        assert_error(c.get("/v1/completions"), 405)


def test_unknown_model_is_404(serve_fake):
    s = serve_fake()
    with s.client() as c:
        err = assert_error(c.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404, "gpt-9")
    assert err["code"] == "model_not_found"


def test_api_key(serve_fake):
    s = serve_fake(api_key="sekret")
    with s.client() as c:
        assert_error(c.get("/v1/models"), 401)
        assert_error(c.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer nope"}), 401)
        assert c.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
        assert c.get("/health").status_code == 200  # probes need no key, as in vLLM
        assert c.get("/metrics").status_code == 200


def test_context_length(serve_fake):
    s = serve_fake(max_model_len=64)
    with s.client() as c:
        err = assert_error(complete(c, prompt=list(range(3, 53)), max_tokens=20), 400, "maximum context length is 64",
                           param="max_tokens")
        assert err["code"] == "context_length_exceeded"
        assert_error(complete(c, prompt=list(range(3, 3 + 64))), 400, "maximum context length", param="prompt")
        # a long text is tokenized off the event loop, then refused the same way
        assert_error(complete(c, prompt="word " * 10_000), 400, "maximum context length", param="prompt")
        assert_error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi " * 10_000}]}),
                     400, "maximum context length")
        # without max_tokens the rest of the context is the default
        r = complete(c, prompt=list(range(3, 53)), ignore_eos=True)
        assert r.json()["usage"]["completion_tokens"] <= 14


def test_body_size_bounded(serve_fake):
    s = serve_fake(max_body_bytes=10_000)
    with s.client() as c:
        assert_error(complete(c, prompt="x" * 20_000), 413, "larger than 10000 bytes")

        def chunked():  # no Content-Length: counted as it arrives
            yield b'{"prompt": "'
            for _ in range(200):
                yield b"x" * 100
            yield b'"}'

        assert_error(c.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"}),
                     413, "larger than 10000 bytes")
        assert complete(c, prompt="x" * 100, max_tokens=1).status_code == 200


def test_streaming_format_and_usage(serve_fake):
    s = serve_fake()
    with s.client() as c:
        whole = complete(c, prompt="stream me", max_tokens=12, ignore_eos=True).json()["choices"][0]["text"]
        with c.stream("POST", "/v1/completions", json={"model": "fake", "prompt": "stream me", "max_tokens": 12,
                                                       "temperature": 0, "ignore_eos": True, "stream": True,
                                                       "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r.iter_lines())
        with c.stream("POST", "/v1/completions", json={"model": "fake", "prompt": "stream me", "max_tokens": 3,
                                                       "temperature": 0, "stream": True}) as r:
            plain = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    *chunks, usage = events[:-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    assert all(ch["usage"] is None and ch["object"] == "text_completion" for ch in chunks)
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == whole
    assert [ch["choices"][0]["finish_reason"] for ch in chunks][-1] == "length"
    assert plain[-1] == "[DONE]" and all(e["usage"] is None for e in plain[:-1])  # no usage chunk unasked


def test_streaming_bad_input_is_still_a_400(serve_fake):
    s = serve_fake()
    with s.client() as c:
        assert_error(complete(c, prompt=[99999], stream=True), 400, "outside the vocabulary")


def test_chat(serve_fake):
    s = serve_fake()
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    with s.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "fake", "messages": msgs, "max_completion_tokens": 6,
                                                 "temperature": 0, "ignore_eos": True, "logprobs": True,
                                                 "top_logprobs": 2})
        tok = c.post("/tokenize", json={"messages": msgs}).json()
        with c.stream("POST", "/v1/chat/completions", json={"messages": msgs, "max_tokens": 6, "temperature": 0,
                                                            "ignore_eos": True, "stream": True,
                                                            "stream_options": {"include_usage": True}}) as sr:
            events = sse_events(sr.iter_lines())
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    text = body["choices"][0]["message"]["content"]
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 6 and all(len(t["top_logprobs"]) == 2 for t in content)
    assert body["usage"]["prompt_tokens"] == tok["count"]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 6
    assert "".join(e["choices"][0]["delta"]["content"] or "" for e in events[1:-2]) == text
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_chat_template_rendering(serve_fake, tokenizer):
    s = serve_fake()
    with s.client() as c:
        tok = c.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert tokenizer.decode(tok["tokens"], skip_special_tokens=False) == "<s><|user|>hi\n<|assistant|>"


def test_chat_without_template_is_400(serve_fake):
    s = serve_fake(template=None)
    with s.client() as c:
        assert_error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}), 400,
                     "--chat-template")


def test_chat_bad_messages_are_400(serve_fake):
    s = serve_fake()
    with s.client() as c:
        assert_error(c.post("/v1/chat/completions", json={"messages": []}), 400, param="messages")
        assert_error(c.post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]}), 400,
                     param="messages.0.role")
        assert_error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}), 400, "only text parts")


def test_sandboxed_template_fails_safely(serve_fake):
    s = serve_fake(template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with s.client() as c:
        assert_error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 400,
                     "unsafe")
        assert c.get("/health").status_code == 200


def test_client_disconnect_aborts_stream(serve_fake):
    s = serve_fake(step_delay=0.02)
    with s.client() as c:
        with c.stream("POST", "/v1/completions", json={"prompt": "long", "max_tokens": 100, "temperature": 0,
                                                       "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()  # kept: a dropped line iterator closes the connection at once
            next(lines)  # the first chunk arrived: the request is running
            assert s.engine.stats.num_pages_used > 0 and not s.engine.aborted
    wait_until(lambda: s.engine.aborted and not s.engine.has_unfinished_requests(), what="abort")
    assert s.engine.stats.num_pages_used == 0


def test_client_disconnect_aborts_non_streaming(serve_fake):
    s = serve_fake(step_delay=0.02)
    host, port = s.url.removeprefix("http://").split(":")
    body = b'{"prompt": "long", "max_tokens": 100, "temperature": 0, "ignore_eos": true}'
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: s.engine.stats.num_running == 1, what="the request to run")
    wait_until(lambda: s.engine.aborted and not s.engine.has_unfinished_requests(), what="abort")
    assert s.engine.stats.num_pages_used == 0


def test_event_loop_answers_during_a_step(serve_fake):
    s = serve_fake()
    s.engine.gate = threading.Event()  # every step waits until the test lets it go
    result = {}

    def request():
        with s.client() as c:
            result["r"] = complete(c, prompt="x", max_tokens=2)

    t = threading.Thread(target=request)
    t.start()
    try:
        wait_until(s.engine.in_step.is_set, what="the engine to enter a step")
        with s.client(timeout=10) as c:  # would time out if the loop were inside engine.step
            assert c.get("/health").status_code == 200
            assert c.get("/v1/models").status_code == 200
    finally:
        s.engine.gate.set()
        t.join(30)
    assert result["r"].status_code == 200


def test_metrics(serve_fake):
    s = serve_fake()
    with s.client() as c:
        complete(c, prompt="count me", max_tokens=4, ignore_eos=True)
        text = c.get("/metrics").text
    names = ["llmirc:num_requests_running", "llmirc:num_requests_waiting", "llmirc:kv_cache_usage_perc",
             "llmirc:kv_cache_pages_used", "llmirc:time_to_first_token_seconds_bucket",
             "llmirc:inter_token_latency_seconds_bucket", "llmirc:prompt_tokens_total",
             "llmirc:generation_tokens_total", "llmirc:num_preemptions_total", "llmirc:prefix_cache_queries_total",
             "llmirc:prefix_cache_hits_total", "llmirc:request_success_total"]
    for n in names:
        assert n in text, n
    values = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert values["llmirc:generation_tokens_total"] == 4
    assert values["llmirc:time_to_first_token_seconds_count"] == 1
    assert values["llmirc:inter_token_latency_seconds_count"] == 3
    assert values['llmirc:request_success_total{finished_reason="length"}'] == 1


def test_listening_socket_is_tcp():
    """asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto is IPPROTO_TCP; with
    proto 0 every streamed token after the first waited for a delayed ACK (~40 ms)."""
    from llmirc.serving.server import listen

    with listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_streaming_several_prompts_and_n(serve_fake):
    s = serve_fake()
    with s.client() as c:
        with c.stream("POST", "/v1/completions", json={"prompt": ["a", "b c"], "n": 2, "max_tokens": 5,
                                                       "temperature": 0, "ignore_eos": True, "stream": True,
                                                       "stream_options": {"include_usage": True}}) as r:
            events = sse_events(r.iter_lines())
        whole = complete(c, prompt=["a", "b c"], n=2, max_tokens=5, ignore_eos=True).json()["choices"]
    texts: dict[int, str] = {}
    finishes: list[int] = []
    for e in events[:-2]:
        for ch in e["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
            if ch["finish_reason"]:
                finishes.append(ch["index"])
    assert sorted(finishes) == [0, 1, 2, 3]  # each choice finishes once
    assert texts == {ch["index"]: ch["text"] for ch in whole}
    assert events[-2]["usage"]["completion_tokens"] == 20


def test_engine_failure_is_503_not_500(serve_fake):
    s = serve_fake()
    s.engine.fail_after_steps = 2
    with s.client() as c:
        with c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 10, "temperature": 0,
                                                       "ignore_eos": True, "stream": True}) as r:
            events = sse_events(r.iter_lines())
        assert events[-1] == "[DONE]" and "device lost" in events[-2]["error"]["message"]
        assert_error(complete(c, prompt="x", max_tokens=2), 503, "restart the server")
        assert_error(c.get("/health"), 503)


def test_stop_token_ids_add_to_eos_as_in_vllm(serve_fake):
    s = serve_fake()
    with s.client() as c:
        plain = complete(c, prompt=[5, 6, 7], max_tokens=60).json()["choices"][0]
        extra = complete(c, prompt=[5, 6, 7], max_tokens=60, stop_token_ids=[0]).json()["choices"][0]
        past = complete(c, prompt=[5, 6, 7], max_tokens=60, stop_token_ids=[0], ignore_eos=True).json()["choices"][0]
    # the fake emits eos at sequence length 23: it still stops a request that lists other stop ids
    assert (plain["finish_reason"], plain["stop_reason"]) == ("stop", None)
    assert extra == plain
    assert past["finish_reason"] == "length"


def test_echo_with_prompt_logprobs(serve_fake, tokenizer):
    s = serve_fake()
    body = {"prompt": "In the", "max_tokens": 3, "ignore_eos": True, "echo": True, "logprobs": 1}
    with s.client() as c:
        plain = complete(c, prompt="In the", max_tokens=3, ignore_eos=True, logprobs=1).json()["choices"][0]
        echoed = complete(c, **body).json()["choices"][0]
        with c.stream("POST", "/v1/completions", json={**body, "temperature": 0, "stream": True}) as r:
            chunks = [e["choices"][0] for e in sse_events(r.iter_lines())[:-1]]
        ids_echo = complete(c, prompt=[5, 6, 7], max_tokens=2, echo=True).json()["choices"][0]
    prompt_ids = [1] + tokenizer.encode("In the", add_special_tokens=False).ids
    assert echoed["text"] == "In the" + plain["text"]
    lp = echoed["logprobs"]
    assert len(lp["tokens"]) == len(prompt_ids) + 3
    assert lp["token_logprobs"][0] is None and lp["token_logprobs"][1] == -0.5  # the prompt's, from the engine
    assert lp["tokens"][len(prompt_ids):] == plain["logprobs"]["tokens"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert "".join(ch["text"] for ch in chunks) == echoed["text"]
    assert [t for ch in chunks for t in ch["logprobs"]["tokens"]] == lp["tokens"]
    assert [o for ch in chunks for o in ch["logprobs"]["text_offset"]] == lp["text_offset"]
    assert ids_echo["text"].startswith(tokenizer.decode([5, 6, 7]))
