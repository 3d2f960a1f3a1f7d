"""Lowering of a tensor-parallel module (shard-tp's output) to one IREE module for N devices.

Why this shape (TOOLCHAIN.md, "Several devices in one module"): IREE places work by data.
Every value lives on the device its sources live on: a weight global pinned with
`stream.affinity`, a function argument with `iree.abi.affinity`, a `flow.tensor.transfer`
result. So the lowering pins the sources of each device's ops (its weights, its page pool,
its copy of the replicated arguments) and the per-device ops follow; the only cross-device
edges are the transfers of the collectives, the arguments' copies, and nothing else.

A collective on device d reads operand j from device j: the remote operands are transferred
to d, the local one goes through `flow.tensor.barrier ... on d` (without it the scheduler
may run d's adds where the partial was made and make one device wait for the other),
then the operands are summed in operand order (all-reduce: the same expression on every
device, so the replicas stay bitwise equal) or concatenated (all-gather).

Device symbols are `@__device_{i}`, declared by the iree-compile flags
`--iree-hal-target-device=__device_{i}=local[i]` (or cuda[i], hip[i]; TargetProfile.compile_flags),
or, for targets IREE describes explicitly (CUDA sm_90), by a `hal.device.targets` list of N
descriptions with ordinals 0..N-1, which IREE materializes as those same `@__device_i`
(TargetProfile.module_text).
"""

from __future__ import annotations

from .emitter import TV, Emitter
from .ops import LOp, LoweringError, binary, lowering

DEVICE_PREFIX = "__device_"


def device_symbol(device: int) -> str:
    """The IREE device global of device `device` (without the @)."""
    return f"{DEVICE_PREFIX}{device}"


def affinity(device: int) -> str:
    return f"#hal.device.promise<@{device_symbol(device)}>"


def _typed(x: TV) -> str:
    """`tensor<...>{%dyn, ...}`: the type with its dynamic dims, as flow tensor ops take it."""
    dyn = [d for d in x.dims if not isinstance(d, int)]
    return x.type + ("{" + ", ".join(dyn) + "}" if dyn else "")


def transfer(e: Emitter, x: TV, device: int) -> TV:
    """`x` moved to `device`."""
    return TV(e.v(f"flow.tensor.transfer {x.name} : {_typed(x)} to {affinity(device)}", "xfer"), x.dims, x.dtype)


def barrier(e: Emitter, x: TV, device: int) -> TV:
    """`x`, which must be ready on `device` (pins it there; see the module docstring)."""
    return TV(e.v(f"flow.tensor.barrier {x.name} : {_typed(x)} on {affinity(device)}", "pin"), x.dims, x.dtype)


def _on_device(e: Emitter, op: LOp) -> list[TV]:
    """The collective's operands on the device it runs on: the local one pinned, the others moved."""
    (inputs,) = op.operands
    d = op.module.device
    n = op.module.num_devices
    if d is None or len(inputs) != n:
        raise LoweringError(f"a device collective needs one operand per device ({n}) and a placement")
    return [barrier(e, x, d) if j == d else transfer(e, x, d) for j, x in enumerate(inputs)]


@lowering("device_all_reduce")
def device_all_reduce(e: Emitter, op: LOp) -> list[TV]:
    xs = _on_device(e, op)
    fop, iop = ("arith.addf", "arith.addi") if op.attrs["reduction"] == "sum" else ("arith.maximumf", "arith.maxsi")
    acc = xs[0]
    for x in xs[1:]:  # operand order: ((p0 + p1) + p2) + ... on every device
        acc = binary(e, acc, x, fop, iop)
    return [acc]


@lowering("device_all_gather")
def device_all_gather(e: Emitter, op: LOp) -> list[TV]:
    xs = _on_device(e, op)
    axis = op.attrs["dim"] % xs[0].rank
    dims = list(xs[0].dims)
    dims[axis] = e.add_dims([x.dims[axis] for x in xs])
    out = TV("", tuple(dims), xs[0].dtype)
    name = e.v(f"tensor.concat dim({axis}) {', '.join(x.name for x in xs)} : "
               f"({', '.join(x.type for x in xs)}) -> {out.type}", "cat")
    return [TV(name, out.dims, out.dtype)]
