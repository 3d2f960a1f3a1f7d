"""Checkpoints -> llm IR. `import_checkpoint` is the one entry point the compiler uses."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from iree.compiler import ir

from ..dialect.context import weight_names
from ..errors import CheckpointError
from . import prequantized
from .checkpoint import TOKENIZER_FILES, Checkpoint, WeightSource
from .config import LlamaConfig, ModelConfig, load_config
from .decoder import build_decoder, cache_type, stage_layers, weight_shapes
from .families import FAMILIES
from .layout import laid_out
from .prequantized import PrequantizedLayout


@dataclass
class ImportedModel:
    config: ModelConfig
    source: WeightSource  # safetensors directory (GPTQ/AWQ included) or GGUF file
    module: ir.Module

    @property
    def checkpoint(self) -> WeightSource:
        """The weight source (the name before GGUF import; a Checkpoint for safetensors)."""
        return self.source

    @property
    def prequantized(self) -> PrequantizedLayout | None:
        """A GPTQ/AWQ checkpoint's layout (None for any other source)."""
        return getattr(self.source, "prequantized", None)

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every IR weight's shape (computed once: `load` asks for each tensor)."""
        return weight_shapes(self.config)

    def load(self, name: str) -> np.ndarray:
        """One IR weight from the checkpoint: its own tensor or its rows of a fused one, with
        the family's transform applied."""
        family = FAMILIES[self.config.architecture]
        part = fused_part(name, family, self.shapes)
        value = self.source.load(name) if part is None else \
            np.ascontiguousarray(self.source.load(part[0])[part[1]:part[2]])
        return value if family.tensor_transform is None else family.tensor_transform(name, value)

    def weights(self) -> dict[str, np.ndarray]:
        """Every referenced tensor (float ones as f32; loaded now; shapes were checked at import)."""
        if not self.source.quantized:
            return {n: self.load(n) for n in self.shapes}
        store = self.weight_store()
        return {n: store[n] for n in weight_names(self.module)}

    def weight_store(self):
        """A WeightStore over the checkpoint (tensors load when first asked for); a linear the
        source stores quantized is three derived tensors, unpacked once when first asked for."""
        from ..pipelines.weights import WeightStore

        quantized = self.source.quantized
        store = WeightStore(self.load, [n for n in self.shapes if n not in quantized])
        for q in quantized.values():
            parts: dict[int, np.ndarray] = {}

            def part(i: int, q=q, parts=parts) -> np.ndarray:
                if i not in parts:
                    parts.update(enumerate(self.source.load_quantized(q)))
                return parts.pop(i)  # the store caches what it asked for; keep nothing twice

            for i, name in enumerate(q.names):
                store.derive(name, lambda i=i, part=part: part(i))
        return store

    def tokenizer_files(self) -> list[Path]:
        return self.source.tokenizer_files()

    def stage_module(self, layers: tuple[int, int]) -> ir.Module:
        """The llm IR of one pipeline stage: layers [a, b) (build_decoder's `layers`), in the
        same context as `module`."""
        return build_decoder(self.config, self.module.context, dict(self.source.quantized), layers)


def import_checkpoint(path: str | Path, max_seq_len: int | None = None,
                      ctx: ir.Context | None = None) -> ImportedModel:
    """Validate a checkpoint (config, every tensor's presence and shape) and build its IR.

    `path` is a Hugging Face checkpoint directory or a GGUF file (`*.gguf`, or any file that
    starts with GGUF's magic). Raises CheckpointError with one line naming the file/tensor on
    any problem.
    """
    path = Path(path)
    if path.suffix.lower() == ".gguf" and not path.is_file():
        raise CheckpointError(f"{path}: GGUF file does not exist")
    if path.is_file() and is_gguf(path):
        from .gguf import open_gguf

        config, source = open_gguf(path, max_seq_len)
    else:
        config = load_config(path, max_seq_len)
        source = Checkpoint(path)
        source.prequantized = prequantized.detect(config, source, weight_shapes(config))  # checked there
    shapes = weight_shapes(config)
    quantized = source.quantized
    family = FAMILIES[config.architecture]
    source = laid_out(config, family, source, shapes)  # GPT-2, Falcon: their tensors under the IR's names
    for name, shape in shapes.items():
        if name in quantized:
            continue
        part = fused_part(name, family, shapes)
        if part is None:
            source.info(name, shape)
        elif part[1] == 0:  # check a fused tensor once, at its first part
            rows = sum(shapes[n][0] for n in fused_names(part[0], family))
            source.info(part[0], (rows,) + tuple(shape[1:]))
    return ImportedModel(config, source, build_decoder(config, ctx, dict(quantized)))


def is_gguf(path: Path) -> bool:
    """A .gguf name, or GGUF's 4-byte magic at the start (a renamed file is still read as one)."""
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


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


__all__ = ["Checkpoint", "ImportedModel", "LlamaConfig", "ModelConfig", "TOKENIZER_FILES", "WeightSource",
           "build_decoder", "cache_type", "stage_layers", "import_checkpoint", "load_config", "weight_shapes"]
