"""Value types of llm IR: builtin ranked tensors plus the two KV-cache types.

The llm dialect is not registered in C++, so its types live in MLIR as opaque
types (`!llm.kv_cache<...>`). Their parameters are written as attributes
(`2 : i64`) so that the IRDL description we export can parse them too. Python
code never looks at MLIR type objects directly: `from_mlir` turns them into the
small frozen records below, which the specs, verifier, passes and interpreter use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from iree.compiler import ir

DYNAMIC = None  # a dynamic dimension in TensorT.shape

FLOAT_DTYPES = ("f16", "bf16", "f32", "f64")
INT_DTYPES = ("i1", "i4", "i8", "i32", "i64")


@dataclass(frozen=True)
class TensorT:
    """A ranked tensor; `None` in `shape` is a dynamic dimension."""

    shape: tuple[int | None, ...]
    dtype: str

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        dims = "".join(("?" if d is None else str(d)) + "x" for d in self.shape)
        return f"tensor<{dims}{self.dtype}>"


@dataclass(frozen=True)
class KVCacheT:
    """Contiguous KV cache: per layer, K and V of shape [batch, max_seq_len, kv_heads, head_dim].

    This is the frontend's semantics; `blockify-kv-cache` turns it into PagedKVCacheT.
    """

    layers: int
    kv_heads: int
    head_dim: int
    max_seq_len: int
    dtype: str = "f32"

    def __str__(self) -> str:
        return (f"!llm.kv_cache<{self.layers} : i64, {self.kv_heads} : i64, "
                f"{self.head_dim} : i64, {self.max_seq_len} : i64, {self.dtype}>")


@dataclass(frozen=True)
class PagedKVCacheT:
    """Paged KV cache: one page pool [num_pages, layers, 2, block_size, kv_heads, head_dim].

    Sequences address pages through i64 block tables [batch, pages_per_seq];
    page 0 is a scratch page that never holds live data (see docs/abi.md).
    """

    layers: int
    kv_heads: int
    head_dim: int
    block_size: int
    dtype: str = "f32"

    def __str__(self) -> str:
        return (f"!llm.paged_kv_cache<{self.layers} : i64, {self.kv_heads} : i64, "
                f"{self.head_dim} : i64, {self.block_size} : i64, {self.dtype}>")

    def pool_shape(self, num_pages: int) -> tuple[int, ...]:
        return (num_pages, self.layers, 2, self.block_size, self.kv_heads, self.head_dim)


LlmType = Union[TensorT, KVCacheT, PagedKVCacheT]

_TENSOR_RE = re.compile(r"^tensor<((?:(?:\?|\d+)x)*)(\w+)>$")
_CACHE_RE = re.compile(r"^!llm\.(kv_cache|paged_kv_cache)<(.*)>$")


def parse_type(text: str) -> LlmType:
    """Parse the textual form of a tensor or cache type (as MLIR prints it)."""
    text = text.strip()
    m = _TENSOR_RE.match(text)
    if m:
        dims = tuple(None if d == "?" else int(d) for d in m.group(1).split("x")[:-1])
        return TensorT(dims, m.group(2))
    m = _CACHE_RE.match(text)
    if m:
        parts = [p.strip() for p in m.group(2).split(",")]
        if len(parts) != 5:
            raise ValueError(f"{text}: expected 4 integer parameters and a dtype")
        ints = [int(p.split(":")[0]) for p in parts[:4]]
        cls = KVCacheT if m.group(1) == "kv_cache" else PagedKVCacheT
        return cls(*ints, parts[4])
    raise ValueError(f"not an llm IR value type: {text}")


def from_mlir(t: ir.Type) -> LlmType:
    return parse_type(str(t))


def to_mlir(t: LlmType) -> ir.Type:
    """Needs an active ir.Context."""
    return ir.Type.parse(str(t))


def is_float(t: LlmType) -> bool:
    return isinstance(t, TensorT) and t.dtype in FLOAT_DTYPES


def is_int(t: LlmType) -> bool:
    return isinstance(t, TensorT) and t.dtype in INT_DTYPES


def numpy_dtype(dtype: str):
    import numpy as np

    table = {"f16": np.float16, "f32": np.float32, "f64": np.float64, "i1": np.bool_,
             "i4": np.int8, "i8": np.int8, "i32": np.int32, "i64": np.int64}
    if dtype == "bf16":
        return np.float32  # numpy has no bf16; the interpreter computes bf16 tensors in f32
    return table[dtype]
