"""Vulkan targets (SPIR-V): a generic profile and named GPU architectures, run by `vulkan`.

`generic` is IREE's default Vulkan target, narrowed to what every Vulkan 1.x compute device
has: no 64-bit integers in shaders (`--iree-input-demote-i64-to-i32`, so the module's token,
position and block-table arguments are i32: manifest target.index_dtype). It runs on this
CPU-only machine through Mesa's lavapipe (tests/targets/test_vulkan_lavapipe.py). valhall
(Arm Mali) and adreno (Qualcomm) need the same i32 demotion: without it iree-compile fails
with "failed to legalize operation 'vector.broadcast' ... (i64) -> vector<1xi64>". The
named targets compile here, but rdna3 and ampere artifacts gave wrong tokens on lavapipe
(they assume 64- / 32-wide subgroups, lavapipe's are 8: the likely cause), so only
`generic` is run here.
Attention is decomposed on every Vulkan target: the fused op fails to compile
(docs/attention-strategy.md).
Dtypes are what compiled (and for `generic`, ran on lavapipe): `generic` cannot take f16/bf16
weights ("uses 16640 bytes of shared memory; exceeded the limit of 16384 bytes"), the named
GPUs cannot take int4 ("failed to legalize operation 'vector.bitcast' ... vector<2xi4>").
"""

from __future__ import annotations

from .profile import TargetProfile

VULKAN_VARIANTS = {
    # variant -> (--iree-vulkan-target value or None for IREE's default, demote i64 -> i32, note)
    "generic": (None, True, "any Vulkan 1.x compute device (runs on Mesa lavapipe here)"),
    "rdna3": ("rdna3", False, "AMD RDNA3 (RX 7000)"),
    "ampere": ("ampere", False, "NVIDIA Ampere (RTX 30xx, A100)"),
    "valhall": ("valhall", True, "Arm Mali Valhall (G57-G715)"),
    "adreno": ("adreno", True, "Qualcomm Adreno"),
}
# variant -> (--dtype values, --quantize schemes) that compile (generic: and run on lavapipe)
_PRECISION = {"generic": (("f32",), ("int8", "int4"))}
_NAMED_GPU_PRECISION = (("f32", "f16", "bf16"), ("int8",))


def vulkan_profile(variant: str) -> TargetProfile:
    target, demote, note = VULKAN_VARIANTS[variant]
    flags = ["--iree-hal-target-device=vulkan"]
    if target:
        flags.append(f"--iree-vulkan-target={target}")
    if demote:
        flags.append("--iree-input-demote-i64-to-i32")
    dtypes, quantize = _PRECISION.get(variant, _NAMED_GPU_PRECISION)
    return TargetProfile("vulkan", variant, "vulkan", "vulkan", tuple(flags), dtypes=dtypes, quantize=quantize,
                         attention="decomposed", page_size=16, notes=note,
                         index_dtype="i32" if demote else "i64")
