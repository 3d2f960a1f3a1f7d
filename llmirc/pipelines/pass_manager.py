"""Pass registry and pass manager over llm IR, with MLIR-style debugging controls.

A pass is a function `fn(module, **options) -> None` that rewrites the module
in place, registered with a name, a one-line description and its options.
The manager runs a list of (name, options), verifying after each pass so a
pass that breaks the IR is named in the error, and can print IR or timings.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from iree.compiler import ir

from ..dialect import print_module, verify_module
from ..errors import LlmircError

PassFn = Callable[..., None]


@dataclass(frozen=True)
class PassInfo:
    name: str
    description: str
    fn: PassFn
    options: dict[str, Any] = field(default_factory=dict)  # name -> default
    needs_weights: bool = False  # the pass reads/derives weight values (gets `weights=` a WeightStore)


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, description: str, needs_weights: bool = False,
                  **options: Any) -> Callable[[PassFn], PassFn]:
    def deco(fn: PassFn) -> PassFn:
        PASSES[name] = PassInfo(name, description, fn, options, needs_weights)
        return fn
    return deco


class PassError(LlmircError):
    pass


PassSpec = tuple[str, dict[str, Any]]


def _coerce(default: Any, text: str) -> Any:
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_pipeline(text: str) -> list[PassSpec]:
    """'a,b{opt=v,x=1},c' -> [('a', {}), ('b', {'opt': 'v', 'x': 1}), ('c', {})]."""
    out: list[PassSpec] = []
    for m in re.finditer(r"\s*([\w-]+)\s*(?:\{([^}]*)\})?\s*(?:,|$)", text):
        name, opts = m.group(1), m.group(2)
        if name not in PASSES:
            raise PassError(f"unknown pass '{name}' (see `llmirc passes`)")
        info = PASSES[name]
        options: dict[str, Any] = {}
        for kv in filter(None, (s.strip() for s in (opts or "").split(","))):
            key, _, value = kv.partition("=")
            if key not in info.options:
                raise PassError(f"pass '{name}' has no option '{key}' (options: {', '.join(info.options) or 'none'})")
            options[key] = _coerce(info.options[key], value)
        out.append((name, options))
    return out


@dataclass
class PassManager:
    passes: list[PassSpec]
    verify_each: bool = True
    print_ir_after_all: bool = False
    print_ir_after: frozenset[str] = frozenset()
    timing: bool = False
    weights: Any = None  # a WeightStore, for passes that fold weights; None skips them
    out: TextIO | None = None  # None: sys.stderr at the time of printing
    timings: list[tuple[str, float]] = field(default_factory=list)

    def run(self, module: ir.Module) -> ir.Module:
        self.out = self.out or sys.stderr
        for name, options in self.passes:
            info = PASSES[name]
            kwargs = info.options | options
            if info.needs_weights:
                if self.weights is None:
                    raise PassError(f"pass '{name}' needs the model's weights: run it from `llmirc compile`")
                kwargs["weights"] = self.weights
            t0 = time.perf_counter()
            with module.context, ir.Location.unknown():
                info.fn(module, **kwargs)
            self.timings.append((name, time.perf_counter() - t0))
            if self.verify_each:
                verify_module(module, context=f"after pass '{name}'")
            if self.print_ir_after_all or name in self.print_ir_after:
                print(f"// -----// IR Dump After {name} //----- //", file=self.out)
                print(print_module(module), file=self.out)
        if self.timing:
            self.report_timing()
        return module

    def report_timing(self) -> None:
        total = sum(t for _, t in self.timings) or 1e-12
        print("===- llmirc pass timing -===", file=self.out)
        for name, t in self.timings:
            print(f"  {t * 1e3:9.2f} ms  {100 * t / total:5.1f}%  {name}", file=self.out)
        print(f"  {total * 1e3:9.2f} ms  100.0%  total", file=self.out)
