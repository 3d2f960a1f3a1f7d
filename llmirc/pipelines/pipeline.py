"""The optimization pipelines, in order. Reading this file tells you the compiler.

Each level adds a phase to the one below it; each entry is (pass name, options).
Target-dependent choices (attention lowering, iree-compile flags at -O3) live in
the target profile and are applied by the lowering, not here.
"""

from __future__ import annotations

from .pass_manager import PassSpec

LEVELS = (0, 1, 2, 3)


def pipeline_for_level(level: int, block_size: int = 16) -> list[PassSpec]:
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
    # Phase 4 (-O3) is target-tuned iree-compile flags, chosen in llmirc/targets/.
    return passes
