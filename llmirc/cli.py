"""`llmirc`: compile checkpoints to IREE artifacts, run and inspect them.

Every command is scriptable: errors are one line on stderr (`error: ...`) with
exit code 1, `--json` gives machine-readable output, nothing ever prompts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from .errors import LlmircError

DEFAULT_MODEL = Path(__file__).parent / "assets" / "default_model"


class _Group(click.Group):
    """One error format for everything: LlmircError and click's own usage errors (bad option
    values, unknown options) both become one `error: <message>` line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LlmircError as e:
            _fail(str(e))

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as e:  # `llmirc` or `llmirc testing` alone: the help is the answer
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.ClickException as e:
            _fail(usage_error_line(e))
        except click.Abort:
            _fail("aborted")
        sys.exit(rv if isinstance(rv, int) else 0)  # --help / --version return their exit code


# click >= 8.2 raises this (a UsageError whose message is the whole help) for a group called bare.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def usage_error_line(e: click.ClickException) -> str:
    """click's message on one line, pointing at the command's --help (click prints a usage block)."""
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    return f"{message} (see `{ctx.command_path} --help`)" if ctx is not None else message


def _fail(message: str):
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmirc")
def main() -> None:
    """Ahead-of-time compiler for LLM inference on IREE.

    \b
    llmirc compile CHECKPOINT_DIR -o OUT/
    llmirc run OUT/ --prompt "In the beginning" --repetition-penalty 1.2
    llmirc inspect OUT/
    """


# ---- compile -----------------------------------------------------------------------

@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path), required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Artifact directory (--emit vmfb) or output file (other --emit kinds).")
@click.option("--target", default="cpu", show_default=True,
              help="Target family[:variant], e.g. cpu, cpu:znver3, cuda:sm_80, rocm:gfx942, vulkan, tpu-like "
                   "(see `llmirc targets`).")
@click.option("-O", "opt_level", type=click.IntRange(0, 3), default=3, show_default=True,
              help="Optimization level: -O0 only what the paged-KV ABI needs ... -O3 target-tuned.")
@click.option("--emit", type=click.Choice(["llm", "llm-opt", "iree-input", "vmfb"]), default="vmfb",
              show_default=True, help="Stop after this stage and write its output.")
@click.option("--max-seq-len", type=click.IntRange(1), help="Cap the model's maximum sequence length.")
@click.option("--page-size", type=click.IntRange(1), help="KV cache page size in tokens (default: target's).")
@click.option("--buckets", metavar="SPEC", help="Static-shape targets (tpu-like): compiled shapes, e.g. "
              "'batch=1,4;len=32,128;pages=65' (default: batch 1,4; lengths 32,128,... up to max_seq_len).")
@click.option("--tp", type=int, default=1, show_default=True, metavar="N",
              help="Tensor parallelism: split the model over N devices of the target (cpu: N local devices, "
                   "cuda/rocm: N GPUs) in one module (docs/parallel.md).")
@click.option("--pp", type=int, default=1, show_default=True, metavar="N",
              help="Pipeline parallelism: N stages of contiguous layers (stage 0 embeds, the last has the final "
                   "norm and lm_head), one module and one KV pool per stage, each stage on its own device "
                   "(cpu: N local devices, cuda/rocm: N GPUs; docs/parallel.md).")
@click.option("--passes", help="Custom pipeline replacing -O's, e.g. 'blockify-kv-cache{block_size=32}'.")
@click.option("--quantize", metavar="int8|int4|w8a8|w4a8|w4a16", help="Store linear weights group-quantized; "
              "int8/int4 are weight-only; w8a8 (int8 weights) and w4a16 (int4 weights) also quantize activations "
              "per token, to int8 and int16, and w4a8 (int4 weights) to int8 per token and group, for integer "
              "matmuls (docs/quantization.md).")
@click.option("--group-size", type=click.IntRange(1), help="With --quantize: in-features per scale (default 128; a "
              "layer it does not divide takes the largest divisor below; manifest records each layer's; w8a8 "
              "linears have one scale per output channel, only MoE experts use it).")
@click.option("--symmetric/--asymmetric", default=True, show_default=True,
              help="Zero points: none (symmetric) or one per group (asymmetric; int4 values then 0..15).")
@click.option("--keep-float", default="embed,lm_head", show_default=True,
              help="Linears whose weight name or location contains one of these (comma-separated) stay float.")
@click.option("--lm-head", type=click.Choice(["float", "int8", "int4"]), default="float", show_default=True,
              help="With --quantize: lm_head weight-only in these bits whatever --quantize is (int8: one "
                   "scale per output channel; int4: groups of --group-size), as llama.cpp gives Q4_0 models a "
                   "Q6_K output. In f32 it is a third of an int4 decode step's bytes (docs/quantization.md).")
@click.option("--dtype", type=click.Choice(["auto", "f32", "f16", "bf16"]), default="auto", show_default=True,
              help="Storage type of float weight matrices; activations and accumulation stay f32. auto: the "
                   "checkpoint's torch_dtype (f32, f16, bf16) where the target supports it, else f32.")
@click.option("--print-ir-after-all", is_flag=True, help="Print llm IR after every pass (stderr).")
@click.option("--print-ir-after", multiple=True, metavar="PASS", help="Print llm IR after PASS (repeatable).")
@click.option("--timing", is_flag=True, help="Report per-pass and per-stage wall time, iree-compile included "
              "(stderr).")
@click.option("--no-verify-each", is_flag=True, help="Skip verifying the IR after each pass.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def compile(checkpoint: Path | None, output: Path, target: str, opt_level: int, emit: str,
            max_seq_len: int | None, page_size: int | None, passes: str | None, quantize: str | None,
            group_size: int | None, symmetric: bool, keep_float: str, lm_head: str, dtype: str, buckets: str | None,
            tp: int, pp: int, print_ir_after_all: bool,
            print_ir_after: tuple[str, ...], timing: bool, no_verify_each: bool, as_json: bool,
            quiet: bool) -> None:
    """Compile a Hugging Face checkpoint directory or a GGUF file (default: the
    embedded model).

    A directory holds config.json, model.safetensors (or shards with
    model.safetensors.index.json) and tokenizer.json; GPTQ/AWQ checkpoints are
    read as they are. A .gguf file (llama, mistral, qwen2) brings its own config
    and tokenizer; Q8_0/Q4_0 weights stay quantized (docs/checkpoints.md).
    """
    from .compiler import CompileOptions, compile_checkpoint

    opts = CompileOptions(checkpoint or DEFAULT_MODEL, output, target, opt_level, emit, max_seq_len, page_size,
                          passes, print_ir_after_all, print_ir_after, timing, not no_verify_each,
                          quantize=quantize, group_size=group_size, symmetric=symmetric, keep_float=keep_float,
                          lm_head=lm_head, dtype=dtype, buckets=buckets, tp=tp, pp=pp)
    heartbeat = Heartbeat(sys.stderr)
    result = compile_checkpoint(opts, progress=None if quiet else heartbeat.stage, warn=_warning,
                                tick=heartbeat.tick)
    heartbeat.close()
    if as_json:
        click.echo(json.dumps({"output": str(result.output), "target": result.target.full_name, "emit": emit,
                               "opt_level": opt_level, "dtype": result.dtype, "seconds": result.stage_seconds}))
    elif not quiet:
        click.echo(f"wrote {result.output}", err=True)


class Heartbeat:
    """Stage lines, and proof of life during iree-compile: on a terminal the stage line is
    redrawn with a spinner and the seconds so far; otherwise (logs, CI) a plain line every
    `every` seconds, so a log shows the compile is alive without a wall of updates."""

    SPINNER = "|/-\\"

    def __init__(self, stream, every: float = 15.0) -> None:
        self.stream, self.every = stream, every
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._beats, self._printed, self._open = 0, 0, False

    def stage(self, line: str) -> None:
        self._end_line()
        click.echo(line, file=self.stream)
        self._beats = self._printed = 0

    def tick(self, line: str, elapsed: float) -> None:
        self._beats += 1
        if self.tty:
            spin = self.SPINNER[self._beats % len(self.SPINNER)]
            click.echo(f"\r{line} {spin} {elapsed:.0f} s", file=self.stream, nl=False)
            self._open = True
        elif int(elapsed // self.every) > self._printed:
            self._printed = int(elapsed // self.every)
            click.echo(f"{line}: still running, {elapsed:.0f} s", file=self.stream)

    def close(self) -> None:
        self._end_line()

    def _end_line(self) -> None:
        if self._open:
            click.echo(file=self.stream)
            self._open = False


def _warning(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


# ---- run / inspect --------------------------------------------------------------------

def _artifact_dir(path: Path) -> Path:
    return path.parent if path.suffix == ".vmfb" else path


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeat for a batch); - reads it from stdin.")
@click.option("--prompt-ids", "prompt_ids", multiple=True, help="Prompt as token ids '1,2,3' (repeatable).")
@click.option("--max-tokens", type=click.IntRange(1), default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True,
              help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(0), default=0, help="Keep the k most likely tokens (0 = all).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Nucleus sampling mass, in (0, 1]; 1 = off.")
@click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="> 1 discourages tokens already in the prompt or output (logit / p if > 0, else * p); 1 = off.")
@click.option("--stop", "stop", multiple=True, help="Stop string (repeatable); the text ends before it.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-pages", type=click.IntRange(2), help="KV pages in the device pool (default: enough "
              "for the batch at max length).")
@click.option("--device", help="Runtime driver or device URI (default: the manifest's driver), e.g. cuda://1; a tensor-"
              "parallel artifact takes one per device, comma-separated (cuda://0,cuda://1).")
@click.option("--ray", is_flag=True, help="Run a pipeline-parallel artifact's stages as Ray actors (the cluster in "
              "RAY_ADDRESS, else a new local one; needs the multihost extra; docs/parallel.md).")
@click.option("--echo/--no-echo", default=True, show_default=True, help="Print a text prompt before its continuation.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No summary line (token counts, TTFT, tok/s) on stderr.")
def run(artifact: Path, prompts: tuple[str, ...], prompt_ids: tuple[str, ...], max_tokens: int,
        temperature: float, top_k: int, top_p: float, repetition_penalty: float, stop: tuple[str, ...], seed: int,
        num_pages: int | None, device: str | None, ray: bool, echo: bool, as_json: bool, quiet: bool) -> None:
    """Generate text with a compiled artifact (directory or its model.vmfb).

    Ends with a summary on stderr: prompt and generated tokens, time to first token, tokens/s.
    """
    from .api import load

    if not prompts and not prompt_ids:
        raise LlmircError("give at least one --prompt or --prompt-ids")
    prompts = stdin_prompts(prompts, sys.stdin)
    try:
        id_prompts = [[int(t) for t in p.split(",") if t.strip()] for p in prompt_ids]
    except ValueError:
        raise LlmircError("--prompt-ids takes comma-separated integers, e.g. 1,2,3") from None
    model = load(_artifact_dir(artifact), num_pages=num_pages, device=device, ray=ray)
    batch: list = list(prompts) + id_prompts
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  repetition_penalty=repetition_penalty, stop=stop)
    if not as_json and len(batch) == 1 and model.tokenizer is not None:
        if echo and prompts:
            click.echo(prompts[0], nl=False)
        generated, reason = 0, ""
        for event in model.generate(batch, stream=True, **kwargs):  # stream a single prompt's text
            click.echo(event.text, nl=False)
            generated, reason = generated + 1, event.finish_reason or reason
        click.echo()
        notices = [context_limit_notice(0, generated, reason, max_tokens, model.engine.max_seq_len)]
    else:
        results = model.generate(batch, **kwargs)
        if as_json:
            click.echo(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
        else:
            for r, p in zip(results, batch):
                head = p if echo and isinstance(p, str) else ""
                click.echo(head + r.text if r.text is not None else ",".join(map(str, r.token_ids)))
        notices = [context_limit_notice(r.index, len(r.token_ids), r.finish_reason, max_tokens,
                                        model.engine.max_seq_len) for r in results]
    for n in filter(None, notices):
        click.echo(n, err=True)
    if not quiet:
        click.echo(stats_line(model.stats), err=True)


def stdin_prompts(prompts: tuple[str, ...], stdin) -> tuple[str, ...]:
    """`--prompt -` is the text on stdin (read once; one trailing newline dropped: the one a
    shell's echo or a file's last line adds)."""
    if "-" not in prompts:
        return prompts
    if prompts.count("-") > 1:
        raise LlmircError("--prompt - reads stdin, which can be given only once")
    text = stdin.read()
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if not text:
        raise LlmircError("--prompt - read an empty prompt from stdin")
    return tuple(text if p == "-" else p for p in prompts)


def context_limit_notice(index: int, generated: int, finish_reason: str, max_tokens: int,
                         max_seq_len: int) -> str | None:
    """A "length" finish before max_tokens can only be the model's context limit: say so (as vLLM
    does), since the text simply stops and looks truncated."""
    if finish_reason != "length" or generated >= max_tokens:
        return None
    return (f"notice: prompt {index} stopped at the model's context limit ({max_seq_len} tokens) after "
            f"{generated} generated tokens (finish_reason \"length\"); shorten the prompt for more")


def stats_line(stats) -> str:
    """`run`'s summary: what was processed and how fast (GenerationStats)."""
    ttft = f"{stats.ttft_s * 1e3:.1f} ms" if stats.ttft_s is not None else "-"
    rate = f"{stats.tokens_per_s:.1f} tok/s" if stats.tokens_per_s else "- tok/s"
    return (f"{stats.prompt_tokens} prompt tokens, {stats.generated_tokens} generated tokens, TTFT {ttft}, "
            f"{rate} ({stats.elapsed_s:.2f} s)")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt-len", type=click.IntRange(1), default=128, show_default=True)
@click.option("--decode-steps", type=click.IntRange(1), default=32, show_default=True)
@click.option("--batch", "batches", default="1", show_default=True,
              help="Decode batch sizes to sweep, comma-separated, e.g. 1,2,4,8.")
@click.option("--reps", type=click.IntRange(1), default=5, show_default=True, help="Timed prefill repetitions.")
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True)
@click.option("--num-pages", type=click.IntRange(2), help="KV pages in the device pool.")
@click.option("--device", help="Runtime driver override, e.g. local-sync.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench(artifact: Path, prompt_len: int, decode_steps: int, batches: str, reps: int, warmup: int,
          num_pages: int | None, device: str | None, as_json: bool) -> None:
    """Measure an artifact: time to first token, prefill and decode tokens/s, memory."""
    from .runtime.bench import bench_artifact, format_report

    sizes = parse_batch_sizes(batches)
    try:
        report = bench_artifact(_artifact_dir(artifact), prompt_len, decode_steps, sizes, reps, warmup,
                                num_pages, device)
    except ValueError as e:
        raise LlmircError(str(e)) from None
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); anything else (0, negatives, words, nothing) is a one-line error."""
    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise LlmircError(f"--batch takes comma-separated positive integers, e.g. 1,2,4; got {text!r}")
    return sizes


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(artifact: Path, as_json: bool) -> None:
    """Describe an artifact: model, target, KV ABI, entry points, weights, files, devices.

    A damaged artifact is described too, with everything wrong with it; the command then
    exits 1 with one `error:` line.
    """
    from .artifacts import describe_report, inspect_artifact

    report = inspect_artifact(_artifact_dir(artifact))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else describe_report(report))
    if report.problems:
        n = len(report.problems)
        raise LlmircError(f"{report.root} is damaged: {n} problem{'s' if n > 1 else ''} (listed above); "
                          "re-run `llmirc compile` to rebuild the artifact")


# ---- serve / chat (docs/serving.md) ---------------------------------------------------------

@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every "
              "interface; there is no TLS, put a proxy in front).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="LLMIRC_API_KEY", help="Require `Authorization: Bearer KEY` on /v1 and "
              "/tokenize (also from $LLMIRC_API_KEY).")
@click.option("--served-model-name", multiple=True, help="Name clients pass as `model` (repeatable; default: "
              "the artifact path).")
@click.option("--chat-template", type=click.Path(path_type=Path), help="Jinja2 chat template file (default: the "
              "artifact's tokenizer_config.json chat_template).")
@click.option("--max-model-len", type=click.IntRange(1), help="Context per request, prompt + output (default: the "
              "artifact's max_seq_len).")
@click.option("--max-num-seqs", type=click.IntRange(1), help="Sequences in one step (default 256).")
@click.option("--max-num-batched-tokens", type=click.IntRange(1), help="Tokens computed in one step: decode rows "
              "plus prefill chunks (default 2048).")
@click.option("--enable-prefix-caching/--no-enable-prefix-caching", default=True, show_default=True,
              help="Reuse the KV pages of a prompt prefix seen before.")
@click.option("--num-pages", type=click.IntRange(2), help="KV pages in the device pool (default: room for 8 "
              "full-length sequences, at most 1 GiB).")
@click.option("--device", help="Runtime driver or device URI (default: the manifest's driver), e.g. cuda://1; a tensor-"
              "parallel artifact takes one per device, comma-separated (cuda://0,cuda://1).")
@click.option("--ray", is_flag=True, help="Run a pipeline-parallel artifact's stages as Ray actors (the cluster in "
              "RAY_ADDRESS, else a new local one; needs the multihost extra; docs/parallel.md).")
@click.option("--max-request-bytes", type=click.IntRange(1), help="Largest request body accepted (default 4 MiB).")
@click.option("--uvicorn-log-level", "log_level", type=click.Choice(["critical", "error", "warning", "info", "debug",
              "trace"]), default="info",
              show_default=True)
def serve(artifact: Path, host: str, port: int, api_key: str | None, served_model_name: tuple[str, ...],
          chat_template: Path | None, max_model_len: int | None, max_num_seqs: int | None,
          max_num_batched_tokens: int | None, enable_prefix_caching: bool, num_pages: int | None,
          device: str | None, ray: bool, max_request_bytes: int | None, log_level: str) -> None:
    """Serve an artifact over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions).

    Also GET /v1/models, /health, /metrics (Prometheus) and POST /tokenize. Needs the serve
    extra: pip install 'llmirc[serve]'. Flags are spelled as `vllm serve` spells them.
    """
    from .serving.server import ServeOptions, require_serve_extra, serve as run_server

    require_serve_extra()
    run_server(ServeOptions(_artifact_dir(artifact), host=host, port=port, api_key=api_key,
                            served_model_name=served_model_name, chat_template=chat_template,
                            max_model_len=max_model_len, num_pages=num_pages, device=device, ray=ray,
                            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                            enable_prefix_caching=enable_prefix_caching, max_body_bytes=max_request_bytes,
                            log_level=log_level),
               announce=lambda line: click.echo(line, err=True))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--system", help="System message that starts the conversation.")
@click.option("--chat-template", type=click.Path(path_type=Path), help="Jinja2 chat template file (default: the "
              "artifact's).")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True, help="Longest reply.")
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(0), default=0, help="Keep the k most likely tokens (0 = all).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-pages", type=click.IntRange(2), help="KV pages in the device pool.")
@click.option("--device", help="Runtime driver or device URI (default: the manifest's driver).")
def chat(artifact: Path, system: str | None, chat_template: Path | None, max_tokens: int, temperature: float,
         top_k: int, top_p: float, repetition_penalty: float, seed: int, num_pages: int | None,
         device: str | None) -> None:
    """Chat with an artifact in the terminal, one line per message (/exit or end of input ends it).

    Uses the artifact's chat template (or --chat-template); reads stdin, so it can be piped.
    """
    from .runtime.llm_engine import LLMEngine
    from .runtime.sampling import SamplingParams
    from .serving.chat_template import load_chat_template
    from .serving.terminal_chat import ChatSession, run_chat

    root = _artifact_dir(artifact)
    try:
        template = load_chat_template(root, chat_template)
    except ImportError:
        raise LlmircError("`llmirc chat` needs jinja2: pip install 'llmirc[serve]'") from None
    if template is None:
        raise LlmircError(f"{root} has no chat template (no chat_template in its tokenizer_config.json); "
                          "pass --chat-template FILE")
    engine = LLMEngine.from_artifact(root, num_pages=num_pages, device=device)
    if engine.tokenizer is None:
        raise LlmircError(f"{root} has no tokenizer.json; `llmirc chat` needs text")

    def params(budget: int) -> SamplingParams:
        return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_tokens=budget,
                              repetition_penalty=repetition_penalty)

    stdin, tty = sys.stdin, sys.stdin.isatty()
    session = ChatSession(engine, template, params, max_tokens, system, notice=lambda m: click.echo(m, err=True))
    run_chat(session, iter(stdin.readline, ""), write=lambda piece: click.echo(piece, nl=False),
             prompt=(lambda: click.echo("> ", nl=False, err=True)) if tty else (lambda: None),
             error=lambda m: click.echo(m, err=True))


# ---- opt: llm IR in, llm IR out ----------------------------------------------------------

@main.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--passes", required=True, help="Pipeline to run, e.g. 'cse,dce' or "
              "'blockify-kv-cache{block_size=8}'.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file (default: stdout).")
@click.option("--print-ir-after-all", is_flag=True, help="Print IR after every pass (stderr).")
@click.option("--timing", is_flag=True, help="Report per-pass wall time (stderr).")
@click.option("--no-verify-each", is_flag=True, help="Skip verifying the IR after each pass.")
def opt(source: Path, passes: str, output: Path | None, print_ir_after_all: bool, timing: bool,
        no_verify_each: bool) -> None:
    """Run passes on an llm IR file and print the result (like mlir-opt)."""
    from iree.compiler import ir

    from .dialect import parse_module, print_module, verify_module
    from .pipelines import PassManager, WeightStore, parse_pipeline

    try:
        module = parse_module(source.read_text())
    except ir.MLIRError as e:
        raise LlmircError(f"{source}: cannot parse: {str(e).splitlines()[0]}") from None
    verify_module(module, context=f"input {source}")
    # No weight values here: passes that derive weights register recipes that nothing evaluates.
    PassManager(parse_pipeline(passes), verify_each=not no_verify_each, print_ir_after_all=print_ir_after_all,
                timing=timing, weights=WeightStore.from_arrays({})).run(module)
    text = print_module(module)
    if output:
        from .compiler import write_atomic

        write_atomic(output, text)
    else:
        click.echo(text, nl=False)


# ---- dialect, passes, targets ------------------------------------------------------------

@main.command()
@click.option("--irdl", is_flag=True, help="Write the dialect as IRDL (for `iree-opt --irdl-file`).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file (default: stdout).")
def dialect(irdl: bool, output: Path | None) -> None:
    """Describe the llm dialect: its ops, or an IRDL file for standard MLIR tools."""
    from .dialect import REGISTRY

    if irdl:
        from .dialect.irdl import export_irdl

        text = export_irdl()
    else:
        text = "\n".join(f"llm.{s.name:18} {s.summary}" for s in REGISTRY.values()) + "\n"
    if output:
        from .compiler import write_atomic

        write_atomic(output, text)
    else:
        click.echo(text, nl=False)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def passes(as_json: bool) -> None:
    """List the registered passes with their options and the -O pipelines."""
    from .pipelines import PASSES, pipeline_for_level

    if as_json:
        click.echo(json.dumps({
            "passes": [{"name": p.name, "description": p.description, "options": p.options}
                       for p in PASSES.values()],
            "levels": {f"O{o}": [n for n, _ in pipeline_for_level(o)] for o in range(4)}}, indent=2))
        return
    for p in PASSES.values():
        opts = ", ".join(f"{k}={v}" for k, v in p.options.items())
        click.echo(f"{p.name:24} {p.description}" + (f"  [{opts}]" if opts else ""))
    for o in range(4):
        click.echo(f"-O{o}: " + ", ".join(n for n, _ in pipeline_for_level(o)))


@main.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json: bool) -> None:
    """List target families and their variants (`--target family:variant`); docs/targets.md."""
    from .targets import TARGETS, resolve

    rows = []
    for family, (default, variants, _) in TARGETS.items():
        p = resolve(family)
        rows.append({"name": family, "default": default, "variants": list(variants), "device": p.device,
                     "driver": p.driver, "dtypes": list(p.dtypes), "quantize": list(p.quantize),
                     "attention": p.attention, "page_size": p.page_size, "static_shapes": p.static_shapes,
                     "profiles": [_profile_row(resolve(f"{family}:{v}")) for v in variants]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        extra = ", static shapes (buckets)" if r["static_shapes"] else ""
        click.echo(f"{r['name']}: IREE device '{r['device']}', runtime driver '{r['driver']}', attention "
                   f"{r['attention']}, page size {r['page_size']}, dtypes {'/'.join(r['dtypes'])}"
                   f"{', --quantize ' + '/'.join(r['quantize']) if r['quantize'] else ''}{extra}")
        for prof in r["profiles"]:
            mark = " (default)" if prof["variant"] == r["default"] else ""
            if (prof["dtypes"], prof["quantize"]) != (r["dtypes"], r["quantize"]):
                mark += f" [dtypes {'/'.join(prof['dtypes'])}; --quantize {'/'.join(prof['quantize']) or 'none'}]"
            click.echo(f"  {r['name'] + ':' + prof['variant']:22} {prof['notes']}{mark}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """List the model families `llmirc compile` reads, and what each supports (docs/models.md)."""
    from .frontend.families import FAMILIES

    rows, seen = [], set()
    for f in FAMILIES.values():
        if f.name not in seen:
            seen.add(f.name)
            rows.append({"family": f.name, "architectures": list(f.architectures), "summary": f.summary,
                         "supports": list(f.features), "refuses": list(f.refused)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['family']}: {', '.join(r['architectures'])}\n  {r['summary']}")
        click.echo(f"  supports: {'; '.join(r['supports'])}")
        if r["refuses"]:
            click.echo(f"  refuses:  {'; '.join(r['refuses'])}")


def _profile_row(p) -> dict:
    return {"variant": p.variant, "flags": list(p.flags), "o3_flags": list(p.o3_flags), "notes": p.notes,
            "dtypes": list(p.dtypes), "quantize": list(p.quantize), "index_dtype": p.index_dtype,
            "systolic_tile": p.systolic_tile, "vnni": p.vnni}


# ---- testing helpers -----------------------------------------------------------------

@main.group()
def testing() -> None:
    """Make offline test inputs (random-weight checkpoints)."""


@testing.command("make-checkpoint")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(["llama"]), default="llama", show_default=True)
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--hidden", type=click.IntRange(1), default=64, show_default=True)
@click.option("--heads", type=click.IntRange(1), default=4, show_default=True)
@click.option("--kv-heads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--intermediate", type=click.IntRange(1), default=128, show_default=True)
@click.option("--vocab", type=click.IntRange(4), default=512, show_default=True)
@click.option("--max-seq-len", type=click.IntRange(1), default=256, show_default=True)
@click.option("--tie-embeddings", is_flag=True)
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--prequantized", type=click.Choice(["gptq", "awq"]),
              help="Store the decoder linears packed as GPTQ or AWQ does (known integers; docs/quantization.md).")
@click.option("--bits", type=click.Choice(["4", "8"]), default="4", show_default=True, help="With --prequantized.")
@click.option("--group-size", type=click.IntRange(1), default=32, show_default=True, help="With --prequantized.")
def make_checkpoint_cmd(directory: Path, arch: str, layers: int, hidden: int, heads: int, kv_heads: int,
                        intermediate: int, vocab: int, max_seq_len: int, tie_embeddings: bool, shards: int,
                        dtype: str, seed: int, prequantized: str | None, bits: str, group_size: int) -> None:
    """Write a random-weight Llama checkpoint (HF layout + tokenizer.json) to DIRECTORY."""
    from .testing.checkpoints import CheckpointSpec, make_checkpoint

    if hidden % heads or heads % kv_heads:
        raise LlmircError(f"--hidden ({hidden}) must divide by --heads ({heads}) and --heads by "
                          f"--kv-heads ({kv_heads})")
    spec = CheckpointSpec(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, intermediate=intermediate,
                          vocab=vocab, max_seq_len=max_seq_len, tie_embeddings=tie_embeddings, seed=seed,
                          shards=shards, dtype=dtype)
    if prequantized:
        from .testing.prequantized import make_prequantized_checkpoint

        if prequantized == "awq" and bits != "4":
            raise LlmircError("--prequantized awq stores 4-bit values; drop --bits 8")
        click.echo(str(make_prequantized_checkpoint(directory, spec, prequantized, int(bits), group_size)[0]))
        return
    click.echo(str(make_checkpoint(directory, spec)))


if __name__ == "__main__":
    main()
