"""The optimization pipelines, in order. Reading this file tells you the compiler.

Each level adds a phase to the one below it; each entry is (pass name, options).
Target-dependent choices (attention lowering, iree-compile flags at -O3) live in
the target profile and are applied by the lowering, not here.
"""

from __future__ import annotations

from .pass_manager import PassSpec
from .quantize_weights import QuantConfig

LEVELS = (0, 1, 2, 3)


def precision_passes(quantize: QuantConfig | None = None, dtype: str = "f32") -> list[PassSpec]:
    """Phase 4 of every level: int8/int4 linears (--quantize), f16/bf16 matrices (--dtype)."""
    passes: list[PassSpec] = []
    if quantize is not None:
        passes += quantize.pass_specs()
    if dtype != "f32":
        passes.append(("convert-weights", {"dtype": dtype}))
    return passes + [("dce", {})] if passes else []


def pipeline_for_level(level: int, block_size: int = 16, quantize: QuantConfig | None = None,
                       dtype: str = "f32", tp: int = 1) -> list[PassSpec]:
    if level not in LEVELS:
        raise ValueError(f"optimization level must be 0..3, got {level}")
    # Phase 1. What the runtime ABI requires: one page pool, block tables (PagedAttention).
    passes: list[PassSpec] = [("blockify-kv-cache", {"block_size": block_size})]
    if level >= 1:
        # Phase 2. Generic cleanups on the llm graph.
        passes += [("canonicalize", {}), ("cse", {}), ("dce", {})]
    if level >= 2:
        # Phase 3. LLM fusions: fewer, bigger matmuls; epilogues; fused residual + norm.
        passes += [("fuse-qkv", {}), ("fuse-gate-up", {}), ("fold-weights", {}),
                   ("fuse-matmul-activation", {}), ("fuse-residual-norm", {}), ("cse", {}), ("dce", {})]
    # Phase 4. Weight precision, when asked for: after fold-weights, so fused q/k/v and gate/up
    # weights are quantized whole; embeddings and lm_head stay float unless `keep` says otherwise.
    passes += precision_passes(quantize, dtype)
    if tp > 1:
        # Phase 4b. Tensor parallelism: last, so it splits the fused weights whole, part by part
        # (docs/parallel.md); tp=1 adds nothing.
        passes.append(("shard-tp", {"tp": tp}))
    # Phase 5 (-O3) is target-tuned iree-compile flags, chosen in llmirc/targets/.
    return passes
