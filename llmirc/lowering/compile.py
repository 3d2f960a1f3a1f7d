"""IREE input MLIR -> .vmfb bytes through iree.compiler, with compiler errors made readable.

Weights are not part of this: the IR references them as `#stream.parameter.named`
globals, and `llmirc.artifacts.params.write_params` writes the .irpa archive.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import LlmircError

# The host CPU (llvm-cpu). Target profiles (llmirc/targets) give the flags for other devices.
CPU_FLAGS = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
             "--iree-llvmcpu-target-cpu=host"]


class CompileError(LlmircError):
    """iree-compile rejected the lowered module."""


def compile_iree(mlir_text: str, flags: list[str], output: Path | None = None) -> bytes:
    """Compile IREE input MLIR with iree-compile `flags`; returns the vmfb (also written to `output`).

    Raises CompileError whose message starts with the compiler's first error line.
    """
    from iree.compiler import CompilerToolError, compile_str

    try:
        vmfb = compile_str(mlir_text, extra_args=list(flags))
    except CompilerToolError as e:
        raise CompileError(f"iree-compile failed: {first_error_line(str(e))}") from None
    if output is not None:
        _write_atomic(Path(output), vmfb)
    return vmfb


def first_error_line(text: str) -> str:
    """The first 'error:' line of compiler output (else its first non-empty line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln:
            return ln.removeprefix("<stdin>:").strip()
    return lines[0] if lines else "no diagnostic"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
