"""`llmirc serve` under load: TTFT, inter-token latency, TPOT and throughput at several
concurrencies, and the TTFT of a request that shares a long prefix with an earlier one,
prefix cache on vs off.

    .venv/bin/python benchmarks/serving.py --write-docs          # ~100M model, concurrency 1, 4, 16
    .venv/bin/python benchmarks/serving.py --size small --num-prompts 4 --concurrency 1,2 \\
        --prefix-len 128 --prefix-reps 1                          # seconds: a smoke run

Builds the random-weight checkpoint offline (fixed seed; max_seq_len raised to hold the
shared prefix), compiles it once for this CPU (-O3), then starts `llmirc serve` in a child
process on 127.0.0.1 (so the load generator does not share its GIL) and drives it with its
own bounded load generator over httpx: a fixed number of streaming /v1/completions requests
(random token-id prompts of --input-len tokens, --output-len tokens each, ignore_eos, greedy),
at most --concurrency in flight, all queued at once (vLLM's `--request-rate inf
--max-concurrency C`). Every request has a timeout and the whole run a deadline.

Metrics as `vllm bench serve` defines them:
- TTFT: request sent -> first streamed token.
- ITL: the gaps between successive streamed chunks of a request (all requests pooled); the
  requests ask for logprobs 0, which makes every token a chunk of its own (see one_request).
- TPOT: per request (latency - TTFT) / (output tokens - 1), for requests with > 1 token.
- request throughput: completed requests / wall time of the run; output token throughput:
  generated tokens / wall time; total token throughput: (prompt + generated) / wall time.
Each is reported as mean, median and p99 over the run.

Prefix: for each of --prefix-reps repetitions a fresh random prefix of --prefix-len tokens;
request A = prefix + 16 own tokens (1 output token) warms the cache, then request B = prefix
+ 16 other tokens; B's TTFT is the number. The same requests go to a second server started
with --no-enable-prefix-caching.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.testing.checkpoints import PRESETS, make_checkpoint, n_params

from docs_section import ROOT, write_doc_section

REQUEST_TIMEOUT_S = 600.0


@dataclasses.dataclass
class RequestResult:
    ok: bool
    prompt_len: int
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = dataclasses.field(default_factory=list)
    error: str = ""


@dataclasses.dataclass
class RunStats:
    concurrency: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]


# ---- the server ------------------------------------------------------------------------

def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Poll url/health until it answers 200 (True), or until timeout_s pass or proc exits (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            return False
        time.sleep(poll_s)


class Server:
    """`llmirc serve ARTIFACT --port 0 ...` in a child process; the URL is read from its
    start-up line. Always stopped (SIGINT, then kill) on leaving the block."""

    def __init__(self, artifact: Path, *flags: str, start_timeout_s: float = 600.0) -> None:
        self.cmd = [sys.executable, "-m", "llmirc.cli", "serve", str(artifact), "--host", "127.0.0.1", "--port", "0",
                    "--served-model-name", "bench", "--uvicorn-log-level", "warning", *flags]
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "Server":
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stderr.readline()
        if not line.startswith("serving "):
            self.__exit__()
            raise SystemExit(f"llmirc serve did not start: {line.strip() or 'no output'}")
        self.url = line.split(" on ")[1].split()[0]
        # keep reading its stderr (warnings), so a full pipe never blocks the server
        threading.Thread(target=lambda: [sys.stderr.write("server: " + ln) for ln in self.proc.stderr],
                         daemon=True).start()
        if not wait_healthy(self.url, self.proc, self.start_timeout_s):
            self.__exit__()
            raise SystemExit("llmirc serve never became healthy")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=30).text
        return {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}


# ---- the load generator ------------------------------------------------------------------

async def one_request(client: httpx.AsyncClient, prompt: list[int], max_tokens: int) -> RequestResult:
    """One streaming completion, timed as vLLM's benchmark times it."""
    # logprobs 0 (the sampled token's only): every token then gets its own chunk. Without it a
    # token with no text of its own sends none, and the random-weight models here generate many
    # ids their 303-token tokenizer has no text for, so chunks would bunch several tokens.
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "logprobs": 0, "stream": True, "stream_options": {"include_usage": True}}
    res = RequestResult(ok=False, prompt_len=len(prompt))
    t0 = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    res.error = chunk["error"]["message"]
                    return res
                now = time.perf_counter()
                if chunk.get("usage"):
                    res.output_tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"]:
                    if res.ttft == 0.0:
                        res.ttft = now - t0
                    else:
                        res.itl.append(now - last)
                    last = now
        res.latency = time.perf_counter() - t0
        res.ok = res.output_tokens > 0
    except (httpx.HTTPError, asyncio.TimeoutError) as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


async def run_load(url: str, prompts: list[list[int]], max_tokens: int, concurrency: int,
                   deadline_s: float) -> tuple[list[RequestResult], float]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        async def limited(p: list[int]) -> RequestResult:
            async with sem:
                return await one_request(client, p, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(limited(p) for p in prompts)), deadline_s)
        return results, time.perf_counter() - t0


def summarize(concurrency: int, results: list[RequestResult], duration: float) -> RunStats:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return RunStats(concurrency, len(ok), len(results) - len(ok), duration, len(ok) / duration, out_tokens / duration,
                    (in_tokens + out_tokens) / duration, _dist([r.ttft for r in ok]), _dist(tpot),
                    _dist([x for r in ok for x in r.itl]))


def _dist(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"mean": float("nan"), "median": float("nan"), "p99": float("nan")}
    ms = np.asarray(xs) * 1e3
    return {"mean": float(ms.mean()), "median": float(np.median(ms)), "p99": float(np.percentile(ms, 99))}


def random_prompts(rng: random.Random, n: int, length: int, vocab: int) -> list[list[int]]:
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(n)]


async def prefix_ttfts(url: str, prefixes: list[list[int]], vocab: int, rng: random.Random) -> list[float]:
    """For each prefix: A = prefix + 16 tokens, then B = prefix + 16 other tokens; B's TTFT."""
    out = []
    async with httpx.AsyncClient(base_url=url) as client:
        for prefix in prefixes:
            a = prefix + [rng.randrange(3, vocab) for _ in range(16)]
            b = prefix + [rng.randrange(3, vocab) for _ in range(16)]
            first = await one_request(client, a, 1)
            second = await one_request(client, b, 1)
            if not (first.ok and second.ok):
                raise SystemExit(f"prefix request failed: {first.error or second.error}")
            out.append(second.ttft)
    return out


# ---- main ------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(PRESETS), default="100m")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--num-prompts", type=int, default=32, help="Requests per concurrency level.")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--prefix-len", type=int, default=1024)
    ap.add_argument("--prefix-reps", type=int, default=5)
    ap.add_argument("--deadline-s", type=float, default=1800.0, help="Give up on a load level after this long.")
    ap.add_argument("--artifact", type=Path, help="Use this compiled artifact instead of building one.")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    spec = PRESETS[args.size]
    need = max(args.prefix_len + 16 + 1, args.input_len + args.output_len)
    spec = dataclasses.replace(spec, max_seq_len=max(spec.max_seq_len, 1 << (need - 1).bit_length()))
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        art = args.artifact
        if art is None:
            ckpt = make_checkpoint(Path(tmp) / "ckpt", spec)
            art = Path(tmp) / "art"
            t0 = time.perf_counter()
            compile_checkpoint(CompileOptions(ckpt, art, opt_level=3), progress=None)
            print(f"compiled {args.size} (-O3, max_seq_len {spec.max_seq_len}) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        runs: list[RunStats] = []
        with Server(art) as server:
            warm = random_prompts(rng, 1, args.input_len, spec.vocab)
            asyncio.run(run_load(server.url, warm, 4, 1, args.deadline_s))  # first-call costs out of the numbers
            for c in levels:
                prompts = random_prompts(rng, args.num_prompts, args.input_len, spec.vocab)
                results, duration = asyncio.run(run_load(server.url, prompts, args.output_len, c, args.deadline_s))
                runs.append(summarize(c, results, duration))
                errors = {r.error for r in results if not r.ok}
                print(f"concurrency {c}: {runs[-1].completed}/{len(results)} ok in {duration:.1f} s"
                      + (f"; errors: {sorted(errors)[:3]}" if errors else ""), flush=True)
            preemptions = server.metrics().get("llmirc:num_preemptions_total", 0.0)
        prefixes = random_prompts(rng, args.prefix_reps, args.prefix_len, spec.vocab)
        ttft = {}
        for label, flags in (("on", ()), ("off", ("--no-enable-prefix-caching",))):
            with Server(art, *flags) as server:
                asyncio.run(run_load(server.url, random_prompts(rng, 1, 16, spec.vocab), 2, 1, args.deadline_s))
                ttft[label] = asyncio.run(prefix_ttfts(server.url, prefixes, spec.vocab, random.Random(1)))
                if label == "on":
                    m = server.metrics()
                    hits = m.get("llmirc:prefix_cache_hits_total", 0.0)
    table = report(args, spec, runs, preemptions, ttft, hits)
    print(table)
    if args.write_docs:
        write_doc_section(ROOT / "docs" / "performance.md", f"serving-{args.size}", table)


def report(args, spec, runs: list[RunStats], preemptions: float, ttft: dict[str, list[float]], hits: float) -> str:
    rows = [f"`llmirc serve` on a random-weight Llama ({args.size}: {n_params(spec) / 1e6:.1f}M parameters, f32, "
            f"-O3, CPU llvm-cpu host), driven by benchmarks/serving.py over HTTP on 127.0.0.1: {args.num_prompts} "
            f"streaming requests per level, {args.input_len} prompt tokens, {args.output_len} output tokens "
            f"(ignore_eos, greedy), at most C in flight. Times in ms (mean / median / p99); throughput over the "
            f"level's wall time. Preemptions over the run: {preemptions:.0f}.", "",
            "| C | ok | req/s | output tok/s | total tok/s | TTFT ms | TPOT ms | ITL ms |",
            "|---|---|---|---|---|---|---|---|"]
    f = lambda d: f"{d['mean']:.1f} / {d['median']:.1f} / {d['p99']:.1f}"  # noqa: E731
    for r in runs:
        rows.append(f"| {r.concurrency} | {r.completed}/{r.completed + r.failed} | {r.request_throughput:.2f} | "
                    f"{r.output_throughput:.1f} | {r.total_token_throughput:.1f} | {f(r.ttft_ms)} | "
                    f"{f(r.tpot_ms)} | {f(r.itl_ms)} |")
    on, off = statistics.median(ttft["on"]) * 1e3, statistics.median(ttft["off"]) * 1e3
    rows += ["", f"Shared prefix: request B shares a {args.prefix_len}-token prefix with request A sent just before "
             f"it (16 own tokens each, 1 output token); median TTFT of B over {args.prefix_reps} fresh prefixes: "
             f"prefix cache on {on:.1f} ms, off {off:.1f} ms ({off / on:.1f}x); prefix-cache hits with the cache on: "
             f"{hits:.0f} tokens."]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
