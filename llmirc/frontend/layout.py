"""A checkpoint whose tensors are not laid out as the IR's weights (GPT-2, Falcon), seen under
the IR's weight names.

The builder names every weight as Llama's checkpoints do (`model.layers.0.self_attn.q_proj.weight`),
so passes, quantization's keep-float rule and the artifact see one naming for every family. A
family whose checkpoint differs declares each IR weight's `TensorSource` (families/base.py):
another tensor name, a transpose, row ranges of a fused tensor. `LaidOutSource` wraps the
checkpoint's weight source with those rules: shape checks name the checkpoint's own tensor and
the shape config.json implies for it, and `load` returns the IR weight, so the importer does
not know the difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from .families.base import Family, StackedSource, TensorSource

Shape = tuple[int, ...]
Source = TensorSource | StackedSource


def checkpoint_shapes(sources: Mapping[str, Source], shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    """The shape config.json implies for each source tensor: the rows of every IR weight taken
    from it (a fused tensor's parts cover it), the IR weight's other dims, and the [in, out]
    order of a transposed one; an expert-stacked weight's tensors are its slices' row parts."""
    rows: dict[str, int] = {}
    rest: dict[str, tuple[Shape, bool]] = {}
    out: dict[str, Shape] = {}
    for name, src in sources.items():
        shape = tuple(shapes[name])
        if isinstance(src, StackedSource):
            for part in src.parts:
                out |= {t: (shape[1] // len(part),) + shape[2:] for t in part}
            continue
        rows[src.tensor] = rows.get(src.tensor, 0) + (shape[0] if src.rows is None else
                                                      sum(b - a for a, b in src.rows))
        rest[src.tensor] = (shape[1:], src.transpose)
    for tensor, n in rows.items():
        tail, transpose = rest[tensor]
        full = (n,) + tail
        out[tensor] = tuple(reversed(full)) if transpose else full
    return out


class LaidOutSource:
    """`inner` (a WeightSource) under the IR's weight names; anything else is the inner source's."""

    def __init__(self, inner: Any, sources: Mapping[str, Source], shapes: Mapping[str, Shape]):
        self.inner, self.sources = inner, dict(sources)
        self.stored = checkpoint_shapes(self.sources, shapes)

    def __getattr__(self, attr: str) -> Any:  # directory, where, quantized, tokenizer_files, ...
        return getattr(self.__dict__["inner"], attr)

    @property
    def tensors(self) -> dict[str, Any]:
        """The IR weights whose source tensor the checkpoint has, and the inner source's tensors."""
        inner = self.inner.tensors
        return dict(inner) | {n: inner[s.tensors[0]] for n, s in self.sources.items()
                              if all(t in inner for t in s.tensors)}

    def info(self, name: str, expected_shape: Shape | None = None):
        src = self.sources.get(name)
        if src is None:
            return self.inner.info(name, expected_shape)
        infos = [self.inner.info(t, self.stored[t] if expected_shape is not None else None) for t in src.tensors]
        t = infos[0]
        if isinstance(src, StackedSource) and expected_shape is None:  # [experts, rows of a slice, ...]
            return replace(t, name=name, shape=(len(src.parts), t.shape[0] * len(src.parts[0])) + t.shape[1:])
        return replace(t, name=name, shape=tuple(expected_shape) if expected_shape is not None else t.shape)

    def load(self, name: str, dtype=np.float32) -> np.ndarray:
        src = self.sources.get(name)
        if src is None:
            return self.inner.load(name, dtype)
        if isinstance(src, StackedSource):
            return src.take_from(lambda t: self.inner.load(t, dtype))
        return src.take(self.inner.load(src.tensor, dtype))


def laid_out(config: Any, family: Family, source: Any, shapes: Mapping[str, Shape]) -> Any:
    """`source` seen under the IR's names when the family lays its checkpoints out otherwise;
    the first of the family's name prefixes under which every source tensor exists is used
    (the first one when none fits, so a missing tensor is named as the usual layout has it).
    A family with `ir_named_layout` also takes a checkpoint holding every IR weight by name."""
    if family.tensor_sources is None:
        return source
    candidates = [family.tensor_sources(config, shapes, p) for p in family.checkpoint_prefixes]
    have = source.tensors
    if family.ir_named_layout and all(n in have for n in shapes):
        return source
    chosen = next((s for s in candidates if all(t in have for src in s.values() for t in src.tensors)),
                  candidates[0])
    return LaidOutSource(source, chosen, shapes)
