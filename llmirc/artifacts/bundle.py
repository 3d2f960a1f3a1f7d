"""Write an artifact directory atomically: vmfb + irpa + tokenizer files + manifest.json.

Everything is written into a temporary sibling of the output directory, checksummed into
the manifest (written last), and only then renamed into place. A failed or interrupted
compile therefore never leaves a half-written artifact, and an existing artifact is
replaced only after the new one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llmirc.errors import ArtifactError

from .manifest import (
    MANIFEST_NAME,
    PARAMS_NAME,
    VMFB_NAME,
    KVInfo,
    Manifest,
    ModelInfo,
    TargetInfo,
    _record_from_dict,
    sha256_file,
)
from .params import write_params


def write_bundle(
    out_dir: str | Path,
    vmfb: bytes | str | Path,
    params: Mapping[str, np.ndarray],
    *,
    model: ModelInfo | Mapping[str, Any],
    target: TargetInfo | Mapping[str, Any],
    kv: KVInfo | Mapping[str, Any],
    opt_level: int,
    entry_points: Mapping[str, Any] | None = None,
    compiler: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    tokenizer_files: Iterable[str | Path] = (),
    extra_files: Mapping[str, bytes] | None = None,
) -> Manifest:
    """Write the artifact to `out_dir` and return its manifest.

    `vmfb` is the compiled module (bytes or a file path). `model`, `target` and `kv` are
    the manifest sections (records or plain dicts with the keys of docs/abi.md);
    `entry_points` defaults to the ABI v1 signatures and `compiler` to the running versions.
    `tokenizer_files` are copied under their own names (missing ones are skipped, so callers
    can pass the usual candidates). Raises ArtifactError when `out_dir` exists and is not an
    artifact (we never delete a directory we did not write).
    """
    out = Path(out_dir)
    check_replaceable(out)
    manifest = Manifest(model=_as_record(ModelInfo, model, "model"), target=_as_record(TargetInfo, target, "target"),
                        opt_level=opt_level, kv=_as_record(KVInfo, kv, "kv"),
                        compiler=dict(compiler) if compiler is not None else default_compiler_info(),
                        source=dict(source or {}))
    if entry_points is not None:
        manifest.entry_points = dict(entry_points)
    Manifest.from_dict(manifest.to_dict(), f"manifest for {out}")  # same checks as the reader, before any I/O
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise ArtifactError(f"cannot write the artifact {out}: {e.strerror or e}") from None
    try:
        _write_module(tmp / VMFB_NAME, vmfb)
        write_params(tmp / PARAMS_NAME, params)
        for name, data in (extra_files or {}).items():  # pipeline stages after the first (stage{i}.vmfb)
            _write_module(tmp / name, data)
        for src in map(Path, tokenizer_files):
            if src.is_file():
                shutil.copyfile(src, tmp / src.name)
        # IREE creates the archive 0640; give it the mode every other file got (the umask's).
        os.chmod(tmp / PARAMS_NAME, (tmp / VMFB_NAME).stat().st_mode & 0o777)
        manifest.files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; an artifact is an ordinary directory
        _replace_dir(tmp, out)
    except OSError as e:  # disk full, permissions changed under us: one line, nothing left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"cannot write the artifact {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def default_compiler_info() -> dict[str, str]:
    """Versions that produced the artifact, for bug reports and cache keys."""
    from importlib.metadata import PackageNotFoundError, version

    info = {}
    for key, dist in (("llmirc", "llmirc"), ("iree", "iree-base-compiler")):
        try:
            info[key] = version(dist)
        except PackageNotFoundError:
            info[key] = "unknown"
    return info


def _as_record(cls: type, value: Any, section: str) -> Any:
    if isinstance(value, cls):
        return value
    return _record_from_dict(cls, dict(value), section, "manifest")


def _write_module(dest: Path, vmfb: bytes | str | Path) -> None:
    if isinstance(vmfb, (bytes, bytearray, memoryview)):
        dest.write_bytes(vmfb)
    else:
        shutil.copyfile(vmfb, dest)


def check_replaceable(out: Path) -> None:
    """Only an empty directory or a previous artifact may be replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another output path")
    if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ArtifactError(f"{out} exists and is not an llmirc artifact (no {MANIFEST_NAME}); "
                            "choose another output path or remove it")


def _replace_dir(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an old `out` is moved aside first and removed after success."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
