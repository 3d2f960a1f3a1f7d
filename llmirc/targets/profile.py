"""What a target is: one small declarative record per target family and variant."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetProfile:
    name: str  # family: cpu, cuda, rocm, vulkan, tpu-like
    variant: str  # host, znver3, sm_80, gfx942, ...
    device: str  # IREE HAL target device name
    driver: str  # iree.runtime driver that runs the artifact
    flags: tuple[str, ...]  # iree-compile flags
    dtypes: tuple[str, ...] = ("f32",)  # weight/activation dtypes supported
    attention: str = "decomposed"  # "decomposed" (linalg) or "fused" (iree_linalg_ext.attention)
    page_size: int = 16
    static_shapes: bool = False
    notes: str = ""
    o3_flags: tuple[str, ...] = field(default=())  # extra iree-compile flags that measured faster

    @property
    def full_name(self) -> str:
        return f"{self.name}:{self.variant}"

    def compile_flags(self, opt_level: int) -> list[str]:
        return list(self.flags) + (list(self.o3_flags) if opt_level >= 3 else [])
