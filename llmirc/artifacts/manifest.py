"""manifest.json: what an artifact holds and how the runtime must drive it (docs/abi.md).

The manifest is the one place where the compiler tells the runtime the model shape, the
target device and the paged-KV layout. `read_manifest` refuses anything the runtime cannot
trust (missing keys, unknown versions, files that are absent or changed since compile),
each with a one-line `ArtifactError` that names the file and says what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmirc.errors import ArtifactError

FORMAT_VERSION = 1
ABI_VERSION = 2
READABLE_ABI_VERSIONS = (1, 2)  # v1 artifacts (no extend) still run `llmirc run`; serving needs v2
MANIFEST_NAME = "manifest.json"
VMFB_NAME = "model.vmfb"
PARAMS_NAME = "model.irpa"
REQUIRED_FILES = (VMFB_NAME, PARAMS_NAME)

KV_LAYOUT = ("page", "layer", "kv", "slot", "kv_head", "head_dim")
SCRATCH_PAGE = 0

DEFAULT_ENTRY_POINTS: dict[str, Any] = {
    "prefill": {"args": ["tokens:i64[B,T]", "seq_lens:i64[B]", "block_tables:i64[B,P]", "pool"],
                "results": ["logits:f32[B,V]", "pool"]},
    "extend": {"args": ["tokens:i64[B,T]", "start_pos:i64[B]", "new_lens:i64[B]", "block_tables:i64[B,P]",
                        "pool"], "results": ["logits:f32[B,V]", "pool"]},
    "extend_all": {"args": ["tokens:i64[B,T]", "start_pos:i64[B]", "new_lens:i64[B]", "block_tables:i64[B,P]",
                            "pool"], "results": ["logits:f32[B,T,V]", "pool"]},
    "decode": {"args": ["tokens:i64[B]", "positions:i64[B]", "block_tables:i64[B,P]", "pool"],
               "results": ["logits:f32[B,V]", "pool"]},
}
REQUIRED_ENTRY_POINTS = {1: ("prefill", "decode"), 2: ("prefill", "extend", "decode")}

_RECOMPILE = "re-run `llmirc compile` to rebuild the artifact"


@dataclass
class ModelInfo:
    """Model shape the runtime needs: vocabulary, KV geometry, length limit, special tokens."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_seq_len: int
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TargetInfo:
    """Which device the vmfb was compiled for; `driver` is the IREE runtime driver to open."""

    name: str
    device: str
    driver: str
    variant: str | None = None
    flags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class KVInfo:
    """Paged-KV pool geometry: pool[num_pages, layers, 2, page_size, kv_heads, head_dim]."""

    page_size: int
    dtype: str
    layout: list[str] = field(default_factory=lambda: list(KV_LAYOUT))
    scratch_page: int = SCRATCH_PAGE
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """Mirror of manifest.json (docs/abi.md). `files` maps file name -> sha256 hex."""

    model: ModelInfo
    target: TargetInfo
    opt_level: int
    kv: KVInfo
    entry_points: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_ENTRY_POINTS)))
    files: dict[str, str] = field(default_factory=dict)
    compiler: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    abi_version: int = ABI_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict in the key order of docs/abi.md; `extra` keys are flattened back."""
        return {
            "format_version": self.format_version,
            "abi_version": self.abi_version,
            "model": _record_to_dict(self.model),
            "target": _record_to_dict(self.target),
            "opt_level": self.opt_level,
            "kv": _record_to_dict(self.kv),
            "entry_points": self.entry_points,
            "files": dict(self.files),
            "compiler": self.compiler,
            "source": self.source,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
        """Build from parsed JSON. Raises ArtifactError naming `where` and the first problem."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} does not hold a JSON object; {_RECOMPILE}")
        _check_version(data, "format_version", FORMAT_VERSION, where)
        _check_version(data, "abi_version", READABLE_ABI_VERSIONS, where)
        manifest = cls(
            model=_record_from_dict(ModelInfo, _section(data, "model", where), "model", where),
            target=_record_from_dict(TargetInfo, _section(data, "target", where), "target", where),
            opt_level=_require(data, "opt_level", "", where),
            kv=_record_from_dict(KVInfo, _section(data, "kv", where), "kv", where),
            entry_points=_section(data, "entry_points", where),
            files=_section(data, "files", where),
            compiler=_section(data, "compiler", where),
            source=_section(data, "source", where),
            format_version=data["format_version"],
            abi_version=data["abi_version"],
        )
        eos = manifest.model.eos_token_id
        manifest.model.eos_token_id = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        _check_abi_details(manifest, where)
        return manifest

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_NAME) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{where} is not valid JSON (line {e.lineno}: {e.msg}); {_RECOMPILE}") from None
        return cls.from_dict(data, where)


def sha256_file(path: str | Path) -> str:
    """Streaming sha256 of a file (constant memory, so multi-GB weights are fine)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest(artifact_dir: str | Path, verify_checksums: bool = True) -> Manifest:
    """Read and validate `<artifact_dir>/manifest.json` and the files it lists.

    `verify_checksums=False` skips hashing (it reads every byte of the weights, about 1 s per
    GB here); presence of every listed file is still checked. Raises the first problem.
    """
    manifest = load_manifest(artifact_dir)
    problems = file_problems(Path(artifact_dir), manifest, verify_checksums)
    if problems:
        raise ArtifactError(problems[0])
    return manifest


def load_manifest(artifact_dir: str | Path) -> Manifest:
    """manifest.json of `artifact_dir`, validated, without looking at the files it lists."""
    root = Path(artifact_dir)
    if root.exists() and not root.is_dir():
        raise ArtifactError(f"{root} is a file, not an artifact directory; pass the directory `llmirc compile` "
                            "wrote (or its model.vmfb)")
    if not root.is_dir():
        raise ArtifactError(f"artifact directory {root} does not exist; pass the directory `llmirc compile` wrote")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{path} not found: {root} is not an llmirc artifact; {_RECOMPILE}")
    return Manifest.from_json(path.read_text(encoding="utf-8", errors="replace"), str(path))


def file_problems(root: Path, manifest: Manifest, verify_checksums: bool = True) -> list[str]:
    """Every way the files differ from what the manifest lists (one line each; empty: intact).
    All of them, not the first: `llmirc inspect` describes a damaged artifact."""
    path = root / MANIFEST_NAME
    problems = [f"{path} does not list {name}; {_RECOMPILE}" for name in REQUIRED_FILES
                if name not in manifest.files]
    for name, digest in manifest.files.items():
        file = root / name
        if Path(name).name != name:
            problems.append(f"{path} lists {name!r}, which is not a plain file name; {_RECOMPILE}")
        elif not file.is_file():
            problems.append(f"{file} is listed in {MANIFEST_NAME} but missing; {_RECOMPILE}")
        elif verify_checksums and sha256_file(file) != digest:
            problems.append(f"{file} does not match its sha256 in {MANIFEST_NAME} (modified or corrupt); "
                            f"{_RECOMPILE}")
    return problems


def _check_version(data: dict[str, Any], key: str, known: int | tuple[int, ...], where: str) -> None:
    known = known if isinstance(known, tuple) else (known,)
    if key not in data:
        raise ArtifactError(f"{where} is missing '{key}'; {_RECOMPILE}")
    if data[key] not in known:
        raise ArtifactError(f"{where} has {key} {data[key]!r} but this llmirc only reads {key} "
                            f"{' or '.join(map(str, known))}; use the llmirc version that wrote it or {_RECOMPILE}")


def _check_abi_details(manifest: Manifest, where: str) -> None:
    """ABI v1 and v2 fix the pool layout and the scratch page; anything else is another ABI."""
    if list(manifest.kv.layout) != list(KV_LAYOUT):
        raise ArtifactError(f"{where} has kv.layout {manifest.kv.layout} but ABI 1 and 2 need {list(KV_LAYOUT)}; "
                            f"{_RECOMPILE}")
    if manifest.kv.scratch_page != SCRATCH_PAGE:
        raise ArtifactError(f"{where} has kv.scratch_page {manifest.kv.scratch_page} but ABI 1 and 2 need 0; "
                            f"{_RECOMPILE}")
    sizes = {f"model.{n}": getattr(manifest.model, n)
             for n in ("vocab_size", "num_layers", "num_kv_heads", "head_dim", "max_seq_len")}
    sizes["kv.page_size"] = manifest.kv.page_size
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ArtifactError(f"{where} has {name} {value!r}, expected a positive integer; {_RECOMPILE}")
    for name in REQUIRED_ENTRY_POINTS[manifest.abi_version]:
        if name not in manifest.entry_points:
            raise ArtifactError(f"{where} is missing 'entry_points.{name}'; {_RECOMPILE}")


def _require(data: dict[str, Any], key: str, prefix: str, where: str) -> Any:
    if key not in data:
        raise ArtifactError(f"{where} is missing '{prefix}{key}'; {_RECOMPILE}")
    return data[key]


def _section(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = _require(data, key, "", where)
    if not isinstance(value, dict):
        raise ArtifactError(f"{where}: '{key}' must be a JSON object; {_RECOMPILE}")
    return value


def _record_from_dict(cls: type, data: dict[str, Any], prefix: str, where: str) -> Any:
    """Fill a record dataclass: required fields must be present, unknown keys go to `extra`."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for name in required:
        _require(data, name, prefix + ".", where)
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return cls(**known, extra=extra)


def _record_to_dict(record: Any) -> dict[str, Any]:
    out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "extra"}
    out.update(record.extra)
    return out
