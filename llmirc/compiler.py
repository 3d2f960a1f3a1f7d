"""The compile driver: checkpoint -> llm IR -> pipeline -> IREE input -> vmfb -> artifact.

Every stage is a function call with explicit inputs and outputs; `emit` stops
after any stage and writes what it produced (DESIGN.md: each arrow can be
stopped at and printed). Outputs are written to a temporary path and renamed,
so an error never leaves a half-written file or artifact behind.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
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
    group_size: int = 128
    symmetric: bool = True
    keep_float: str = "embed,lm_head"  # linears whose weight name/location contains one stay float
    dtype: str = "f32"  # weight matrices stored as f32 | f16 | bf16 (activations stay f32)
    buckets: str | None = None  # static-shape targets: "batch=1,4;len=32,128;pages=65" (docs/targets.md)


@dataclass
class CompileResult:
    output: Path
    target: TargetProfile
    stage_seconds: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file via a temporary sibling + rename: never a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compile_checkpoint(opts: CompileOptions, progress: Progress | None = _stderr_progress,
                       warn: Progress = _stderr_warning) -> CompileResult:
    """Run the stages `opts.emit` asks for. `progress` gets stage lines (None: quiet);
    `warn` gets warnings (unknown config.json keys, ...), printed even when quiet."""
    if opts.emit not in EMIT_KINDS:
        raise LlmircError(f"--emit must be one of {', '.join(EMIT_KINDS)}, got '{opts.emit}'")
    if opts.dtype not in WEIGHT_DTYPES:
        raise LlmircError(f"--dtype must be one of {', '.join(WEIGHT_DTYPES)}, got '{opts.dtype}'")
    quant = QuantConfig.parse(opts.quantize, opts.group_size, opts.symmetric, opts.keep_float) \
        if opts.quantize else None
    target = resolve(opts.target)
    target.check_precision(opts.dtype, opts.quantize)
    bucket_spec = _bucket_spec(target, opts.buckets)
    page_size = opts.page_size or target.page_size
    result = CompileResult(Path(opts.output), target)
    stages = {"llm": 1, "llm-opt": 2, "iree-input": 3, "vmfb": 5}[opts.emit]
    step = iter(range(1, 10))

    def stage(name: str):
        n = next(step)
        if progress:
            progress(f"[{n}/{stages}] {name}")
        return time.perf_counter()

    t = stage(f"import {opts.checkpoint}")
    model = import_checkpoint(opts.checkpoint, opts.max_seq_len)
    for message in model.config.warnings:
        warn(message)
    buckets = bucket_spec.resolve(model.config.max_seq_len, page_size) if bucket_spec else None
    result.stage_seconds["import"] = time.perf_counter() - t
    if opts.emit == "llm":
        write_atomic(opts.output, print_module(model.module, debug_info=False))
        return result

    t = stage(f"optimize -O{opts.opt_level}" + (f" --passes={opts.passes}" if opts.passes else ""))
    passes = parse_pipeline(opts.passes) + precision_passes(quant, opts.dtype) if opts.passes \
        else pipeline_for_level(opts.opt_level, page_size, quant, opts.dtype)
    weights = model.weight_store()
    PassManager(passes, verify_each=opts.verify_each, print_ir_after_all=opts.print_ir_after_all,
                print_ir_after=frozenset(opts.print_ir_after), timing=opts.timing,
                weights=weights).run(model.module)
    result.stage_seconds["optimize"] = time.perf_counter() - t
    if opts.emit == "llm-opt":
        write_atomic(opts.output, print_module(model.module))
        return result

    from .lowering import lower_to_iree

    t = stage(f"lower to IREE input (attention: {target.attention})")
    decode_batches = target.decode_batches(opts.opt_level, quantized=quant is not None)
    iree_input = target.module_text(lower_to_iree(model.module, attention=target.attention, buckets=buckets,
                                                  tile=target.systolic_tile, backend=_backend(target),
                                                  decode_batches=decode_batches))
    result.stage_seconds["lower"] = time.perf_counter() - t
    if opts.emit == "iree-input":
        write_atomic(opts.output, iree_input)
        return result

    from .artifacts import write_bundle
    from .lowering import compile_iree, stored_transposed

    t = stage(f"iree-compile for {target.full_name}")
    vmfb = compile_iree(iree_input, target.compile_flags(opts.opt_level))
    result.stage_seconds["iree-compile"] = time.perf_counter() - t

    t = stage(f"write artifact {opts.output}")
    write_bundle(
        opts.output, vmfb=vmfb, params=_LazyParams(weights, weight_types(model.module),
                                                    stored_transposed(model.module)),
        tokenizer_files=model.tokenizer_files(),
        model=model.config.summary(), target=_target_record(target, opts.opt_level, buckets),
        entry_points=_entry_points(target, buckets, decode_batches),
        opt_level=opts.opt_level, kv={"page_size": page_size, "dtype": "f32"},
        compiler={"llmirc": __version__, "iree": _iree_version(), "weights": _weights_record(opts, quant)},
        source={"checkpoint": str(opts.checkpoint)})
    result.stage_seconds["write"] = time.perf_counter() - t
    return result


class _LazyParams(Mapping):
    """The tensors the IR references, computed/loaded one at a time as the archive is written,
    each encoded as the lowering reads it (int4 packed two per byte, bf16 bits, quantized
    matmul weights transposed)."""

    def __init__(self, store: WeightStore, types: dict, transposed: set[str]):
        self.store, self.types, self.transposed, self.names = store, types, transposed, list(types)

    def __getitem__(self, name: str):
        from .artifacts.params import encode_param

        value = encode_param(self.store[name], self.types[name].dtype, name in self.transposed)
        self.store.drop_cached(set())  # intermediates (f32 originals of derived weights) can go now
        return value

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _backend(t: TargetProfile) -> str | None:
    """IREE's codegen backend for the target ("llvm-cpu", ...), from its flags."""
    for flag in t.flags:
        if flag.startswith("--iree-hal-local-target-device-backends="):
            return flag.split("=", 1)[1]
    return None


def _weights_record(opts: CompileOptions, quant: QuantConfig | None) -> dict:
    record: dict = {"dtype": opts.dtype}
    if quant is not None:
        record["quantize"] = {"scheme": quant.scheme, "group_size": quant.group_size,
                              "symmetric": quant.symmetric, "keep_float": quant.keep}
    return record


def _target_record(t: TargetProfile, opt_level: int, buckets: dict | None = None) -> dict:
    record = {"name": t.name, "variant": t.variant, "device": t.device, "driver": t.driver,
              "flags": t.compile_flags(opt_level), "attention": t.attention, "static_shapes": t.static_shapes}
    if t.index_dtype != "i64":
        record["index_dtype"] = t.index_dtype  # tokens/positions/block tables at the module ABI
    if t.device_target_attr:
        record["device_target_attr"] = t.device_target_attr  # put on the module: IREE lacks this variant
    if t.systolic_tile:
        record["systolic_tile"] = t.systolic_tile
    if buckets:
        record["buckets"] = buckets  # static-shape entry points: prefill_b{B}_t{T}, decode_b{B}
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


def _entry_points(t: TargetProfile, buckets: dict | None, decode_batches: tuple[int, ...] = ()) -> dict | None:
    """Manifest entry_points: the ABI v1 signatures, with the index type, the static functions
    and the static-batch decode functions (`decode.batch_functions`, batch -> name)."""
    if t.index_dtype == "i64" and not buckets and not decode_batches:
        return None
    from .artifacts.manifest import DEFAULT_ENTRY_POINTS
    from .lowering.to_iree import batch_decode_entry_points, static_entry_points

    eps = json.loads(json.dumps(DEFAULT_ENTRY_POINTS).replace("i64[", f"{t.index_dtype}["))
    if buckets:
        for name, specs in static_entry_points(buckets).items():
            eps[name]["functions"] = [export for export, _ in specs]
    if decode_batches:
        eps["decode"]["batch_functions"] = {str(dims["B"]): export
                                            for export, dims in batch_decode_entry_points(decode_batches)}
    return eps


def _iree_version() -> str:
    from importlib.metadata import version

    return version("iree-base-compiler")
