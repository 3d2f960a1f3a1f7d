"""Checkpoints -> llm IR. `import_checkpoint` is the one entry point the compiler uses."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from iree.compiler import ir

from ..dialect.context import weight_names
from . import prequantized
from .checkpoint import Checkpoint
from .config import LlamaConfig, ModelConfig, load_config
from .decoder import build_decoder, cache_type, weight_shapes
from .families import FAMILIES
from .layout import laid_out
from .prequantized import PrequantizedLayout

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


@dataclass
class ImportedModel:
    config: ModelConfig
    checkpoint: Checkpoint
    module: ir.Module
    prequantized: PrequantizedLayout | None = None  # GPTQ/AWQ linears, unpacked by weight_store()

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every IR weight's shape (computed once: `load` asks for each tensor)."""
        return weight_shapes(self.config)

    def load(self, name: str) -> np.ndarray:
        """One IR weight from the checkpoint: its own tensor or its rows of a fused one, with
        the family's transform applied."""
        family = FAMILIES[self.config.architecture]
        part = fused_part(name, family, self.shapes)
        value = self.checkpoint.load(name) if part is None else \
            np.ascontiguousarray(self.checkpoint.load(part[0])[part[1]:part[2]])
        return value if family.tensor_transform is None else family.tensor_transform(name, value)

    def weights(self) -> dict[str, np.ndarray]:
        """Every referenced tensor (float ones as f32; loaded now; shapes were checked at import)."""
        if self.prequantized is None:
            return {n: self.load(n) for n in self.shapes}
        store = self.weight_store()
        return {n: store[n] for n in weight_names(self.module)}

    def weight_store(self):
        """A WeightStore over the checkpoint (tensors load when first asked for)."""
        from ..pipelines.weights import WeightStore

        quantized = self.prequantized.linears if self.prequantized else {}
        store = WeightStore(self.load, [n for n in self.shapes if n not in quantized])
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
    family = FAMILIES[config.architecture]
    ckpt = laid_out(config, family, ckpt, shapes)  # GPT-2, Falcon: their tensors under the IR's names
    for name, shape in shapes.items():
        if name in quantized:
            continue
        part = fused_part(name, family, shapes)
        if part is None:
            ckpt.info(name, shape)
        elif part[1] == 0:  # check a fused tensor once, at its first part
            rows = sum(shapes[n][0] for n in fused_names(part[0], family))
            ckpt.info(part[0], (rows,) + tuple(shape[1:]))
    return ImportedModel(config, ckpt, build_decoder(config, ctx, quantized), layout)


def fused_names(fused: str, family) -> list[str]:
    """The IR weights a fused checkpoint tensor `fused` holds, in row order."""
    for suffix, parts in family.fused.items():
        if fused.endswith(suffix):
            prefix = fused[: -len(suffix)]
            return [prefix + p for p in parts]
    return []


def fused_part(name: str, family, shapes: dict[str, tuple[int, ...]]) -> tuple[str, int, int] | None:
    """(checkpoint tensor, first row, end row) when the family stores IR weight `name` as rows
    of a fused tensor; None when it is a tensor of its own."""
    for suffix, parts in family.fused.items():
        for i, part in enumerate(parts):
            if name.endswith(part):
                prefix = name[: -len(part)]
                rows = [shapes[prefix + p][0] for p in parts]
                start = sum(rows[:i])
                return prefix + suffix, start, start + rows[i]
    return None


__all__ = ["Checkpoint", "ImportedModel", "LlamaConfig", "ModelConfig", "build_decoder", "cache_type", "import_checkpoint",
           "load_config", "weight_shapes"]
