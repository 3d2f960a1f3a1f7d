"""CUDA targets (NVIDIA GPUs): PTX for one SM architecture, run by the `cuda` runtime driver.

Checked with iree-compile 3.13 on the tiny test model (docs/targets.md has the table):
sm_80, sm_86, sm_89 compile through IREE's own target table. sm_90 (and sm_90a, sm_100)
fail there with "missing GPU target in #hal.executable.target": IREE 3.13 knows the name
but has no target description for it. So sm_90 is compiled from an explicit
`#iree_gpu.target` that llmirc puts on the module: IREE's sm_80 description (mma.sync,
32-wide subgroups, the same workgroup limits) with arch sm_90 and PTX ISA 7.8. The result
is native sm_90 PTX (`.target sm_90`) that uses Ampere-class instructions (no wgmma/TMA,
which IREE 3.13 does not generate for CUDA anyway).
"""

from __future__ import annotations

from .profile import TargetProfile

CUDA_VARIANTS = {
    # variant -> what it is for
    "sm_80": "A100 (Ampere)",
    "sm_86": "RTX 30xx, A10, A40 (Ampere)",
    "sm_89": "RTX 40xx, L4, L40 (Ada)",
    "sm_90": "H100, H200 (Hopper): native sm_90 PTX from an explicit target description",
}

# IREE 3.13's sm_80 target description (`--iree-cuda-target=sm_80 --compile-to=hal` prints it).
_SM80_WGP = ("compute = fp64|fp32|fp16|int64|int32|int16|int8, storage = b64|b32|b16|b8, "
             "subgroup = shuffle|arithmetic, dot = dp4xi8toi32, "
             "mma = [<NV_MMA_SYNC_F32_16x8x16_F16>, <NV_MMA_SYNC_F16_16x8x16_F16>, <NV_MMA_SYNC_F32_16x8x16_BF16>, "
             "<NV_WMMA_F32_16x16x16_F16>, <NV_WMMA_F16_16x16x16_F16>], subgroup_size_choices = [32], "
             "max_workgroup_sizes = [1024, 1024, 1024], max_thread_count_per_workgroup = 1024, "
             "max_workgroup_memory_bytes = 166912, max_workgroup_counts = [2147483647, 65535, 65535]")


def _explicit_target(arch: str, ptx: str) -> str:
    return (f'#hal.device.target<"cuda", [#hal.executable.target<"cuda", "cuda-nvptx-fb", '
            f'{{iree_codegen.target_info = #iree_gpu.target<arch = "{arch}", features = "{ptx}", '
            f'wgp = <{_SM80_WGP}>>}}>]>')


# Variants IREE 3.13's table lacks: described explicitly (see the module docstring).
EXPLICIT_TARGETS = {"sm_90": _explicit_target("sm_90", "+ptx78")}


def cuda_profile(variant: str) -> TargetProfile:
    flags = ("--iree-hal-target-device=cuda", f"--iree-cuda-target={variant}")
    # Fused attention: 4-26 % faster decode than decomposed on an H100 (docs/attention-strategy.md).
    return TargetProfile("cuda", variant, "cuda", "cuda", flags, dtypes=("f32", "f16", "bf16"),
                         quantize=("int8", "int4"), attention="fused", page_size=16,
                         notes=CUDA_VARIANTS[variant], device_target_attr=EXPLICIT_TARGETS.get(variant))
