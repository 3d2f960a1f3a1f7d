"""tpu-like: the shape discipline of a systolic-array accelerator, compiled for a back end
that runs here.

What is accelerator-specific (docs/targets.md has the full account):
- static shapes only: prefill and decode are compiled per bucket (`prefill_b{B}_t{T}`,
  `decode_b{B}`), block tables are [B, ceil(max_seq_len / page_size)] and the page pool has
  a page count fixed at compile time; no dim is data-dependent. The runtime pads a request
  to the smallest bucket that holds it, or refuses it with a clear error.
- matmuls padded to the systolic tile: K and N of every linear to a multiple of 128 (the
  weight-stationary array), M (rows = batch x tokens) to a multiple of 8 (sublanes), with
  zeros, then sliced back; with `--dtype bf16` both operands enter the matmul as bf16 and
  accumulate in f32, as on a bf16 MXU. The 16-bit type is bf16 only (no f16), and the
  weight quantization offered is int8 (`--quantize int8`: its matmuls dequantize inside
  the contraction and are not tile-padded).
What is not: the code generator. The variants compile through IREE back ends that exist and
run on this machine (llvm-cpu for the host CPU, or the portable VMVX interpreter), so the
artifact is a real, runnable check of the static-shape ABI, not accelerator code.
"""

from __future__ import annotations

from .profile import Buckets, TargetProfile

SYSTOLIC_TILE = 128

TPU_LIKE_VARIANTS = {
    # variant -> (iree-compile flags, note)
    "host": (("--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
              "--iree-llvmcpu-target-cpu=host"), "static shapes + 128-tiles, code for this CPU (llvm-cpu)"),
    "vmvx": (("--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=vmvx"),
             "static shapes + 128-tiles, portable VMVX bytecode (slow; any host)"),
}


def tpu_like_profile(variant: str) -> TargetProfile:
    flags, note = TPU_LIKE_VARIANTS[variant]
    return TargetProfile("tpu-like", variant, "local", "local-task", flags, dtypes=("f32", "bf16"),
                         quantize=("int8",), attention="decomposed", page_size=16, static_shapes=True, notes=note,
                         buckets=Buckets(), systolic_tile=SYSTOLIC_TILE)
