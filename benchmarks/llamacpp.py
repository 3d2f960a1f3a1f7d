"""llmirc vs llama.cpp on the same random weights: prefill and batch-1 decode tokens/s, CPU.

    .venv/bin/python benchmarks/llamacpp.py --write-docs              # 100m + 1b: about 25 min on 2 cores
    .venv/bin/python benchmarks/llamacpp.py --size small --rounds 1   # smoke run, about 2 min

Both need llama.cpp built once first (the first run does it: about 8 min on 2 cores). Run it on an
idle machine: where other processes share the cores, llama.cpp's OpenMP threads spin-wait at every
barrier for a preempted partner and lose up to 100x (--omp-wait-policy passive makes that sane).

llama.cpp is the copy vendored in the llama-cpp-python sdist (LLAMA_CPP_PYTHON below), fetched
with `pip download --no-binary :all:` (no git) and built with CMake + ninja (Release,
GGML_NATIVE=ON but no AMX, static, only llama-bench and llama-quantize) into
~/.cache/llmirc-bench/llama.cpp-<version>/ ($LLMIRC_BENCH_CACHE overrides the root); a later run
finds the binaries there and skips the build.

For each --size, one random-weight Llama checkpoint (llmirc.testing.checkpoints PRESETS) is
- converted by llama.cpp's own convert_hf_to_gguf.py to f32 and f16 GGUFs (our byte-level BPE
  tokenizer has no known pre-tokenizer hash: the converter runs through a wrapper that names it
  "gpt-2", and that needs no sentencepiece package; llama-bench feeds random token ids, so the
  vocabulary only has to load), then
  llama-quantize makes Q8_0 and Q4_0 from the f32 file, with token embedding and output matrix
  left f32 (what llmirc's --quantize keeps float: embed and lm_head);
- compiled by llmirc at -O3 for this CPU: f32, --dtype f16, --quantize int8/int4 at the default
  group size 128 and at --group-size 32 (Q8_0/Q4_0 scale blocks of 32 weights; symmetric both),
  --quantize w8a8 (int8 activations too, as llama.cpp's Q8_0 dot products quantize theirs),
  --quantize w4a8 at group 128 and 32 (int4 weights, int8 activations per group: Q4_0 x Q8_0's
  scheme) and --quantize w4a16 at group 128 and 32 (int4 weights, int16 activations; Q4_0's dot products
  quantize the activations to Q8_0).
Both are timed round-robin, round by round, so background load hits every system and precision
alike: llama.cpp by `llama-bench -t 2 -p 128 -n 32 -r 1 -o json` (avg_ts of each test), llmirc by
the runtime Engine (llmirc.runtime.bench.StepTimer: batch-1 prefill of 128 tokens, then 32 greedy
decode steps; tokens/s of each round). Medians over --rounds are reported, with the ratio
llmirc / llama.cpp per pairing and the fraction of the decode roofline: measured streaming-read
bandwidth (llmirc.runtime.roofline) / bytes one decode step reads (every weight but the token
embedding; for a GGUF, its tensor bytes, e.g. Q8_0 = 34 and Q4_0 = 18 bytes per 32 weights).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # run as a script or imported by a test
    sys.path.insert(0, str(BENCH_DIR))

from docs_section import ROOT, write_doc_section  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendor/llama.cpp is built
CACHE = Path(os.environ.get("LLMIRC_BENCH_CACHE", "~/.cache/llmirc-bench")).expanduser()
DOC = ROOT / "docs" / "performance.md"
SECTION = "llamacpp"
HEADING = "## llmirc vs llama.cpp (CPU)"
INTRO = ("`benchmarks/llamacpp.py`: the same random-weight checkpoints through llama.cpp (its own converter "
         "and llama-quantize, timed by llama-bench) and through llmirc (-O3, the runtime Engine), interleaved "
         "round by round; the table below is rewritten by `--write-docs`.")
PROMPT, GEN = 128, 32
THREADS = 2
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"]
# No AMX tiles, though -march=native turns them on where cpuinfo lists amx_*: in the VMs these
# benchmarks run in (Sapphire Rapids under Firecracker), ggml's AMX kernels for Q8_0/Q4_0 die of
# SIGILL on their first tilezero. (GGML_AMX_* only count with GGML_NATIVE=OFF; an explicit -mno-*
# beats -march=native wherever it stands.)
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CMAKE_FLAGS += [f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
TARGETS = ("llama-bench", "llama-quantize")

# llmirc variant -> CompileOptions keywords; llama.cpp variant -> how the GGUF is made
LLMIRC = {"f32": {}, "f16": {"dtype": "f16"},
          "int8-g128": {"quantize": "int8"}, "int8-g32": {"quantize": "int8", "group_size": 32},
          "int4-g128": {"quantize": "int4"}, "int4-g32": {"quantize": "int4", "group_size": 32},
          "w8a8": {"quantize": "w8a8"},
          "w4a8-g128": {"quantize": "w4a8"}, "w4a8-g32": {"quantize": "w4a8", "group_size": 32},
          "w4a16-g128": {"quantize": "w4a16"}, "w4a16-g32": {"quantize": "w4a16", "group_size": 32},
          "int4-g128 lm_head int8": {"quantize": "int4", "lm_head": "int8"}}
# Q4_0 mix: llama-quantize's own choice for Q4_0 (not --pure): the output matrix Q6_K, the token
# embedding Q4_0; the pairing for llmirc's quantized lm_head (--lm-head int8)
MIX = "Q4_0 mix"
GGUF = ("f32", "f16", "Q8_0", "Q4_0", MIX)
PAIRS = {"f32": "f32", "f16": "f16", "int8-g128": "Q8_0", "int8-g32": "Q8_0", "int4-g128": "Q4_0",
         "int4-g32": "Q4_0", "w8a8": "Q8_0", "w4a8-g128": "Q4_0", "w4a8-g32": "Q4_0",
         "w4a16-g128": "Q4_0", "w4a16-g32": "Q4_0", "int4-g128 lm_head int8": MIX}

# ggml tensor types: (weights per block, bytes per block)
GGML_BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18),
              "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q6_K": (256, 210), "Q4_K": (256, 144)}
EMBEDDING = "token_embd.weight"


# ---- pure helpers (tests/benchmarks/test_llamacpp_bench.py) -------------------------------

def ggml_bytes(type_name: str, n_elements: int) -> int:
    """Bytes `n_elements` weights of ggml type `type_name` take: Q8_0 = 34 per 32, Q4_0 = 18 per 32."""
    per_block, nbytes = GGML_BLOCK[type_name.upper()]
    if n_elements % per_block:
        raise ValueError(f"{n_elements} weights are not whole {type_name} blocks of {per_block}")
    return n_elements // per_block * nbytes


def decode_bytes_of(tensors) -> int:
    """Bytes one decode step reads from a GGUF's (name, type name, element count) tensors: all
    but the token embedding, of which one row is read."""
    return sum(ggml_bytes(t, n) for name, t, n in tensors if name != EMBEDDING)


def other_types(tensors, qtype: str) -> dict[str, int]:
    """Type -> count of the matrices llama-quantize did not make `qtype` (besides the f32 token
    embedding and output it was told to keep): e.g. F16 where a row is not whole blocks of 32."""
    out: dict[str, int] = {}
    for name, t, _ in tensors:
        if name not in (EMBEDDING, "output.weight") and "norm" not in name and t != qtype:
            out[t] = out.get(t, 0) + 1
    return out


def parse_llama_bench(text: str) -> dict[str, float]:
    """`llama-bench -o json` output -> {"prefill": avg t/s of the pp test, "decode": of the tg test}."""
    out = {}
    for test in json.loads(text):
        n_prompt, n_gen = test.get("n_prompt", 0), test.get("n_gen", 0)
        key = "prefill" if n_prompt and not n_gen else "decode" if n_gen and not n_prompt else None
        if key is None:
            continue
        if key in out:
            raise ValueError(f"two {key} tests in llama-bench output")
        out[key] = float(test["avg_ts"])
    if set(out) != {"prefill", "decode"}:
        raise ValueError(f"llama-bench output has tests {sorted(out)}, expected prefill and decode")
    return out


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


# ---- llama.cpp ---------------------------------------------------------------------------

def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True, **kw)
    except subprocess.CalledProcessError as e:
        sys.stderr.write(f"failed: {' '.join(map(str, cmd))}\n{e.stdout[-4000:]}\n{e.stderr[-4000:]}\n")
        raise


@dataclass
class LlamaCpp:
    root: Path  # ~/.cache/llmirc-bench/llama.cpp-<version>
    build_s: float = 0.0  # 0: found in the cache

    @property
    def src(self) -> Path:
        return self.root / "src"

    def bin(self, name: str) -> Path:
        return self.root / "build" / "bin" / name


def build_llama_cpp(version: str = LLAMA_CPP_PYTHON) -> LlamaCpp:
    """The vendored llama.cpp of llama-cpp-python==version, built (once) under CACHE."""
    lc = LlamaCpp(CACHE / f"llama.cpp-{version}")
    stamp = lc.root / "build" / "llmirc-cmake-flags.txt"  # a build with other flags is redone
    if (all(lc.bin(t).exists() for t in TARGETS) and (lc.src / "convert_hf_to_gguf.py").exists()
            and stamp.exists() and stamp.read_text() == "\n".join(CMAKE_FLAGS)):
        return lc
    t0 = time.perf_counter()
    lc.root.mkdir(parents=True, exist_ok=True)
    if not (lc.src / "CMakeLists.txt").exists():
        dl = lc.root / "sdist"
        print(f"llama.cpp: pip download llama-cpp-python=={version} (sdist)", flush=True)
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={version}", "-d", dl])
        sdist = next(dl.glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{sdist.name[:-len('.tar.gz')]}/vendor/llama.cpp/"
        tmp = lc.root / "src.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and (m.isfile() or m.isdir()):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(tmp, members=members)
        tmp.rename(lc.src)
    print(f"llama.cpp: building {', '.join(TARGETS)} (cmake + ninja, {os.cpu_count()} jobs)", flush=True)
    build = lc.root / "build"
    shutil.rmtree(build, ignore_errors=True)  # from scratch: nothing of an older configuration
    _run(["cmake", "-S", lc.src, "-B", build, "-G", "Ninja", *CMAKE_FLAGS])
    _run(["cmake", "--build", build, "--target", *TARGETS, "-j", str(os.cpu_count())])
    stamp.write_text("\n".join(CMAKE_FLAGS))
    lc.build_s = time.perf_counter() - t0
    print(f"llama.cpp: built in {lc.build_s:.0f} s -> {build / 'bin'}", flush=True)
    return lc


# Runs convert_hf_to_gguf.py's main() with its BPE pre-tokenizer lookup falling back to "gpt-2"
# when the tokenizer's hash is unknown (ours is trained on one text: no model's hash matches).
# And the Llama converter imports sentencepiece (not installed here) before it looks for the
# tokenizer.model our checkpoints lack: without that file the wrapper says FileNotFoundError
# first, on which the converter falls back to tokenizer.json, as it means to.
CONVERT_WRAPPER = """
import sys
src = sys.argv.pop(1)  # the vendored tree: its gguf-py first, as the converter itself does
sys.path[:0] = [src + "/gguf-py", src]
import conversion.base as base
sentencepiece_vocab = base.TextModel._create_vocab_sentencepiece
def create_vocab_sentencepiece(self):
    if not (self.dir_model / "tokenizer.model").is_file():
        raise FileNotFoundError(self.dir_model / "tokenizer.model")
    return sentencepiece_vocab(self)
base.TextModel._create_vocab_sentencepiece = create_vocab_sentencepiece
known = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        print("llmirc: unknown BPE pre-tokenizer hash; using 'gpt-2'", file=sys.stderr)
        return "gpt-2"
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def convert(lc: LlamaCpp, ckpt: Path, out: Path, outtype: str) -> None:
    _run([sys.executable, "-c", CONVERT_WRAPPER, lc.src, ckpt, "--outfile", out, "--outtype", outtype],
         cwd=lc.src)


def quantize(lc: LlamaCpp, src: Path, out: Path, qtype: str, pure: bool = True) -> None:
    """Every linear in `qtype`; the token embedding and the output matrix stay f32 (--pure: no
    k-quant mixture, e.g. Q6_K for the output, which llama-quantize picks by default). pure
    False: llama-quantize's default mixture for `qtype`."""
    keep = ["--pure", "--token-embedding-type", "f32", "--output-tensor-type", "f32"] if pure else []
    _run([lc.bin("llama-quantize"), *keep, src, out, qtype, THREADS])


def gguf_tensors(lc: LlamaCpp, path: Path) -> list[tuple[str, str, int]]:
    try:
        import gguf
    except ImportError:
        sys.path.insert(0, str(lc.src / "gguf-py"))
        import gguf
    reader = gguf.GGUFReader(path)
    return [(t.name, t.tensor_type.name, int(t.n_elements)) for t in reader.tensors]


WARMUP_PROMPT, WARMUP_GEN = 16, 2  # round_robin's warm-up pass: short, for both systems


class _Rounds:
    """Per-round prefill / decode tokens/s (`rounds`, filled by run_once) and their medians."""

    rounds: list[dict[str, float]]

    def clear(self) -> None:
        self.rounds.clear()

    def prefill_tokens_per_s(self) -> float:
        return statistics.median(r["prefill"] for r in self.rounds)

    def decode_tokens_per_s(self) -> float:
        return statistics.median(r["decode"] for r in self.rounds)


class LlamaBenchTimer(_Rounds):
    """One `llama-bench -r 1` per round. The first call (round_robin's warm-up) is a short run:
    it pages the file in; llama-bench warms itself up before every test anyway. `env`: of the
    llama-bench process (OMP_WAIT_POLICY, see --omp-wait-policy)."""

    def __init__(self, lc: LlamaCpp, gguf_file: Path, prompt: int, gen: int, threads: int,
                 env: dict | None = None):
        self.cmd = [lc.bin("llama-bench"), "-m", gguf_file, "-t", threads, "-r", 1, "-o", "json"]
        self.env = env
        self.prompt, self.gen = prompt, gen
        self.rounds: list[dict[str, float]] = []
        self.last_json = ""
        self.warm = False

    def run_once(self) -> None:
        p, n = (self.prompt, self.gen) if self.warm else (WARMUP_PROMPT, WARMUP_GEN)
        self.last_json = _run(self.cmd + ["-p", p, "-n", n], env=self.env).stdout
        self.rounds.append(parse_llama_bench(self.last_json))
        self.warm = True


class LlmircTimer(_Rounds):
    """StepTimer, with prefill and decode tokens/s per round (decode: steps / the round's step time,
    as llama-bench's avg_ts), medians over rounds. The first call (the warm-up) is a short run."""

    def __init__(self, artifact: Path, prompt: int, gen: int):
        from llmirc.runtime.bench import StepTimer

        self.timer = StepTimer(artifact, prompt, gen)
        self.prompt, self.gen = prompt, gen
        self.rounds: list[dict[str, float]] = []
        self.warm = False

    def run_once(self) -> None:
        t = self.timer
        t.clear()
        t.prompt, t.steps = (self.prompt, self.gen) if self.warm else (WARMUP_PROMPT, WARMUP_GEN)
        t.run_once()
        self.warm = True
        self.rounds.append({"prefill": t.prompt / t.prefill_s[0], "decode": t.steps / sum(t.decode_s)})


# ---- driver ------------------------------------------------------------------------------

@dataclass
class SizeResult:
    size: str
    params: int
    seconds: dict = field(default_factory=dict)  # step -> seconds (checkpoint, convert f32, compile int8-g32, ...)
    decode_bytes: dict = field(default_factory=dict)  # "llmirc int8-g32" / "llama.cpp Q8_0" -> bytes
    file_bytes: dict = field(default_factory=dict)
    prefill: dict = field(default_factory=dict)  # same keys -> median tok/s
    decode: dict = field(default_factory=dict)
    rounds: dict = field(default_factory=dict)  # same keys -> per-round {"prefill", "decode"}
    llama_bench: dict = field(default_factory=dict)  # build_commit etc. of the last llama-bench run
    load_avg: float = 0.0  # 1-minute load average just before the timing
    other_types: dict = field(default_factory=dict)  # Q8_0/Q4_0 -> matrices of another type (other_types)


def run_size(size: str, lc: LlamaCpp, args, tmp: Path) -> SizeResult:
    from llmirc.compiler import CompileOptions
    from llmirc.testing.checkpoints import PRESETS, make_large_checkpoint, n_params, write_tokenizer
    from quantization import decode_bytes

    spec = PRESETS[size]
    res = SizeResult(size, n_params(spec))

    def step(name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        res.seconds[name] = time.perf_counter() - t0
        print(f"[{size}] {name}: {res.seconds[name]:.0f} s", flush=True)
        return out

    ckpt = step("checkpoint", make_large_checkpoint, tmp / "ckpt", spec)
    if not (ckpt / "tokenizer.json").exists():
        write_tokenizer(ckpt, spec.vocab)
    files = {"f32": tmp / "model-f32.gguf", "f16": tmp / "model-f16.gguf",
             "Q8_0": tmp / "model-q8_0.gguf", "Q4_0": tmp / "model-q4_0.gguf", MIX: tmp / "model-q4_0-mix.gguf"}
    step("convert f32", convert, lc, ckpt, files["f32"], "f32")
    step("convert f16", convert, lc, ckpt, files["f16"], "f16")
    for q in ("Q8_0", "Q4_0"):
        step(f"quantize {q}", quantize, lc, files["f32"], files[q], q)
    step(f"quantize {MIX}", quantize, lc, files["f32"], files[MIX], "Q4_0", pure=False)
    timers: dict = {}
    arts = {name: tmp / f"llmirc-{name.replace(' ', '-')}" for name in LLMIRC}
    # two compiles at a time: iree-compile runs mostly on one core (1b: 1m39 user of 1m44 wall)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {name: pool.submit(timed_compile, CompileOptions(ckpt, arts[name], opt_level=3, **kw))
                for name, kw in LLMIRC.items()}
        for name, job in jobs.items():
            res.seconds[f"compile {name}"] = job.result()
            print(f"[{size}] compile {name}: {res.seconds[f'compile {name}']:.0f} s", flush=True)
    for name, art in arts.items():
        key = f"llmirc {name}"
        res.decode_bytes[key] = decode_bytes(art)
        res.file_bytes[key] = (art / "model.irpa").stat().st_size
        timers[key] = LlmircTimer(art, PROMPT, GEN)
    for q, path in files.items():
        key = f"llama.cpp {q}"
        tensors = gguf_tensors(lc, path)
        res.decode_bytes[key] = decode_bytes_of(tensors)
        if q in ("Q8_0", "Q4_0") and (other := other_types(tensors, q)):
            res.other_types[q] = other
        res.file_bytes[key] = path.stat().st_size
        timers[key] = LlamaBenchTimer(lc, path, PROMPT, GEN, THREADS, llama_env(args.omp_wait_policy))
    # interleave the two systems precision by precision: llmirc f32, llama.cpp f32, llmirc f16, ...
    order = []
    for name, q in PAIRS.items():
        order += [f"llmirc {name}"] + ([f"llama.cpp {q}"] if f"llama.cpp {q}" not in order else [])
    timers = {k: timers[k] for k in order}

    from llmirc.runtime.bench import round_robin

    res.load_avg = os.getloadavg()[0]
    if res.load_avg > 0.5:
        print(f"[{size}] warning: load average {res.load_avg:.1f} before timing: other processes share the "
              "cores; llama.cpp's OpenMP threads spin at every barrier and suffer most (--omp-wait-policy)",
              flush=True)
    t0 = time.perf_counter()
    round_robin(timers, args.rounds)
    res.seconds["timing"] = time.perf_counter() - t0
    print(f"[{size}] timing (warm-up + {args.rounds} round(s)): {res.seconds['timing']:.0f} s", flush=True)
    for key, t in timers.items():
        res.prefill[key], res.decode[key], res.rounds[key] = t.prefill_tokens_per_s(), t.decode_tokens_per_s(), \
            list(t.rounds)
    last = json.loads(timers["llama.cpp f32"].last_json)[0]
    res.llama_bench = {k: last.get(k) for k in ("build_commit", "build_number", "cpu_info", "backends")}
    return res


def kv_read_bytes(spec, prompt: int = PROMPT, gen: int = GEN) -> float:
    """Mean KV-cache bytes an llmirc decode step reads (f32 K and V of every earlier position)."""
    head_dim = spec.head_dim or spec.hidden // spec.heads
    return spec.layers * 2 * spec.kv_heads * head_dim * 4 * (prompt + (gen - 1) / 2)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(results: list[SizeResult], machine, lc: LlamaCpp, args, command: str) -> str:
    from llmirc.testing.checkpoints import PRESETS

    lb = results[0].llama_bench
    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; streaming read {machine.read_bps / 1e9:.1f} GB/s "
        f"(numpy sum {machine.read_sum_bps / 1e9:.1f}, gemv {machine.read_gemv_bps / 1e9:.1f}; "
        "llmirc.runtime.roofline). "
        f"llama.cpp: the tree vendored in llama-cpp-python {LLAMA_CPP_PYTHON} (build {lb.get('build_number')}, "
        f"commit {lb.get('build_commit')}), CMake Release, GGML_NATIVE=ON, CPU backend, "
        f"`llama-bench -t {THREADS} -p {PROMPT} -n {GEN} -r 1` once per round, "
        f"OMP_WAIT_POLICY {args.omp_wait_policy}; llmirc: -O3, llvm-cpu for this "
        f"CPU, runtime Engine, batch-1 prefill of {PROMPT} tokens then {GEN} decode steps. "
        f"{args.rounds} round{'s' if args.rounds != 1 else ''} after a short warm-up, round-robin over both "
        "systems and all precisions; medians. 1-minute load average before timing: "
        + ", ".join(f"{r.size} {r.load_avg:.1f}" for r in results) + ".", "",
        f"Command: `{command}`", "",
        "Same random-weight checkpoint for both: llama.cpp's convert_hf_to_gguf.py makes the f32 and f16 GGUFs, "
        "llama-quantize --pure makes Q8_0 and Q4_0 from the f32 one with token embedding and output left f32 "
        "(as llmirc keeps embed and lm_head float). Group size: Q8_0/Q4_0 have one f16 scale per block of 32 "
        "weights (symmetric, no zero point); llmirc's int8/int4 default is one scale per 128 in-features "
        "(g128) and is shown at --group-size 32 (g32) too, the like-for-like pairing. llama-bench decodes at "
        f"context 0..{GEN}, llmirc at {PROMPT}..{PROMPT + GEN}: its KV reads (f32) are not in the roofline "
        "bytes. Roofline = bandwidth / bytes one decode step reads (all weights but the token "
        "embedding; GGUF: its tensor bytes, Q8_0 34 and Q4_0 18 bytes per 32 weights). "
        f"Last row: llama-quantize's default Q4_0 ({MIX}: output matrix Q6_K, 210 bytes per 256 weights) "
        "against llmirc int4 with `--lm-head int8` (lm_head int8, one scale per output channel).", ""]
    for r in results:
        spec = PRESETS[r.size]
        lines += [f"**{r.size}** ({r.params / 1e6:.1f}M parameters: {spec.layers} layers, hidden {spec.hidden}, "
                  f"{spec.heads}/{spec.kv_heads} heads, intermediate {spec.intermediate}, vocab {spec.vocab}; "
                  f"llmirc's decode steps read {kv_read_bytes(spec) / 1e6:.1f} MB of KV cache on average)", "",
                  "| llmirc | llama.cpp | prefill tok/s llmirc | llama.cpp | ratio | decode tok/s llmirc | "
                  "llama.cpp | ratio | % roofline llmirc | llama.cpp | MB/step llmirc | llama.cpp |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, q in PAIRS.items():
            a, b = f"llmirc {name}", f"llama.cpp {q}"
            roof_a = machine.decode_tokens_per_s(r.decode_bytes[a])
            roof_b = machine.decode_tokens_per_s(r.decode_bytes[b])
            lines.append(
                f"| {name} | {q} | {r.prefill[a]:.1f} | {r.prefill[b]:.1f} | {ratio(r.prefill[a], r.prefill[b])} | "
                f"{r.decode[a]:.2f} | {r.decode[b]:.2f} | {ratio(r.decode[a], r.decode[b])} | "
                f"{100 * r.decode[a] / roof_a:.0f} % | {100 * r.decode[b] / roof_b:.0f} % | "
                f"{r.decode_bytes[a] / 1e6:.1f} | {r.decode_bytes[b] / 1e6:.1f} |")
        lines.append("")
        for q, other in r.other_types.items():
            lines.append(f"llama-quantize left {', '.join(f'{n} matrices {t}' for t, n in other.items())} "
                         f"in the {q} file (rows that are not whole blocks of 32).")
        lines.append("Preparation (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r.seconds.items()) + ".")
        lines.append("")
    where = str(lc.root).replace(str(Path.home()), "~", 1)
    lines.append(f"llama.cpp build ({where}): " + (f"{lc.build_s:.0f} s." if lc.build_s else "cached."))
    return "\n".join(lines)


def timed_compile(opts) -> float:
    """compile_checkpoint in a worker process; its wall seconds."""
    from llmirc.compiler import compile_checkpoint

    t0 = time.perf_counter()
    compile_checkpoint(opts, progress=None)
    return time.perf_counter() - t0


def llama_env(policy: str) -> dict | None:
    """llama-bench's environment: OMP_WAIT_POLICY set unless `policy` is "default" (libgomp's own)."""
    return None if policy == "default" else os.environ | {"OMP_WAIT_POLICY": policy.upper()}


def write_docs(doc: Path, text: str) -> None:
    """The marked section of `doc`; the first time, after the heading and a line of prose of its own."""
    page = doc.read_text() if doc.exists() else ""
    if f"<!-- {SECTION}:begin -->" not in page:
        doc.write_text(page.rstrip("\n") + f"\n\n{HEADING}\n\n{INTRO}\n")
    write_doc_section(doc, SECTION, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from llmirc.testing.checkpoints import PRESETS

    ap.add_argument("--size", choices=list(PRESETS), action="append",
                    help="preset model (repeatable; default: 100m and 1b)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write-docs", action="store_true", help=f"write the {SECTION} section of {DOC.name}")
    ap.add_argument("--omp-wait-policy", choices=["default", "passive", "active"], default="default",
                    help="OMP_WAIT_POLICY of llama-bench (default: unset, as llama.cpp users run it; "
                         "passive on a machine others share, where spinning threads wait for preempted ones)")
    ap.add_argument("--workdir", type=Path, help="where checkpoints, GGUFs and artifacts go (default: a temp dir)")
    args = ap.parse_args()
    sizes = args.size or ["100m", "1b"]
    command = "python benchmarks/llamacpp.py " + " ".join(sys.argv[1:])
    t_all = time.perf_counter()
    lc = build_llama_cpp()

    from llmirc.runtime import roofline

    machine = roofline.measure(threads=THREADS)
    print(machine.describe(), flush=True)
    results = []
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix=f"llamacpp-{size}-") as tmp:
            results.append(run_size(size, lc, args, Path(tmp)))
    text = report(results, machine, lc, args, command.strip())
    print(text, flush=True)
    if args.write_docs:
        (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
        (ROOT / "benchmarks" / "results" / "llamacpp.json").write_text(json.dumps(
            {"roofline": machine.__dict__, "llama_cpp_python": LLAMA_CPP_PYTHON, "command": command,
             "results": [r.__dict__ for r in results]}, indent=1, default=str))
        write_docs(DOC, text)
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
