"""The compile driver: checkpoint -> llm IR -> pipeline -> IREE input -> vmfb -> artifact.

Every stage is a function call with explicit inputs and outputs; `emit` stops
after any stage and writes what it produced (DESIGN.md: each arrow can be
stopped at and printed). Outputs are written to a temporary path and renamed,
so an error never leaves a half-written file or artifact behind.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Callable

from . import __version__
from .dialect import print_module
from .dialect.context import weight_types
from .errors import LlmircError
from .frontend import import_checkpoint
from .pipelines import PassManager, QuantConfig, WeightStore, parse_pipeline, pipeline_for_level, precision_passes
from .targets import TargetProfile, resolve

EMIT_KINDS = ("llm", "llm-opt", "iree-input", "vmfb")
WEIGHT_DTYPES = ("f32", "f16", "bf16")
DTYPE_CHOICES = ("auto",) + WEIGHT_DTYPES
# config.json torch_dtype -> the weight dtype that keeps it exactly (--dtype auto).
CHECKPOINT_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
DEFAULT_GROUP_SIZE = 128


@dataclass
class CompileOptions:
    checkpoint: Path
    output: Path
    target: str = "cpu"
    opt_level: int = 3
    emit: str = "vmfb"
    max_seq_len: int | None = None
    page_size: int | None = None
    passes: str | None = None  # custom pipeline text, replaces the level's pipeline
    print_ir_after_all: bool = False
    print_ir_after: tuple[str, ...] = ()
    timing: bool = False
    verify_each: bool = True
    quantize: str | None = None  # "int8" | "int4": quantize-weights (docs/quantization.md)
    group_size: int | None = None  # None: DEFAULT_GROUP_SIZE; only with quantize
    symmetric: bool = True
    keep_float: str = "embed,lm_head"  # linears whose weight name/location contains one stay float
    lm_head: str = "float"  # "int8" | "int4": lm_head weight-only in those bits, with quantize (LM_HEAD_SCHEMES)
    # Weight matrices stored as f32 | f16 | bf16 (activations stay f32); "auto": the checkpoint's
    # torch_dtype where the target supports it, else f32 (resolve_dtype).
    dtype: str = "auto"
    buckets: str | None = None  # static-shape targets: "batch=1,4;len=32,128;pages=65" (docs/targets.md)
    tp: int = 1  # tensor parallelism: one module for tp devices of the target's kind (docs/parallel.md)
    pp: int = 1  # pipeline parallelism: pp stages of contiguous layers, one module per stage (docs/parallel.md)


@dataclass
class CompileResult:
    output: Path
    target: TargetProfile
    stage_seconds: dict[str, float] = field(default_factory=dict)
    dtype: str = "f32"  # the weight dtype used (--dtype auto resolved)


Progress = Callable[[str], None]
# Called about once a second while a long stage (iree-compile) runs: (stage line, seconds so far).
Tick = Callable[[str, float], None]


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file via a temporary sibling + rename: never a half-written output."""
    path = Path(path)
    check_output(path, "file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise LlmircError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise LlmircError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output(path: Path, kind: str) -> None:
    """Refuse an output we could not write, before any work: a 7B compile takes many minutes,
    and finding out at the end wastes all of them. `kind` is "artifact" (a directory that
    write_bundle replaces) or "file" (write_atomic). Writability is probed by creating a file,
    which also catches read-only file systems and is right for root."""
    path = Path(path)
    if kind == "artifact":
        from .artifacts.bundle import check_replaceable

        check_replaceable(path)
    elif path.is_dir():
        raise LlmircError(f"{path} is a directory, but this --emit writes one file; give a file path "
                          "such as model.mlir")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LlmircError(f"cannot write {path}: {parent} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".llmirc-write-check-")
    except OSError as e:
        raise LlmircError(f"cannot write {path}: {parent} is not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def resolve_dtype(requested: str, checkpoint_dtype: str, target: TargetProfile) -> tuple[str, str | None]:
    """The weight dtype to store, and a warning when --dtype auto must widen the checkpoint's.

    auto keeps the checkpoint's precision (bf16/f16 stored as such are exact copies: no rounding)
    when the target runs it; otherwise f32, which doubles the weights' size, so that is said.
    """
    if requested != "auto":
        return requested, None
    wanted = CHECKPOINT_DTYPES.get(checkpoint_dtype, "f32")
    if wanted in target.dtypes:
        return wanted, None
    return "f32", (f"the checkpoint's weights are {checkpoint_dtype} but target {target.full_name} has no {wanted} "
                   f"(supported: {', '.join(target.dtypes)}); storing them as f32 (twice the size)")


@contextmanager
def _ticking(line: str, tick: Tick | None, interval: float = 1.0):
    """Call `tick(line, elapsed)` every `interval` seconds from a helper thread while the body
    runs (iree-compile is one blocking call that takes most of the compile time)."""
    if tick is None:
        yield
        return
    done = threading.Event()
    t0 = time.perf_counter()

    def beat() -> None:
        while not done.wait(interval):
            tick(line, time.perf_counter() - t0)

    thread = threading.Thread(target=beat, name="llmirc-tick", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def format_stage_timing(seconds: dict[str, float]) -> str:
    """`--timing`'s stage table (the pass table covers the optimize stage's inside)."""
    total = sum(seconds.values()) or 1e-12
    lines = ["===- llmirc stage timing -==="]
    lines += [f"  {t:9.2f} s  {100 * t / total:5.1f}%  {name}" for name, t in seconds.items()]
    lines.append(f"  {total:9.2f} s  100.0%  total")
    return "\n".join(lines)


def compile_checkpoint(opts: CompileOptions, progress: Progress | None = _stderr_progress,
                       warn: Progress = _stderr_warning, tick: Tick | None = None) -> CompileResult:
    """Run the stages `opts.emit` asks for. `progress` gets stage lines (None: quiet);
    `warn` gets warnings (unknown config.json keys, ...), printed even when quiet; `tick`
    gets a heartbeat during iree-compile. Every check of the options and the output path
    comes before the import, so a mistake costs no compile time."""
    if opts.emit not in EMIT_KINDS:
        raise LlmircError(f"--emit must be one of {', '.join(EMIT_KINDS)}, got '{opts.emit}'")
    if opts.dtype not in DTYPE_CHOICES:
        raise LlmircError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got '{opts.dtype}'")
    if opts.group_size is not None and not opts.quantize:
        raise LlmircError(f"--group-size {opts.group_size} does nothing without --quantize int8|int4; "
                          "add --quantize or drop --group-size")
    if opts.lm_head != "float" and not opts.quantize:
        raise LlmircError(f"--lm-head {opts.lm_head} quantizes lm_head beside the other linears; add --quantize "
                          "int8|int4|w8a8|w4a8|w4a16 or drop --lm-head")
    group_size = DEFAULT_GROUP_SIZE if opts.group_size is None else opts.group_size
    quant = QuantConfig.parse(opts.quantize, group_size, opts.symmetric, opts.keep_float, opts.lm_head) \
        if opts.quantize else None
    target = resolve(opts.target)
    target.check_precision("f32" if opts.dtype == "auto" else opts.dtype, opts.quantize)
    target.check_devices(opts.tp)
    if opts.tp > 1 and opts.quantize:
        raise LlmircError(f"--tp {opts.tp} with --quantize {opts.quantize} is not supported yet: shard-tp splits "
                          "float weights only (docs/parallel.md)")
    if opts.pp < 1:
        raise LlmircError(f"--pp must be at least 1, got {opts.pp}")
    if opts.pp > 1:
        if opts.tp > 1:
            raise LlmircError(f"--pp {opts.pp} with --tp {opts.tp} is not supported yet: each pipeline stage runs "
                              "on one device (docs/parallel.md)")
        if target.static_shapes or target.device not in ("local", "cuda", "hip"):
            raise LlmircError(f"--pp {opts.pp}: pipeline parallelism compiles for cpu, cuda and rocm targets, "
                              f"not {target.full_name}")
        if opts.passes:
            raise LlmircError(f"--pp {opts.pp} with --passes is not supported: each stage runs the -O level's "
                              "pipeline")
    bucket_spec = _bucket_spec(target, opts.buckets)
    check_output(Path(opts.output), "artifact" if opts.emit == "vmfb" else "file")
    page_size = opts.page_size or target.page_size
    result = CompileResult(Path(opts.output), target)
    stages = {"llm": 1, "llm-opt": 2, "iree-input": 3, "vmfb": 5}[opts.emit]
    step = iter(range(1, 10))

    current = [""]  # the latest stage line, for the heartbeat

    def stage(name: str):
        current[0] = f"[{next(step)}/{stages}] {name}"
        if progress:
            progress(current[0])
        return time.perf_counter()

    t = stage(f"import {opts.checkpoint}")
    model = import_checkpoint(opts.checkpoint, opts.max_seq_len)
    for message in model.config.warnings:
        warn(message)
    dtype, widened = resolve_dtype(opts.dtype, model.config.torch_dtype, target)
    result.dtype = dtype
    if widened:
        warn(widened)
    buckets = bucket_spec.resolve(model.config.max_seq_len, page_size) if bucket_spec else None
    if opts.pp > model.config.num_layers:
        raise LlmircError(f"--pp {opts.pp}: the model has {model.config.num_layers} layers, fewer than the stages; "
                          f"use --pp 1..{model.config.num_layers}")
    result.stage_seconds["import"] = time.perf_counter() - t
    if opts.pp > 1:
        return _compile_pipeline(opts, model, target, dtype, quant, page_size, result, stage, current, tick, progress)
    if opts.emit == "llm":
        write_atomic(opts.output, print_module(model.module, debug_info=False))
        return _timed(result, opts)

    t = stage(f"optimize -O{opts.opt_level}" + (f" --passes={opts.passes}" if opts.passes else "")
              + f", weights {dtype}" + (f" (--dtype auto: checkpoint {model.config.torch_dtype})"
                                        if opts.dtype == "auto" else ""))
    passes = parse_pipeline(opts.passes) + precision_passes(quant, dtype) if opts.passes \
        else pipeline_for_level(opts.opt_level, page_size, quant, dtype, tp=opts.tp)
    if opts.passes and opts.tp > 1 and all(name != "shard-tp" for name, _ in passes):
        passes.append(("shard-tp", {"tp": opts.tp}))
    weights = model.weight_store()
    PassManager(passes, verify_each=opts.verify_each, print_ir_after_all=opts.print_ir_after_all,
                print_ir_after=frozenset(opts.print_ir_after), timing=opts.timing,
                weights=weights).run(model.module)
    result.stage_seconds["optimize"] = time.perf_counter() - t
    if opts.emit == "llm-opt":
        write_atomic(opts.output, print_module(model.module))
        return _timed(result, opts)

    from .lowering import lower_to_iree

    t = stage(f"lower to IREE input (attention: {target.attention})")
    decode_batches = target.decode_batches(opts.opt_level, quantized=_dynamic_decode(quant, target, opts.tp))
    prefill_rows = target.prefill_rows(opts.opt_level)
    iree_input = target.module_text(lower_to_iree(model.module, attention=target.attention, buckets=buckets,
                                                  tile=target.systolic_tile, backend=_backend(target),
                                                  decode_batches=decode_batches, prefill_rows=prefill_rows,
                                                  vnni=target.vnni),
                                    num_devices=opts.tp)
    result.stage_seconds["lower"] = time.perf_counter() - t
    if opts.emit == "iree-input":
        write_atomic(opts.output, iree_input)
        return _timed(result, opts)

    from .artifacts import write_bundle
    from .lowering import compile_iree, stored_transposed, stored_vnni
    from .lowering.to_iree import row_chunk_functions

    t = stage(f"iree-compile for {target.full_name}")
    with _ticking(current[0], tick if progress else None):
        vmfb = compile_iree(iree_input, target.compile_flags(opts.opt_level, num_devices=opts.tp,
                                                             integer_matmuls=bool(quant and quant.act_bits)))
    result.stage_seconds["iree-compile"] = time.perf_counter() - t

    t = stage(f"write artifact {opts.output}")
    manifest = write_bundle(
        opts.output, vmfb=vmfb, params=_LazyParams(weights, weight_types(model.module),
                                                    stored_transposed(model.module),
                                                    stored_vnni(model.module) if target.vnni else {}),
        tokenizer_files=model.tokenizer_files(),
        model=model.config.summary(), target=_target_record(target, opts.opt_level, buckets, opts.tp),
        entry_points=_entry_points(target, buckets, decode_batches, opts.tp,
                                   {name: {str(prefill_rows): export} for name, export in
                                    row_chunk_functions(model.module, None if buckets else prefill_rows).items()}),
        opt_level=opts.opt_level, kv=_kv_record(page_size, model.config.num_kv_heads, opts.tp),
        compiler={"llmirc": __version__, "iree": _iree_version(),
                  "weights": _weights_record(dtype, opts.dtype, quant, weight_types(model.module))},
        source={"checkpoint": str(opts.checkpoint)})
    from .runtime.probe import mark_verified

    mark_verified(manifest.files["model.vmfb"])  # we wrote it: no need to test-run it before use
    result.stage_seconds["write"] = time.perf_counter() - t
    return _timed(result, opts)


def stage_vmfb_name(i: int) -> str:
    """The file of pipeline stage i: stage 0 is model.vmfb (what every reader of an artifact
    finds first), stage i > 0 stage{i}.vmfb."""
    return "model.vmfb" if i == 0 else f"stage{i}.vmfb"


def _compile_pipeline(opts: CompileOptions, model, target: TargetProfile, dtype: str, quant, page_size: int,
                      result: CompileResult, stage, current, tick, progress) -> CompileResult:
    """--pp N: stage i is layers [a, b) of stage_layers(L, N), built by the frontend as its own
    llm module (stage 0 with the embedding, the last with the final norm and lm_head), run
    through the level's pipeline and lowered to its own one-device vmfb; all stages share one
    model.irpa (docs/parallel.md)."""
    from .frontend import stage_layers

    ranges = stage_layers(model.config.num_layers, opts.pp)
    modules = [model.stage_module(r) for r in ranges]

    def joined(texts) -> str:
        return "".join(f"// stage {i}: layers {a}..{b - 1}\n{text}" for i, ((a, b), text) in
                       enumerate(zip(ranges, texts)))

    if opts.emit == "llm":
        write_atomic(opts.output, joined(print_module(m, debug_info=False) for m in modules))
        return _timed(result, opts)
    t = stage(f"optimize -O{opts.opt_level} (each of {opts.pp} pipeline stages), weights {dtype}")
    passes = pipeline_for_level(opts.opt_level, page_size, quant, dtype)
    weights = model.weight_store()
    for m in modules:
        PassManager(passes, verify_each=opts.verify_each, print_ir_after_all=opts.print_ir_after_all,
                    print_ir_after=frozenset(opts.print_ir_after), timing=opts.timing, weights=weights).run(m)
    result.stage_seconds["optimize"] = time.perf_counter() - t
    if opts.emit == "llm-opt":
        write_atomic(opts.output, joined(print_module(m) for m in modules))
        return _timed(result, opts)

    from .lowering import lower_to_iree

    t = stage(f"lower to IREE input (attention: {target.attention}), {opts.pp} stages")
    decode_batches = target.decode_batches(opts.opt_level, quantized=_dynamic_decode(quant, target))
    inputs = [target.module_text(lower_to_iree(m, attention=target.attention, tile=target.systolic_tile,
                                               backend=_backend(target), decode_batches=decode_batches,
                                               vnni=target.vnni))
              for m in modules]
    result.stage_seconds["lower"] = time.perf_counter() - t
    if opts.emit == "iree-input":
        write_atomic(opts.output, joined(inputs))
        return _timed(result, opts)

    from .artifacts import write_bundle
    from .lowering import compile_iree, stored_transposed, stored_vnni

    t = stage(f"iree-compile for {target.full_name}, {opts.pp} stages")
    flags = target.compile_flags(opts.opt_level, integer_matmuls=bool(quant and quant.act_bits))
    with _ticking(current[0], tick if progress else None):
        vmfbs = [compile_iree(text, flags) for text in inputs]
    result.stage_seconds["iree-compile"] = time.perf_counter() - t

    t = stage(f"write artifact {opts.output}")
    types: dict = {}
    transposed: set[str] = set()
    vnni: dict[str, str] = {}
    for m in modules:
        types |= weight_types(m)
        transposed |= stored_transposed(m)
        vnni |= stored_vnni(m) if target.vnni else {}
    record = _target_record(target, opts.opt_level, None, 1)
    record["devices"] = {"count": opts.pp, "kind": target.device, "parallelism": "pipeline",
                         "stages": [{"layers": [a, b], "vmfb": stage_vmfb_name(i),
                                     "input": "tokens" if i == 0 else "hidden",
                                     "output": "logits" if b == model.config.num_layers else "hidden"}
                                    for i, (a, b) in enumerate(ranges)]}
    kv = _kv_record(page_size, model.config.num_kv_heads, 1)
    kv["pools"] = opts.pp
    kv["pool_layers"] = [b - a for a, b in ranges]
    manifest = write_bundle(
        opts.output, vmfb=vmfbs[0], params=_LazyParams(weights, types, transposed, vnni),
        extra_files={stage_vmfb_name(i): v for i, v in enumerate(vmfbs) if i > 0},
        tokenizer_files=model.tokenizer_files(), model=model.config.summary(), target=record,
        entry_points=_entry_points(target, None, decode_batches, 1), opt_level=opts.opt_level, kv=kv,
        compiler={"llmirc": __version__, "iree": _iree_version(),
                  "weights": _weights_record(dtype, opts.dtype, quant, types)},
        source={"checkpoint": str(opts.checkpoint)})
    from .runtime.probe import mark_verified

    mark_verified(manifest.files["model.vmfb"])  # we wrote it (the probe runs every stage from this one's key)
    result.stage_seconds["write"] = time.perf_counter() - t
    return _timed(result, opts)


def _timed(result: CompileResult, opts: CompileOptions) -> CompileResult:
    if opts.timing:
        print(format_stage_timing(result.stage_seconds), file=sys.stderr, flush=True)
    return result


class _LazyParams(Mapping):
    """The tensors the IR references, computed/loaded one at a time as the archive is written,
    each encoded as the lowering reads it (int4 packed two per byte, bf16 bits, quantized
    matmul weights transposed, or in a CPU kernel's layout where the target has VNNI: `vnni`,
    weight name -> lowering/quantized.py's STORED_LAYOUTS kind)."""

    def __init__(self, store: WeightStore, types: dict, transposed: set[str], vnni: dict[str, str]):
        self.store, self.types, self.transposed, self.names = store, types, transposed, list(types)
        self.vnni = vnni

    def __getitem__(self, name: str):
        from .artifacts.params import encode_param

        value = encode_param(self.store[name], self.types[name].dtype, name in self.transposed, self.vnni.get(name))
        self.store.drop_cached(set())  # intermediates (f32 originals of derived weights) can go now
        return value

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _dynamic_decode(quant: QuantConfig | None, target: TargetProfile, devices: int = 1) -> bool:
    """Weight-only quantized decode is faster through IREE's kernel with a dynamic batch, unless
    lowering/gemv.py's kernel takes the scheme on this target (symmetric int4 and int8 on VNNI
    CPUs, one-device modules: one pass over the weight for a static batch); w8a8's, w4a8's and
    w4a16's integer products are faster with a static one."""
    from .lowering.gemv import takes_decode

    return (quant is not None and not quant.act_bits
            and not (devices == 1 and takes_decode(target.vnni, quant.bits, quant.symmetric)))


def _backend(t: TargetProfile) -> str | None:
    """IREE's codegen backend for the target ("llvm-cpu", ...), from its flags."""
    for flag in t.flags:
        if flag.startswith("--iree-hal-local-target-device-backends="):
            return flag.split("=", 1)[1]
    return None


_QUANTIZED_NAME = re.compile(r"^(?P<base>.+)\.int(?P<bits>\d+)_g(?P<group>\d+)_(?:a?sym)\.qweight$")


def _weights_record(dtype: str, requested: str, quant: QuantConfig | None, types: Mapping) -> dict:
    """manifest compiler.weights: the stored dtype (and what was asked), and with --quantize
    the group size each quantized weight actually got (a layer whose in-features the asked
    size does not divide gets a smaller one; docs/quantization.md)."""
    record: dict = {"dtype": dtype}
    if requested != dtype:
        record["requested_dtype"] = requested
    if quant is not None:
        record["quantize"] = {"scheme": quant.scheme, "group_size": quant.group_size,
                              "symmetric": quant.symmetric, "keep_float": quant.keep,
                              "lm_head": quant.lm_head,
                              "layer_group_sizes": layer_group_sizes(types)}
    return record


def layer_group_sizes(names) -> dict[str, int]:
    """Quantized weight (its checkpoint name) -> effective group size, from the derived
    `<name>.int4_g86_sym.qweight` names the quantize-weights pass gives its tensors."""
    out = {}
    for name in names:
        m = _QUANTIZED_NAME.match(name)
        if m:
            out[m["base"]] = int(m["group"])
    return dict(sorted(out.items()))


def _target_record(t: TargetProfile, opt_level: int, buckets: dict | None = None, tp: int = 1) -> dict:
    record = {"name": t.name, "variant": t.variant, "device": t.device, "driver": t.driver,
              "flags": t.compile_flags(opt_level, num_devices=tp), "attention": t.attention,
              "static_shapes": t.static_shapes}
    if tp > 1:  # tensor parallelism: the module runs on tp devices of this kind at once
        record["devices"] = {"count": tp, "kind": t.device, "parallelism": "tensor"}
    if t.index_dtype != "i64":
        record["index_dtype"] = t.index_dtype  # tokens/positions/block tables at the module ABI
    if t.device_target_attr:
        record["device_target_attr"] = t.device_target_attr  # put on the module: IREE lacks this variant
    if t.systolic_tile:
        record["systolic_tile"] = t.systolic_tile
    if t.vnni:  # w8a8 products through lowering/vnni.py (weights stored in its order): needs AVX512-VNNI
        record["vnni"] = True
    if buckets:
        record["buckets"] = buckets  # static-shape entry points: prefill_b{B}_t{T}, decode_b{B}
    return record


def _kv_record(page_size: int, kv_heads: int, tp: int) -> dict:
    """manifest kv: the pool geometry; with tp > 1 one pool per device, each holding its
    devices' KV heads (kv_heads / tp, or 1 when a head is replicated on several devices)."""
    record: dict = {"page_size": page_size, "dtype": "f32"}
    if tp > 1:
        record["pools"] = tp
        record["pool_kv_heads"] = kv_heads // tp if kv_heads >= tp else 1
    return record


def _bucket_spec(t: TargetProfile, spec: str | None):
    """The target's compile-time buckets (None for dynamic-shape targets), `--buckets` applied."""
    if not t.static_shapes:
        if spec:
            raise LlmircError(f"--buckets is for static-shape targets (tpu-like); {t.full_name} compiles "
                              "dynamic batch and length")
        return None
    from .targets import Buckets

    return Buckets.parse(spec, t.buckets) if spec else (t.buckets or Buckets())


def _entry_points(t: TargetProfile, buckets: dict | None, decode_batches: tuple[int, ...] = (),
                  tp: int = 1, row_functions: dict[str, dict[str, str]] | None = None) -> dict | None:
    """Manifest entry_points: the ABI v1 signatures, with the index type, the static functions,
    the static-batch decode functions (`decode.batch_functions`, batch -> name) and the
    row-chunked prefill/extend (`row_functions`, least token rows -> name; row_chunk_functions);
    with tp > 1 the one pool argument and result are tp of them (`pool@i`: device i's)."""
    if t.index_dtype == "i64" and not buckets and not decode_batches and tp == 1 and not row_functions:
        return None
    from .artifacts.manifest import DEFAULT_ENTRY_POINTS
    from .lowering.to_iree import batch_decode_entry_points, static_entry_points

    eps = json.loads(json.dumps(DEFAULT_ENTRY_POINTS).replace("i64[", f"{t.index_dtype}["))
    if buckets:
        for name, specs in static_entry_points(buckets).items():
            if specs:
                eps[name]["functions"] = [export for export, _ in specs]
            else:
                del eps[name]  # not compiled for static shapes (extend_all)
    if tp > 1:
        pools = [f"pool@{i}" for i in range(tp)]
        for sig in eps.values():
            for key in ("args", "results"):
                sig[key] = [x for a in sig[key] for x in (pools if a == "pool" else [a])]
    if decode_batches:
        eps["decode"]["batch_functions"] = {str(dims["B"]): export
                                            for export, dims in batch_decode_entry_points(decode_batches)}
    for name, by_rows in (row_functions or {}).items():
        eps[name]["row_functions"] = by_rows
    return eps


def _iree_version() -> str:
    from importlib.metadata import version

    return version("iree-base-compiler")
