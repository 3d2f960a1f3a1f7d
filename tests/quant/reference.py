"""Numpy fake-quantization, written from docs/quantization.md and independent of the interpreter.

Group-wise along the in-features (groups of g consecutive columns of a [out, in] weight):
  symmetric:  scale = max|w| / qmax,  q = clip(round(w / scale), qmin, qmax),  w' = q * scale
  asymmetric: scale = (max(max w, 0) - min(min w, 0)) / (qmax - qmin),
              zero = round(qmin - min(min w, 0) / scale),
              q = clip(round(w / scale) + zero, qmin, qmax),  w' = (q - zero) * scale
  int8: qmin, qmax = -128, 127; int4: -8, 7 symmetric and 0, 15 asymmetric. A zero scale is 1.
Everything in f32, rounding half to even.
"""

from __future__ import annotations

import numpy as np


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if bits == 8:
        return -128, 127
    return (-8, 7) if symmetric else (0, 15)


def quantize(w: np.ndarray, bits: int, group: int, symmetric: bool):
    """(q int64 [N, K], scale f32 [N, G], zero int64 [N, G])."""
    qmin, qmax = qrange(bits, symmetric)
    n, k = w.shape
    wg = w.astype(np.float32).reshape(n, k // group, group)
    if symmetric:
        scale = (np.max(np.abs(wg), axis=-1) / np.float32(qmax)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1), scale)
        zero = np.zeros(scale.shape, np.int64)
    else:
        lo = np.minimum(wg.min(axis=-1), np.float32(0))
        hi = np.maximum(wg.max(axis=-1), np.float32(0))
        scale = ((hi - lo) / np.float32(qmax - qmin)).astype(np.float32)
        safe = np.where(scale == 0, np.float32(1), scale)
        zero = np.round(np.float32(qmin) - lo / safe).astype(np.int64)
        scale = safe
    q = np.clip(np.round(wg / scale[..., None]) + zero[..., None], qmin, qmax).astype(np.int64)
    return q.reshape(n, k), scale, zero


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    n, k = q.shape
    g = k // scale.shape[1]
    qg = q.reshape(n, -1, g).astype(np.float32) - zero[..., None].astype(np.float32)
    return (qg * scale[..., None]).reshape(n, k).astype(np.float32)


def fake_quant(w: np.ndarray, bits: int, group: int, symmetric: bool) -> np.ndarray:
    return dequantize(*quantize(w, bits, group, symmetric))
