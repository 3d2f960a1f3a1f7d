"""Weights as passes see them: checkpoint tensors plus tensors derived at compile time.

Passes that fold weight-only computations (fold-weights: the concatenated
q/k/v weight of fuse-qkv, quantized weights) register the result here under a
new name and the IR references that name. Values are computed lazily, when the
artifact writer or the interpreter asks, so `llmirc opt` on IR without weights
still works and nothing is loaded twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator

import numpy as np

Loader = Callable[[str], np.ndarray]


class WeightStore(Mapping):
    def __init__(self, loader: Loader, names: list[str]):
        self._loader = loader
        self._recipes: dict[str, Callable[[], np.ndarray]] = {n: (lambda n=n: loader(n)) for n in names}
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "WeightStore":
        return cls(arrays.__getitem__, list(arrays))

    def derive(self, name: str, fn: Callable[[], np.ndarray]) -> None:
        """Register a tensor computed from others (`fn` reads them through this store)."""
        self._recipes[name] = fn

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if name not in self._recipes:
                raise KeyError(name)
            self._cache[name] = self._recipes[name]()
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._recipes)

    def __len__(self) -> int:
        return len(self._recipes)

    def drop_cached(self, keep: set[str]) -> None:
        """Forget computed values not in `keep` (frees the inputs of folded weights)."""
        for name in [n for n in self._cache if n not in keep]:
            del self._cache[name]
