"""The GGUF container, read with a bounds check at every step: a GGUF file is untrusted input.

Layout (little-endian, versions 2 and 3, as llama.cpp's gguf-py writes it):

    magic "GGUF", version u32, tensor count u64, metadata count u64
    metadata: key (u64 length + UTF-8), value type u32, value (arrays: item type u32, count u64, items)
    tensor infos: name, n_dims u32, dims u64[n_dims] (innermost first), GGML type u32, offset u64
    padding to `general.alignment` (default 32), then the tensor data; offsets are relative to it

The `gguf` package's GGUFReader parses the same layout, but it fails on a damaged file with
whatever numpy raises (an IndexError, a reshape error) and reads every tensor type eagerly.
Here each failure is one CheckpointError that names the file, the byte or tensor, and what to
do; the numbers (type ids, block sizes) come from the `gguf` package's constants, so a new
GGML type is known as soon as that package knows it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
REDOWNLOAD = "the file is truncated or damaged: download or convert it again"

# GGUF metadata value types -> (struct format, numpy dtype) for the fixed-size ones
_SCALARS: dict[int, tuple[str, str]] = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"),
                                         4: ("<I", "<u4"), 5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "<u1"),
                                         10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8")}
_STRING, _ARRAY, _BOOL = 8, 9, 7


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's record: numpy-order shape (outermost first), GGML type and where its bytes are."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    type_name: str   # "F32", "Q8_0", ...
    offset: int      # absolute byte offset in the file
    nbytes: int
    block_size: int  # elements per block along the innermost dim (1 for float types)
    type_size: int   # bytes per block


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    size: int

    def raw(self, t: GGUFTensor) -> np.ndarray:
        """The tensor's bytes, memory-mapped (nothing is read until used)."""
        if t.nbytes == 0:
            return np.zeros(0, np.uint8)
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.nbytes,))


class _Cursor:
    """Reads little-endian values from the mapped file, refusing to read past its end."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CheckpointError(f"{self.path}: truncated GGUF file: {what} at byte {self.pos} needs {n} bytes, "
                                  f"but the file has {self.size}; {REDOWNLOAD}")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: {what} at byte {self.pos - n} is not UTF-8; {REDOWNLOAD}") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            v = self.scalar(_SCALARS[vtype][0], what)
            return bool(v) if vtype == _BOOL else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth == 0:
            itype, count = self.scalar("<I", what), self.scalar("<Q", what)
            if itype in _SCALARS:  # numeric arrays (token scores and types): one read
                dtype = np.dtype(_SCALARS[itype][1])
                self.need(count * dtype.itemsize, what)
                arr = np.frombuffer(self.buf, dtype, count, self.pos).copy()
                self.pos += count * dtype.itemsize
                return arr.astype(bool) if itype == _BOOL else arr
            if itype == _STRING:
                self.need(count * 8, what)  # every string has at least its length: no runaway count
                return [self.string(what) for _ in range(count)]
            raise CheckpointError(f"{self.path}: {what} is an array of GGUF value type {itype}, which llmirc "
                                  f"does not read (numbers and strings only); {REDOWNLOAD}")
        raise CheckpointError(f"{self.path}: {what} has unknown GGUF value type {vtype}; {REDOWNLOAD}")


def _ggml_types() -> tuple[dict[int, str], dict[int, tuple[int, int]]]:
    """GGML type id -> name and (block size, bytes per block), from the installed gguf package."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    names = {int(t): t.name for t in GGMLQuantizationType}
    sizes = {int(t): GGML_QUANT_SIZES[t] for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}
    return names, sizes


def read_gguf(path: Path) -> GGUFFile:
    """Parse the header and tensor table; check that every tensor's bytes lie inside the file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            if size < 24:
                raise CheckpointError(f"{path}: truncated GGUF file ({size} bytes, less than its 24-byte "
                                      f"header); {REDOWNLOAD}")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return _parse(buf, path, size)
    finally:
        buf.close()


def _parse(buf, path: Path, size: int) -> GGUFFile:
    c = _Cursor(buf, path)
    if bytes(buf[:4]) != MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
    c.pos = 4
    version = c.scalar("<I", "the version")
    if version not in VERSIONS:
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise CheckpointError(f"{path}: GGUF version {version}{hint} is not supported (supported: 2, 3); "
                              "re-convert it with a current llama.cpp")
    n_tensors, n_kv = c.scalar("<Q", "the tensor count"), c.scalar("<Q", "the metadata count")
    c.need(min(n_kv, size) * 12, f"{n_kv} metadata entries")  # key length + value type, at least
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = c.string(f"metadata key {i}")
        vtype = c.scalar("<I", f"the type of metadata '{key}'")
        metadata[key] = c.value(vtype, f"metadata '{key}'")
    c.need(min(n_tensors, size) * 24, f"{n_tensors} tensor records")  # name length, n_dims, type, offset
    names, sizes = _ggml_types()
    records = []
    for i in range(n_tensors):
        name = c.string(f"the name of tensor {i}")
        n_dims = c.scalar("<I", f"tensor '{name}'")
        if n_dims > 8:
            raise CheckpointError(f"{path}: tensor '{name}' has {n_dims} dimensions (GGML has at most 4); "
                                  f"{REDOWNLOAD}")
        dims = [c.scalar("<Q", f"tensor '{name}'") for _ in range(n_dims)]
        type_id = c.scalar("<I", f"tensor '{name}'")
        offset = c.scalar("<Q", f"tensor '{name}'")
        if type_id not in names or type_id not in sizes:
            raise CheckpointError(f"{path}: tensor '{name}' has unknown GGML type {type_id} (the installed gguf "
                                  "package knows " + ", ".join(names[t] for t in sorted(sizes)) + "); upgrade "
                                  "gguf (`pip install -U gguf`) or re-quantize the model to a known type")
        records.append((name, tuple(reversed(dims)), type_id, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"{path}: general.alignment {alignment!r} must be a power of two; {REDOWNLOAD}")
    data_start = -(-c.pos // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, shape, type_id, offset in records:
        block, type_size = sizes[type_id]
        inner = shape[-1] if shape else 1
        if inner % block:
            raise CheckpointError(f"{path}: tensor '{name}' ({names[type_id]}) has rows of {inner} values, not a "
                                  f"multiple of its block of {block}; {REDOWNLOAD}")
        nbytes = int(np.prod(shape, dtype=np.int64)) // block * type_size if shape else type_size
        start = data_start + offset
        if offset % alignment:
            raise CheckpointError(f"{path}: tensor '{name}' starts at data offset {offset}, not a multiple of the "
                                  f"alignment {alignment}; {REDOWNLOAD}")
        if start + nbytes > size:
            raise CheckpointError(f"{path}: tensor '{name}' ({names[type_id]}, {nbytes} bytes at byte {start}) ends "
                                  f"at byte {start + nbytes}, past the end of the file ({size} bytes); {REDOWNLOAD}")
        if name in tensors:
            raise CheckpointError(f"{path}: tensor '{name}' is listed twice; {REDOWNLOAD}")
        tensors[name] = GGUFTensor(name, shape, type_id, names[type_id], start, nbytes, block, type_size)
    return GGUFFile(path, version, metadata, tensors, size)
