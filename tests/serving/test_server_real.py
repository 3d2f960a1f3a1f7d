"""The server on a compiled artifact with the real step engine: OpenAI's client, a bounded
load test against a pool too small for it (preemption), disconnects, and every page free."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from llmirc.runtime.llm_engine import LLMEngine
from llmirc.runtime.sampling import SamplingParams
from llmirc.serving.server import ServerThread

from .conftest import real_app, run_alone
from .sse import sse_events

openai = pytest.importorskip("openai")


def metric_values(text: str) -> dict[str, float]:
    return {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}


def test_openai_client_completions_and_chat(serve_artifact, template_file):
    app, engine = real_app(serve_artifact, template_file, served_model_name=("tiny",))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        r = client.completions.create(model="tiny", prompt="In the beginning", max_tokens=6, temperature=0, n=2,
                                      logprobs=2, seed=1)
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, temperature=0)
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=5, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="other", prompt="x", max_tokens=1)
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="tiny", prompt="x", max_tokens=1000)
    assert [c.index for c in r.choices] == [0, 1] and r.choices[0].text == r.choices[1].text  # greedy, n=2
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens // 2
    assert chat.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert engine.stats.num_pages_used == 0


async def _stream_httpx(client: httpx.AsyncClient, body: dict) -> tuple[str, str, int]:
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        events = sse_events([ln async for ln in r.aiter_lines()])
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]["usage"]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    return text, chunks[-1]["choices"][0]["finish_reason"], usage["completion_tokens"]


async def _stream_openai(client, body: dict) -> tuple[str, str, int]:
    stream = await client.completions.create(stream=True, stream_options={"include_usage": True}, **body)
    text, reason, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].text)
            reason = chunk.choices[0].finish_reason or reason
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    return "".join(text), reason, usage


def test_64_concurrent_streams_with_preemption(serve_artifact):
    rng = random.Random(12)
    reqs = [{"prompt": [rng.randrange(3, 300) for _ in range(rng.randrange(3, 60))],
             "max_tokens": rng.randrange(4, 40)} for _ in range(64)]
    # 19 usable pages of 8 tokens: room for a few of these requests at once, never for 64.
    app, engine = real_app(serve_artifact, num_pages=20)

    async def drive(url: str) -> list:
        async with httpx.AsyncClient(base_url=url, timeout=120) as hc:
            oc = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)
            jobs = []
            for i, r in enumerate(reqs):
                body = {"model": str(serve_artifact), "temperature": 0, **r}
                if i % 4 == 0:  # a quarter through OpenAI's own client
                    jobs.append(_stream_openai(oc, body))
                else:
                    jobs.append(_stream_httpx(hc, {**body, "stream": True, "stream_options": {"include_usage": True}}))
            results = await asyncio.gather(*jobs)
            metrics = metric_values((await hc.get("/metrics")).text)
            await oc.close()
        return results, metrics

    with ServerThread(app) as url:
        results, metrics = asyncio.run(asyncio.wait_for(drive(url), 300))
    assert metrics["llmirc:num_preemptions_total"] > 0
    assert metrics.get("llmirc:request_success_total{finished_reason=\"length\"}", 0) + \
        metrics.get("llmirc:request_success_total{finished_reason=\"stop\"}", 0) == 64
    # afterwards every page is free (the prefix cache keeps only pages nobody holds)
    assert engine.stats.num_pages_used == 0 and engine.stats.num_running == engine.stats.num_waiting == 0
    engine.reset_prefix_cache()
    assert engine.pool.free_pages == engine.pool.capacity
    alone = LLMEngine.from_artifact(serve_artifact, num_pages=64, enable_prefix_caching=False)
    for r, (text, reason, n_tokens) in zip(reqs, results):
        ids, ref_text, ref_reason = run_alone(alone, r["prompt"], SamplingParams(max_tokens=r["max_tokens"]))
        assert (text, reason, n_tokens) == (ref_text, ref_reason, len(ids)), r


def test_disconnect_frees_pages(serve_artifact):
    app, engine = real_app(serve_artifact, num_pages=40)
    step = engine.step
    engine.step = lambda: (time.sleep(0.01), step())[1]  # a slower device: the request outlives the client
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 120, "temperature": 0,
                                                       "ignore_eos": True, "stream": True}) as r:
            next(r.iter_lines())
        deadline = time.monotonic() + 30
        while True:
            m = metric_values(c.get("/metrics").text)
            if m.get('llmirc:request_success_total{finished_reason="abort"}') == 1:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.05)
        assert m["llmirc:generation_tokens_total"] < 120
    assert engine.stats.num_pages_used == 0 and not engine.has_unfinished_requests()


def test_engine_checks_are_400s_and_any_int64_seed_works(serve_artifact):
    app, engine = real_app(serve_artifact, num_pages=24)
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        def post(**body):
            return c.post("/v1/completions", json={"max_tokens": 3, **body})

        a, b = (post(prompt="x", seed=-5, temperature=1.0) for _ in range(2))
        assert a.status_code == 200 and a.json()["choices"][0]["text"] == b.json()["choices"][0]["text"]
        assert post(prompt="x", stop_token_ids=[-1]).status_code == 400
        assert post(prompt=[300]).status_code == 400  # the vocabulary is 0..299
        r = post(prompt="x", n=16, logprobs=20)
        assert r.status_code == 200 and len(r.json()["choices"]) == 16
        # lm-eval's loglikelihood request: echo + logprobs gives the prompt's token logprobs
        lp = post(prompt=[5, 6, 7, 8], max_tokens=1, echo=True, logprobs=1).json()["choices"][0]["logprobs"]
        assert len(lp["tokens"]) == 5 and lp["token_logprobs"][0] is None
        assert all(v <= 0 for v in lp["token_logprobs"][1:]) and all(len(t) >= 1 for t in lp["top_logprobs"][1:])
    assert engine.stats.num_pages_used == 0


def test_request_larger_than_the_pool_is_400(serve_artifact):
    app, _ = real_app(serve_artifact, num_pages=8)  # 7 pages of 8 tokens
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/completions", json={"prompt": [5] * 50, "max_tokens": 20})
        assert r.status_code == 400 and "pages" in r.json()["error"]["message"], r.text
        assert c.post("/v1/completions", json={"prompt": [5] * 30, "max_tokens": 20}).status_code == 200
