"""The compile driver: checkpoint -> llm IR -> pipeline -> IREE input -> vmfb -> artifact.

Every stage is a function call with explicit inputs and outputs; `emit` stops
after any stage and writes what it produced (DESIGN.md: each arrow can be
stopped at and printed). Outputs are written to a temporary path and renamed,
so an error never leaves a half-written file or artifact behind.
"""

from __future__ import annotations

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
from .dialect.context import weight_names
from .errors import LlmircError
from .frontend import import_checkpoint, weight_shapes
from .pipelines import PassManager, WeightStore, parse_pipeline, pipeline_for_level
from .targets import TargetProfile, resolve

EMIT_KINDS = ("llm", "llm-opt", "iree-input", "vmfb")


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


@dataclass
class CompileResult:
    output: Path
    target: TargetProfile
    stage_seconds: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def compile_checkpoint(opts: CompileOptions, progress: Progress | None = _stderr_progress) -> CompileResult:
    if opts.emit not in EMIT_KINDS:
        raise LlmircError(f"--emit must be one of {', '.join(EMIT_KINDS)}, got '{opts.emit}'")
    target = resolve(opts.target)
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
    result.stage_seconds["import"] = time.perf_counter() - t
    if opts.emit == "llm":
        write_atomic(opts.output, print_module(model.module, debug_info=False))
        return result

    t = stage(f"optimize -O{opts.opt_level}" + (f" --passes={opts.passes}" if opts.passes else ""))
    passes = parse_pipeline(opts.passes) if opts.passes else pipeline_for_level(opts.opt_level, page_size)
    weights = WeightStore(model.checkpoint.load, list(weight_shapes(model.config)))
    PassManager(passes, verify_each=opts.verify_each, print_ir_after_all=opts.print_ir_after_all,
                print_ir_after=frozenset(opts.print_ir_after), timing=opts.timing,
                weights=weights).run(model.module)
    result.stage_seconds["optimize"] = time.perf_counter() - t
    if opts.emit == "llm-opt":
        write_atomic(opts.output, print_module(model.module))
        return result

    from .lowering import lower_to_iree

    t = stage(f"lower to IREE input (attention: {target.attention})")
    iree_input = lower_to_iree(model.module, attention=target.attention)
    result.stage_seconds["lower"] = time.perf_counter() - t
    if opts.emit == "iree-input":
        write_atomic(opts.output, iree_input)
        return result

    from .artifacts import write_bundle
    from .lowering import compile_iree

    t = stage(f"iree-compile for {target.full_name}")
    vmfb = compile_iree(iree_input, target.compile_flags(opts.opt_level))
    result.stage_seconds["iree-compile"] = time.perf_counter() - t

    t = stage(f"write artifact {opts.output}")
    write_bundle(
        opts.output, vmfb=vmfb, params=_LazyParams(weights, weight_names(model.module)),
        tokenizer_files=model.tokenizer_files(),
        model=model.config.summary(), target=_target_record(target, opts.opt_level),
        opt_level=opts.opt_level, kv={"page_size": page_size, "dtype": "f32"},
        compiler={"llmirc": __version__, "iree": _iree_version()},
        source={"checkpoint": str(opts.checkpoint)})
    result.stage_seconds["write"] = time.perf_counter() - t
    return result


class _LazyParams(Mapping):
    """The tensors the IR references, computed/loaded one at a time as the archive is written."""

    def __init__(self, store: WeightStore, names: list[str]):
        self.store, self.names = store, names

    def __getitem__(self, name: str):
        return self.store[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _target_record(t: TargetProfile, opt_level: int) -> dict:
    return {"name": t.name, "variant": t.variant, "device": t.device, "driver": t.driver,
            "flags": t.compile_flags(opt_level), "attention": t.attention, "static_shapes": t.static_shapes}


def _iree_version() -> str:
    from importlib.metadata import version

    return version("iree-base-compiler")
