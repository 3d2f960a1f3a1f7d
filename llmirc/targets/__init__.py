"""Target profiles: `resolve("cpu")`, `resolve("cpu:znver3")`; `TARGETS` lists families."""

from __future__ import annotations

from typing import Callable

from ..errors import LlmircError
from .cpu import CPU_VARIANTS, cpu_profile
from .profile import TargetProfile

# family -> (default variant, variants, profile factory)
TARGETS: dict[str, tuple[str, tuple[str, ...], Callable[[str], TargetProfile]]] = {
    "cpu": ("host", tuple(CPU_VARIANTS), cpu_profile),
}


class TargetError(LlmircError):
    pass


def resolve(spec: str) -> TargetProfile:
    """'family' or 'family:variant' -> profile; one clear error for anything unknown."""
    family, _, variant = spec.partition(":")
    if family not in TARGETS:
        raise TargetError(f"unknown target '{family}' (known: {', '.join(TARGETS)}; see `llmirc targets`)")
    default, variants, factory = TARGETS[family]
    variant = variant or default
    if variant not in variants:
        raise TargetError(f"unknown {family} variant '{variant}' (known: {', '.join(variants)})")
    return factory(variant)


__all__ = ["TARGETS", "TargetError", "TargetProfile", "resolve"]
