"""IREE parameter archives (.irpa): the weights of an artifact, outside the vmfb.

Measured with IREE 3.13 on the 2-core dev machine (1 GiB of f32 weights in 8 arrays):

* Writing: `ParameterIndex.add_buffer` keeps a reference to the caller's buffer (no copy)
  and `create_archive_file` streams those buffers into the file. Peak RSS stayed at the
  size of the arrays themselves (1055 MB before and after writing): 1x the weights, not 3x.
  Do not pass `array.tobytes()` (that is a second copy); pass the array (a uint8 view).
  If the caller's arrays are memory-mapped (e.g. from safetensors), the writer does not
  make them resident either.
* Loading: `ParameterIndex.load(path)` memory-maps the archive by default (`mmap=True`):
  it took 3 ms for 1 GiB and added no anonymous memory. On the local-task (CPU) driver the
  parameters are imported from the mapping, not copied: after running a function that reads
  one 128 MiB parameter, RSS grew by 130 MB of *file-backed* pages and anonymous memory did
  not grow. With `mmap=False` the load read the whole 1 GiB into anonymous memory (1.1 s)
  and the context then copied the used parameter again. So we always load with mmap=True.
  (GPU drivers must still upload weights to device memory; the mapping is the source.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from llmirc.errors import ArtifactError

SCOPE = "model"


def pack_int4(values: np.ndarray) -> np.ndarray:
    """int4 values (held in any integer array, -8..15) -> uint8 bytes, two per byte.

    IREE's layout of a `tensor<...xi4>` in memory (checked on llvm-cpu, IREE 3.13): elements in
    row-major order, element 2j in the low nibble of byte j and element 2j+1 in the high one.
    """
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.size % 2:
        raise ValueError(f"int4 tensor of {flat.size} elements: packing needs an even count")
    nib = flat.astype(np.uint8) & np.uint8(0xF)
    return nib[0::2] | (nib[1::2] << np.uint8(4))


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...], signed: bool) -> np.ndarray:
    """Inverse of pack_int4: int8 values, -8..7 when `signed`, else 0..15."""
    p = np.ascontiguousarray(packed).reshape(-1).view(np.uint8)
    out = np.empty(p.size * 2, np.int8)
    out[0::2], out[1::2] = p & 0xF, p >> 4
    if signed:
        out = np.where(out >= 8, out - 16, out).astype(np.int8)
    return out.reshape(shape)


def encode_param(array: np.ndarray, dtype: str, transposed: bool = False, layout: str | None = None) -> np.ndarray:
    """A weight as the archive stores it for an IR element type: i4 packed two per byte,
    bf16 as its 16-bit patterns (rounded to nearest even), others as that numpy dtype;
    `transposed` (a 2-D weight of a quantized matmul, see lowering/quantized.py) stores it [in, out];
    `layout` (w8a8 / w4a8 / weight-only weights on a VNNI CPU: a kind of lowering/quantized.py's
    STORED_LAYOUTS) in that kernel's order."""
    if layout:
        from llmirc.lowering.quantized import pack_stored

        array, dtype = pack_stored(array, dtype, layout)
    elif transposed:
        array = np.ascontiguousarray(np.asarray(array).T)
    if dtype == "i4":
        return pack_int4(array)
    if dtype == "bf16":
        from llmirc.dialect.interpreter import round_float

        return (round_float(np.asarray(array, np.float32), "bf16").view(np.uint32) >> 16).astype(np.uint16)
    numpy_types = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i8": np.int8, "i32": np.int32,
                   "i64": np.int64}
    return np.asarray(array, numpy_types[dtype]) if dtype in numpy_types else array


def write_params(path: str | Path, params: Mapping[str, np.ndarray]) -> None:
    """Write `params` (checkpoint tensor name -> array) as an IREE parameter archive.

    Arrays are added by reference and streamed into the file by IREE, so peak memory is the
    arrays themselves. Each entry carries IREE's tensor metadata (dtype and shape) where
    IREE knows the dtype; bf16 (ml_dtypes) has none and is stored as raw bytes.
    """
    import iree.runtime as rt
    from iree.runtime.io import parameter_index_add_numpy_ndarray

    index = rt.ParameterIndex()
    keep_alive = []  # contiguous copies of non-contiguous inputs must outlive the write
    for name, array in params.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(f"parameter {name!r} is a {type(array).__name__}, expected a numpy array")
        contiguous = np.ascontiguousarray(array)
        keep_alive.append(contiguous)
        try:
            parameter_index_add_numpy_ndarray(index, name, contiguous)
        except (KeyError, ValueError):  # dtype without IREE metadata (bf16, fp8)
            index.add_buffer(name, contiguous.reshape(-1).view(np.uint8))
    index.create_archive_file(str(path))


def load_params(path: str | Path) -> "iree.runtime.ParameterIndex":  # noqa: F821
    """Memory-map an archive (see the module docstring for what that costs)."""
    import iree.runtime as rt

    index = rt.ParameterIndex()
    try:
        index.load(str(path), mmap=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise ArtifactError(f"{path} is not a readable IREE parameter archive ({_first_line(e)}); "
                            "re-run `llmirc compile` to rebuild the artifact") from None
    return index


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """Read an archive back into arrays (views of the mapping); for tests and inspection."""
    from iree.runtime.io import parameter_index_entry_as_numpy_flat_ndarray, parameter_index_entry_as_numpy_ndarray

    out: dict[str, np.ndarray] = {}
    for key, entry in load_params(path).items():
        try:
            out[key] = parameter_index_entry_as_numpy_ndarray(entry)
        except ValueError:  # raw bytes (no metadata)
            out[key] = parameter_index_entry_as_numpy_flat_ndarray(entry)
    return out


def _first_line(e: BaseException, limit: int = 240) -> str:
    """IREE's first error line, cut to `limit` characters (it can embed a whole target attribute)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
