"""ROCm targets (AMD GPUs): code objects for one gfx architecture, run by the `hip` driver.

All three compile with IREE 3.13 (docs/targets.md); no AMD GPU was available to run them.
"""

from __future__ import annotations

from .profile import TargetProfile

ROCM_VARIANTS = {
    "gfx90a": "MI210, MI250 (CDNA2)",
    "gfx942": "MI300X, MI300A (CDNA3)",
    "gfx1100": "RX 7900 XTX, W7900 (RDNA3)",
}


def rocm_profile(variant: str) -> TargetProfile:
    flags = ("--iree-hal-target-device=hip", f"--iree-rocm-target={variant}")
    # Fused attention compiles on HIP; not measured (no AMD GPU): chosen by analogy with CUDA.
    return TargetProfile("rocm", variant, "hip", "hip", flags, dtypes=("f32", "f16", "bf16"),
                         quantize=("int8", "int4"), attention="fused", page_size=16, notes=ROCM_VARIANTS[variant])
