"""The optimization pipelines, in order. Reading this file tells you the compiler.

Phase 1 (all levels): what the paged-KV ABI requires.
Later phases (cleanups, fusions, target-tuned strategies) are added per level
as their passes land; each entry is (pass name, options).
"""

from __future__ import annotations

from .pass_manager import PassSpec


def pipeline_for_level(level: int, block_size: int = 16) -> list[PassSpec]:
    if level not in (0, 1, 2, 3):
        raise ValueError(f"optimization level must be 0..3, got {level}")
    # Phase 1. Required by the runtime ABI: one page pool, block tables.
    passes: list[PassSpec] = [("blockify-kv-cache", {"block_size": block_size})]
    return passes
