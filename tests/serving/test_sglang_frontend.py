"""An unmodified SGLang frontend program (sglang==0.5.2's `sgl.function`, RuntimeEndpoint)
against the server on the embedded default model: `gen` with `regex`, `select`, `fork` and
`run_batch`. Outputs obey their constraints, and `select` picks the choice that our own
/generate logprobs rank first (computed here from input_token_logprobs, not by SGLang)."""

from __future__ import annotations

import concurrent.futures
import os
import re

import httpx
import pytest

from llmirc.serving.server import ServerThread

from .conftest import real_app

# CI installs the frontend with the test extra (sglang==0.5.2): there it must not skip.
sgl = __import__("sglang") if os.environ.get("CI") else pytest.importorskip(
    "sglang", reason="the SGLang frontend: pip install -e '.[test]' installs sglang==0.5.2")

REF = r"[0-9]{1,2}:[0-9]{1,2}"
NAME = r"[A-Z][a-z]{2,6}"
CHOICES = ["light", "darkness", "water", "the firmament"]
BOOKS = ["Genesis", "Exodus", "Psalms", "Isaiah"]
PROGRAM_TIMEOUT_S = 300


@sgl.function
def verse_program(s, book):
    s += book + " "
    s += sgl.gen("ref", max_tokens=10, regex=REF, temperature=1.0)
    s += ". And God saw the " + sgl.select("seen", choices=CHOICES)
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f", and witness {i} was "
        f += sgl.gen("witness", max_tokens=10, regex=NAME, temperature=1.0)
    s["witnesses"] = [f["witness"] for f in forks]


def select_prefix(book: str, state) -> str:
    """The text the program had when `select` ran (what SGLang scores the choices after)."""
    return f"{book} {state['ref']}. And God saw the "


def our_ranking_first(client: httpx.Client, prefix: str) -> str:
    """The choice with the best mean token logprob over what follows the prefix, from our own
    prompt logprobs (SGLang's default rule, token_length_normalized: it scores from the
    prefix's last token on, since the choice may merge with it)."""
    p = client.post("/generate", json={"text": prefix, "sampling_params": {"max_new_tokens": 0}}).json()
    start = p["meta_info"]["prompt_tokens"] - 1
    scores = {}
    for choice in CHOICES:
        r = client.post("/generate", json={"text": prefix + choice, "sampling_params": {"max_new_tokens": 0},
                                           "return_logprob": True, "logprob_start_len": 0})
        lps = [e[0] for e in r.json()["meta_info"]["input_token_logprobs"][start:]]
        scores[choice] = sum(lps) / len(lps)
    return max(scores, key=scores.get)


def test_sglang_program_gen_regex_select_fork_run_batch(default_artifact):
    from sglang import RuntimeEndpoint

    app, engine = real_app(default_artifact, served_model_name=("bible",))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        backend = RuntimeEndpoint(url)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # bounded: a hung request fails the test
            states = pool.submit(verse_program.run_batch, [{"book": b} for b in BOOKS], backend=backend,
                                 num_threads=2).result(timeout=PROGRAM_TIMEOUT_S)
        texts = [s.text() for s in states]  # raises if the program failed inside SGLang
        ranked = [our_ranking_first(client, select_prefix(b, s)) for b, s in zip(BOOKS, states)]
        hits = engine.stats.prefix_cache_hits
    assert len(states) == len(BOOKS)
    for book, s, text, first in zip(BOOKS, states, texts, ranked):
        assert re.fullmatch(REF, s["ref"]), s["ref"]
        assert s["seen"] in CHOICES and s["seen"] == first, (s["seen"], first)
        assert len(s["witnesses"]) == 2 and all(re.fullmatch(NAME, w) for w in s["witnesses"]), s["witnesses"]
        assert text.startswith(f"{book} {s['ref']}. And God saw the {s['seen']}")
    assert hits > 0  # fork, select and run_batch resend prefixes: the prefix cache serves them
    assert engine.stats.num_pages_used == 0


@sgl.function
def streamed_program(s):
    s += "In the beginning "
    s += sgl.gen("ref", max_tokens=10, regex=REF, temperature=1.0)


def test_sglang_streaming_program(default_artifact):
    """The frontend's stream=True path: SSE chunks with the cumulative text, sliced by SGLang."""
    from sglang import RuntimeEndpoint

    app, _ = real_app(default_artifact)
    with ServerThread(app) as url:
        backend = RuntimeEndpoint(url)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            def run() -> tuple[list[str], str]:
                state = streamed_program.run(backend=backend, stream=True)
                pieces = list(state.text_iter("ref"))
                return pieces, state["ref"]

            pieces, ref = pool.submit(run).result(timeout=PROGRAM_TIMEOUT_S)
    assert "".join(pieces) == ref and re.fullmatch(REF, ref), (pieces, ref)
