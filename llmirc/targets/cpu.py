"""CPU targets: llvm-cpu on the host or a named CPU (cross builds need no such CPU here)."""

from __future__ import annotations

from .profile import TargetProfile

CPU_VARIANTS = {
    # variant -> (target cpu, target triple or None)
    "host": ("host", None),
    "generic": ("generic", "x86_64-unknown-linux-gnu"),
    "haswell": ("haswell", "x86_64-unknown-linux-gnu"),
    "znver3": ("znver3", "x86_64-unknown-linux-gnu"),
    "znver4": ("znver4", "x86_64-unknown-linux-gnu"),
    "sapphirerapids": ("sapphirerapids", "x86_64-unknown-linux-gnu"),
    "neoverse-v1": ("neoverse-v1", "aarch64-unknown-linux-gnu"),
}


def cpu_profile(variant: str) -> TargetProfile:
    cpu, triple = CPU_VARIANTS[variant]
    flags = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
             f"--iree-llvmcpu-target-cpu={cpu}"]
    if triple:
        flags.append(f"--iree-llvmcpu-target-triple={triple}")
    # Decomposed attention: TOOLCHAIN.md measured the fused op ~35x slower on this CPU.
    # -O3: data tiling (packed matmul layouts) made decode 2.9x and prefill 1.3x faster on the
    # 8-layer hidden-512 benchmark; ukernels=all added nothing measurable and --iree-opt-level=O3
    # failed to compile ("operations with large vector sizes"), so neither is used.
    return TargetProfile("cpu", variant, "local", "local-task", tuple(flags), dtypes=("f32",),
                         attention="decomposed", o3_flags=("--iree-opt-data-tiling=true",))
