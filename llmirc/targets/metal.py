"""Metal (Apple GPUs): IREE 3.13 on Linux compiles it to embedded MSL source (no metallib,
which needs Xcode's tools); the Linux runtime has no `metal` driver, so it cannot run here.
Fused attention fails to compile for Metal (the same bufferization error as Vulkan).
`--iree-metal-target-platform=ios` is not offered: iree-compile 3.13 aborts in SPIRV-Cross
("Subgroup ops beyond broadcast, ballot, and shuffle on iOS require Metal 2.3 and up")."""

from __future__ import annotations

from .profile import TargetProfile

METAL_VARIANTS = {"macos": "Apple GPUs on macOS (MSL source; compile-only here)"}


def metal_profile(variant: str) -> TargetProfile:
    flags = ("--iree-hal-target-device=metal", f"--iree-metal-target-platform={variant}")
    # int4 fails: "failed to legalize operation 'vector.bitcast' ... vector<2xi4>" (as on named Vulkan GPUs)
    return TargetProfile("metal", variant, "metal", "metal", flags, dtypes=("f32", "f16", "bf16"),
                         quantize=("int8",), attention="decomposed", page_size=16, notes=METAL_VARIANTS[variant])
