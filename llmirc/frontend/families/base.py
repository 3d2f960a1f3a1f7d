"""The Family record every family module fills in (see families/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Choices = Callable[[dict[str, Any], str], dict[str, Any]]


def _plain_window(cfg: dict[str, Any]) -> int | None:
    return cfg.get("sliding_window")


@dataclass(frozen=True)
class Family:
    """One model family: what config.json says and which decoder blocks that selects."""

    name: str
    architectures: tuple[str, ...]
    summary: str
    choices: Choices                                   # config.json -> ModelConfig block fields
    reads: frozenset[str] = frozenset()                # family keys read by `choices`
    inert: Mapping[str, str] = field(default_factory=dict)  # family keys that do not change numerics
    window: Callable[[dict[str, Any]], int | None] = _plain_window  # the sliding window in effect
    features: tuple[str, ...] = ()                     # one phrase each, for `llmirc models`
    refused: tuple[str, ...] = ()                      # what this family refuses, for `llmirc models`


def flag(cfg: dict[str, Any], key: str, default: bool = False) -> bool:
    """A boolean key: the default only when absent or null."""
    value = cfg.get(key)
    return default if value is None else bool(value)
