"""Target profiles: `resolve("cpu")`, `resolve("cuda:sm_80")`; `TARGETS` lists families.

One file per family, each a small declarative record (profile.py): IREE device and flags,
supported dtypes, attention strategy, page size, static shapes, runtime driver.
docs/targets.md says what compiles and runs for each.
"""

from __future__ import annotations

from typing import Callable

from .cpu import CPU_VARIANTS, cpu_profile
from .cuda import CUDA_VARIANTS, cuda_profile
from .metal import METAL_VARIANTS, metal_profile
from .profile import Buckets, TargetError, TargetProfile
from .rocm import ROCM_VARIANTS, rocm_profile
from .tpu_like import TPU_LIKE_VARIANTS, tpu_like_profile
from .vulkan import VULKAN_VARIANTS, vulkan_profile

# family -> (default variant, variants, profile factory)
TARGETS: dict[str, tuple[str, tuple[str, ...], Callable[[str], TargetProfile]]] = {
    "cpu": ("host", tuple(CPU_VARIANTS), cpu_profile),
    "cuda": ("sm_80", tuple(CUDA_VARIANTS), cuda_profile),
    "rocm": ("gfx942", tuple(ROCM_VARIANTS), rocm_profile),
    "vulkan": ("generic", tuple(VULKAN_VARIANTS), vulkan_profile),
    "tpu-like": ("host", tuple(TPU_LIKE_VARIANTS), tpu_like_profile),
    "metal": ("macos", tuple(METAL_VARIANTS), metal_profile),
}


def resolve(spec: str) -> TargetProfile:
    """'family' or 'family:variant' -> profile; one clear error for anything unknown."""
    family, _, variant = spec.strip().partition(":")
    if family not in TARGETS:
        raise TargetError(f"unknown target '{family}' (known: {', '.join(TARGETS)}; see `llmirc targets`)")
    default, variants, factory = TARGETS[family]
    variant = variant or default
    if variant not in variants:
        what = "GPU architecture" if family in ("cuda", "rocm", "vulkan") else "variant"
        raise TargetError(f"unknown {family} {what} '{variant}' (known: {', '.join(variants)})")
    return factory(variant)


def all_profiles() -> list[TargetProfile]:
    """Every family:variant, in TARGETS order."""
    return [factory(v) for _, variants, factory in TARGETS.values() for v in variants]


__all__ = ["Buckets", "TARGETS", "TargetError", "TargetProfile", "all_profiles", "resolve"]
