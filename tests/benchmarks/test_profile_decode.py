"""benchmarks/profile_decode.py's weight_bytes: the bytes a dispatch streams, read from its name
(IREE's matmul / matvec names and lowering/gemv.py's kernel names). Fast: nothing is compiled."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import profile_decode  # noqa: E402


@pytest.mark.parametrize("name,expected", [
    ("decode_b1_dispatch_399_matmul_1x32000x2048_f32", 32000 * 2048 * 4),
    ("decode_dispatch_7_matmul_like_Dx2048x768_f16", 2048 * 768 * 2),
    ("decode_b1_dispatch_398_matvec_like_32000x2048_f32xi8xf32", 32000 * 2048),
    ("gemv_i4_1x2048x11264_g128", 2048 * 11264 // 2 + 16 * 11264 * 4),  # int4 values + f32 scales
    ("gemv_i8_Dx5632x2048_g32", 5632 * 2048 + 176 * 2048 * 4),  # int8, any row count
    ("decode_b1_dispatch_9_gather_4xDx16x64xf32_collapse_shape", None),
])
def test_weight_bytes_from_dispatch_names(name, expected):
    assert profile_decode.weight_bytes(name) == expected
