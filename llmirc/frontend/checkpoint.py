"""Tensors of a Hugging Face checkpoint: model.safetensors or sharded with an index; and the
`WeightSource` protocol every checkpoint format is read through.

The importer (frontend/__init__.py) and the one decoder builder see a checkpoint only as a
WeightSource: tensor names in the Hugging Face naming with their shapes and dtypes, one tensor
loaded at a time as float, and optionally linears that the file already stores quantized
(GPTQ/AWQ here, GGUF's Q8_0/Q4_0 in gguf.py), handed over as the dialect's integers. So a new
format is one class, and the shape checks, family transforms and fused-tensor rules apply to
every format alike.

We read safetensors headers ourselves (8-byte length + JSON) and memory-map the
data instead of calling `safetensors.numpy`, because numpy has no bfloat16 and
most published Llama checkpoints are bf16; the header check also lets us name
a truncated file precisely. The format is tiny and fixed (see the safetensors
spec); `safetensors` itself is still what writes checkpoints in our tools.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import CheckpointError

if TYPE_CHECKING:
    from .prequantized import PrequantizedLayout, QuantizedLinear

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str  # the format's dtype name: safetensors "BF16", GGUF "Q8_0", ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def _read_header(path: Path) -> dict[str, TensorInfo]:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{path}: truncated or corrupt safetensors file "
                                      f"(header of {n} bytes, file of {size})")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        if 8 + n + end > size:
            raise CheckpointError(f"{path}: truncated safetensors file: tensor '{name}' ends at byte "
                                  f"{8 + n + end} but the file has {size} bytes")
        if meta["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {meta['dtype']}")
        out[name] = TensorInfo(name, path, meta["dtype"], tuple(meta["shape"]), 8 + n + begin, end - begin)
    return out


Unpacked = tuple[np.ndarray, np.ndarray, np.ndarray]  # values i8 [N, K], scales f32 [N, G], zeros i8 [N, G]


class WeightSource(Protocol):
    """What the importer reads a checkpoint through, whatever its format.

    `tensors` names every tensor (Hugging Face names: `model.layers.0.self_attn.q_proj.weight`)
    with its shape and dtype; `info` looks one up and checks its shape, raising a one-line
    CheckpointError that names the file; `load` reads one as float (or `dtype`), exactly.
    `quantized` lists the linears (by the float weight name they replace) that the file stores
    as integers, and `load_quantized` gives one of them as the dialect's group-quantized
    values/scales/zeros, so they are compiled without ever being dequantized.
    """

    where: Path  # the directory or file error lines name
    tensors: Mapping[str, TensorInfo]

    def info(self, name: str, expected_shape: tuple[int, ...] | None = None) -> TensorInfo: ...

    def load(self, name: str, dtype=np.float32) -> np.ndarray: ...

    @property
    def quantized(self) -> Mapping[str, QuantizedLinear]: ...

    def load_quantized(self, q: QuantizedLinear) -> Unpacked: ...

    def tokenizer_files(self) -> list[Path]: ...


class Checkpoint:
    """Index of the tensors of a checkpoint directory; loads them on demand as f32/int.
    A WeightSource; with a GPTQ/AWQ layout attached (`prequantized`, set by the importer
    from config.json's quantization_config) its quantized linears too."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.where = self.directory
        self.tensors: dict[str, TensorInfo] = {}
        self.prequantized: PrequantizedLayout | None = None
        index = self.directory / "model.safetensors.index.json"
        single = self.directory / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise CheckpointError(f"{index}: not a valid safetensors index (needs 'weight_map')") from None
            for shard in sorted(set(weight_map.values())):
                path = self.directory / shard
                if not path.is_file():
                    raise CheckpointError(f"{index}: names shard '{shard}', which does not exist")
                self.tensors.update(_read_header(path))
            missing = [t for t in weight_map if t not in self.tensors]
            if missing:
                raise CheckpointError(f"{index}: tensor '{missing[0]}' is not in shard '{weight_map[missing[0]]}'")
        elif single.is_file():
            self.tensors = _read_header(single)
        else:
            files = sorted(self.directory.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{self.directory}: no model.safetensors or "
                                      "model.safetensors.index.json (only safetensors weights are supported)")
            for path in files:
                self.tensors.update(_read_header(path))

    def info(self, name: str, expected_shape: tuple[int, ...] | None = None) -> TensorInfo:
        """Look up a tensor, checking its shape; errors name the tensor and file."""
        if name not in self.tensors:
            raise CheckpointError(f"{self.directory}: missing tensor '{name}'")
        t = self.tensors[name]
        if expected_shape is not None and tuple(t.shape) != tuple(expected_shape):
            raise CheckpointError(f"{t.file}: tensor '{name}' has shape {list(t.shape)}, "
                                  f"expected {list(expected_shape)} from config.json")
        return t

    def load(self, name: str, dtype=np.float32) -> np.ndarray:
        """The tensor as a numpy array of `dtype` (bf16 is widened exactly to f32)."""
        t = self.info(name)
        raw = np.memmap(t.file, dtype=_DTYPES[t.dtype], mode="r", offset=t.offset,
                        shape=t.shape) if t.nbytes else np.zeros(t.shape, _DTYPES[t.dtype])
        if t.dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return np.ascontiguousarray(raw, dtype=dtype)

    @property
    def quantized(self) -> Mapping[str, QuantizedLinear]:
        return self.prequantized.linears if self.prequantized else {}

    def load_quantized(self, q: QuantizedLinear) -> Unpacked:
        assert self.prequantized is not None, q.prefix
        return self.prequantized.unpack(self, q)

    def tokenizer_files(self) -> list[Path]:
        """The Hugging Face tokenizer files the directory has (copied into the artifact)."""
        return [p for p in (self.directory / n for n in TOKENIZER_FILES) if p.is_file()]
