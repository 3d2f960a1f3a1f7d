"""CPU targets: llvm-cpu on the host or a named CPU (cross builds need no such CPU here)."""

from __future__ import annotations

from pathlib import Path

from .profile import TargetProfile

# Named CPUs with AVX512-VNNI (vpdpbusd on 512-bit vectors); "host" is asked of the CPU itself.
VNNI_CPUS = frozenset({"znver4", "sapphirerapids"})

CPU_VARIANTS = {
    # variant -> (target cpu, target triple or None, note)
    "host": ("host", None, "the CPU of the compiling machine"),
    "generic": ("generic", "x86_64-unknown-linux-gnu", "any x86-64 (SSE2 only; slow)"),
    "haswell": ("haswell", "x86_64-unknown-linux-gnu", "x86-64 with AVX2 + FMA"),
    "znver3": ("znver3", "x86_64-unknown-linux-gnu", "AMD Zen 3"),
    "znver4": ("znver4", "x86_64-unknown-linux-gnu", "AMD Zen 4 (AVX-512)"),
    "sapphirerapids": ("sapphirerapids", "x86_64-unknown-linux-gnu", "Intel Xeon 4th gen (AVX-512, AMX)"),
    # aarch64 cross builds. neoverse-n1 (Graviton2, Ampere Altra; NEON) compiles the tiny model
    # in ~11 s. SVE CPUs (neoverse-v1, Graviton3) are not offered: IREE 3.13 ran >10 min and
    # >11 GB on the same module, with or without scalable vectorization (docs/targets.md).
    "neoverse-n1": ("neoverse-n1", "aarch64-unknown-linux-gnu", "aarch64 cross build: Graviton2, Ampere Altra"),
    "aarch64-generic": ("generic", "aarch64-unknown-linux-gnu", "aarch64 cross build: any ARMv8-A"),
}


def cpu_profile(variant: str) -> TargetProfile:
    cpu, triple, note = CPU_VARIANTS[variant]
    flags = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
             f"--iree-llvmcpu-target-cpu={cpu}"]
    if triple:
        flags.append(f"--iree-llvmcpu-target-triple={triple}")
    # Decomposed attention: TOOLCHAIN.md measured the fused op ~35x slower on this CPU.
    # -O3: data tiling (packed matmul layouts) made decode 2.9x and prefill 1.3x faster on the
    # 8-layer hidden-512 benchmark; ukernels=all added nothing measurable and --iree-opt-level=O3
    # failed to compile ("operations with large vector sizes"), so neither is used.
    return TargetProfile("cpu", variant, "local", "local-task", tuple(flags), dtypes=("f32", "f16", "bf16"),
                         quantize=("int8", "int4", "w8a8", "w4a8", "w4a16"), attention="decomposed", notes=note,
                         o3_flags=("--iree-opt-data-tiling=true",), o3_decode_batches=(1, 4),
                         # prefill's f16/bf16 linears in static 64-row chunks: 1.5-1.65x faster alone at
                         # 100-512 rows (benchmarks/matmul_kernels.py --prefill-rows), 100M prefill
                         # 1.1-1.45x (benchmarks/prefill_rows.py)
                         o3_prefill_rows=64,
                         # w8a8 at any level: a 128-row i8 x i8 matmul (2048 x 11264) took 128-137 ms
                         # without data tiling, 30 ms with it (28 with mmt4d ukernels, which made the
                         # static batch-1 product slower: 0.96 vs 0.83 ms) (docs/quantization.md)
                         integer_matmul_flags=("--iree-opt-data-tiling=true",),
                         vnni=has_vnni(variant))


def host_flags() -> frozenset[str] | None:
    """This machine's CPU feature flags (Linux /proc/cpuinfo), or None where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def vnni_artifact_error(artifact: object, target: object, flags: frozenset[str] | None) -> str | None:
    """Why an artifact whose kernels use AVX512-VNNI (manifest target.vnni) cannot run on a CPU with
    `flags`, or None: it would stop at its first VNNI or AVX-512 instruction (SIGILL) instead of
    saying so. Unknown flags (not Linux) are given the benefit of the doubt."""
    if flags is None or "avx512_vnni" in flags:
        return None
    return (f"artifact {artifact} was compiled for a CPU with AVX512-VNNI (target {target}: its quantized "
            "kernels use VNNI and AVX-512 instructions) and this CPU has no avx512_vnni; recompile it here "
            "(llmirc compile ... --target cpu)")


def has_vnni(variant: str) -> bool:
    """Whether the variant's CPU has AVX512-VNNI; for "host", whether this machine's does
    (Linux /proc/cpuinfo; elsewhere no: the portable kernel is always correct)."""
    if variant != "host":
        return variant in VNNI_CPUS
    flags = host_flags()
    return flags is not None and "avx512_vnni" in flags
