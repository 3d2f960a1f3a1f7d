"""Checkpoints -> llm IR. `import_checkpoint` is the one entry point the compiler uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from iree.compiler import ir

from ..dialect.context import weight_names
from . import prequantized
from .checkpoint import Checkpoint
from .config import LlamaConfig, ModelConfig, load_config
from .decoder import build_decoder, cache_type, weight_shapes
from .families import FAMILIES
from .prequantized import PrequantizedLayout

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


@dataclass
class ImportedModel:
    config: ModelConfig
    checkpoint: Checkpoint
    module: ir.Module
    prequantized: PrequantizedLayout | None = None  # GPTQ/AWQ linears, unpacked by weight_store()

    def load(self, name: str) -> np.ndarray:
        """One checkpoint tensor as the IR's weight holds it (the family's transform applied)."""
        value = self.checkpoint.load(name)
        transform = FAMILIES[self.config.architecture].tensor_transform
        return value if transform is None else transform(name, value)

    def weights(self) -> dict[str, np.ndarray]:
        """Every referenced tensor (float ones as f32; loaded now; shapes were checked at import)."""
        if self.prequantized is None:
            return {n: self.load(n) for n in weight_shapes(self.config)}
        store = self.weight_store()
        return {n: store[n] for n in weight_names(self.module)}

    def weight_store(self):
        """A WeightStore over the checkpoint (tensors load when first asked for)."""
        from ..pipelines.weights import WeightStore

        quantized = self.prequantized.linears if self.prequantized else {}
        store = WeightStore(self.load, [n for n in weight_shapes(self.config) if n not in quantized])
        if self.prequantized:
            self.prequantized.register(store, self.checkpoint)
        return store

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
    shapes = weight_shapes(config)
    layout = prequantized.detect(config, ckpt, shapes)  # GPTQ/AWQ tensors, checked there
    quantized = layout.linears if layout else {}
    for name, shape in shapes.items():
        if name not in quantized:
            ckpt.info(name, shape)
    return ImportedModel(config, ckpt, build_decoder(config, ctx, quantized), layout)


__all__ = ["Checkpoint", "ImportedModel", "LlamaConfig", "ModelConfig", "build_decoder", "cache_type", "import_checkpoint",
           "load_config", "weight_shapes"]
