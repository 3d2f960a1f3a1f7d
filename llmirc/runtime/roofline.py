"""What this machine can do at best: streaming-read bandwidth and sgemm throughput.

Decode reads every weight once per step, so bandwidth / weight bytes bounds batch-1
decode tokens/s; prefill is compute-bound, so sgemm FLOP/s / (2 * parameters) bounds
prefill tokens/s. Both are measured, not taken from a datasheet, in the same process as
the benchmark they bound.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Roofline:
    read_sum_bps: float   # numpy sums, one thread per slice
    read_gemv_bps: float  # BLAS matrix-vector product (the decode access pattern)
    sgemm_flops: float

    @property
    def read_bps(self) -> float:
        """The faster of the two reads: the best this machine showed it can stream."""
        return max(self.read_sum_bps, self.read_gemv_bps)

    def decode_tokens_per_s(self, weight_bytes: int, batch: int = 1, params: int | None = None) -> float:
        bound = batch * self.read_bps / weight_bytes
        return min(bound, self.prefill_tokens_per_s(params)) if params else bound

    def prefill_tokens_per_s(self, params: int) -> float:
        return self.sgemm_flops / (2 * params)

    def describe(self) -> str:
        return (f"streaming read {self.read_bps / 1e9:.1f} GB/s (numpy sum {self.read_sum_bps / 1e9:.1f}, "
                f"gemv {self.read_gemv_bps / 1e9:.1f}), sgemm {self.sgemm_flops / 1e9:.0f} GFLOP/s")


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(threads: int, nbytes: int = 1 << 30, gemm_n: int = 2048, reps: int = 5) -> Roofline:
    """Best of `reps` over a buffer far larger than the caches (default 1 GiB f32)."""
    a = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(a, threads)
    matrix, v = a.reshape(-1, 4096), np.ones(4096, np.float32)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        t_sum = _best(lambda: list(pool.map(np.add.reduce, parts)), reps)
    t_gemv = _best(lambda: matrix @ v, reps)
    x, y = np.random.rand(gemm_n, gemm_n).astype(np.float32), np.random.rand(gemm_n, gemm_n).astype(np.float32)
    x @ y
    t_gemm = _best(lambda: x @ y, reps)
    return Roofline(a.nbytes / t_sum, a.nbytes / t_gemv, 2 * gemm_n**3 / t_gemm)
