"""Checkpoints -> llm IR. `import_checkpoint` is the one entry point the compiler uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from iree.compiler import ir

from .checkpoint import Checkpoint
from .config import LlamaConfig, load_config
from .llama import build_llama, cache_type, weight_shapes

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


@dataclass
class ImportedModel:
    config: LlamaConfig
    checkpoint: Checkpoint
    module: ir.Module

    def weights(self) -> dict[str, np.ndarray]:
        """Every referenced tensor as f32 (loaded now; shapes were checked at import)."""
        return {n: self.checkpoint.load(n) for n in weight_shapes(self.config)}

    def tokenizer_files(self) -> list[Path]:
        return [p for p in (self.checkpoint.directory / n for n in TOKENIZER_FILES) if p.is_file()]


def import_checkpoint(directory: str | Path, max_seq_len: int | None = None,
                      ctx: ir.Context | None = None) -> ImportedModel:
    """Validate a checkpoint (config, every tensor's presence and shape) and build its IR.

    Raises CheckpointError with one line naming the file/tensor on any problem.
    """
    directory = Path(directory)
    config = load_config(directory, max_seq_len)
    ckpt = Checkpoint(directory)
    for name, shape in weight_shapes(config).items():
        ckpt.info(name, shape)
    return ImportedModel(config, ckpt, build_llama(config, ctx))


__all__ = ["Checkpoint", "ImportedModel", "LlamaConfig", "build_llama", "cache_type", "import_checkpoint",
           "load_config", "weight_shapes"]
