"""Pre-quantized checkpoints (GPTQ and AWQ safetensors layouts) -> the llm dialect's quantized ops.

A linear that a checkpoint stores as qweight/qzeros/scales(/g_idx) instead of `<prefix>.weight`
is imported as `llm.quantized_matmul` on the tensors quantize-weights would derive
(`<prefix>.weight.int4_g128_asym.qweight` [out, in], `.scales` f32 [out, in / group],
`.qzeros` i8 [out, in / group]), unpacked here once, exactly. Everything after the frontend
(passes, lowering, archive packing) is then the same as for `--quantize`.

Layouts, as AutoGPTQ and AutoAWQ write them (b bits, p = 32 / b values per int32, K in-features,
N out-features, G = K / group_size groups):

GPTQ   qweight int32 [K / p, N]: q[k, n] = bits b*(k % p) .. of qweight[k // p, n] (packed along in).
       qzeros  int32 [G, N / p]: z[g, n] = bits b*(n % p) .. of qzeros[g, n // p] (packed along out),
               stored minus one (checkpoint_format "gptq", AutoGPTQ's convention; "gptq_v2" stores z).
       scales  f16 [G, N]; g_idx int32 [K] = the group of in-feature k.
       w[n, k] = scales[g, n] * (q[k, n] - z[g, n]), g = g_idx[k]; q and z unsigned.
AWQ    qweight int32 [K, N / 8] (GEMM version, 4 bits): the 8 out-features 8c .. 8c+7 of int32 c,
       nibble i holding out-feature 8c + [0, 2, 4, 6, 1, 3, 5, 7][i]; qzeros int32 [G, N / 8] in the
       same order; scales f16 [G, N]; groups are contiguous (no g_idx).
       w[n, k] = scales[k // group, n] * (q[k, n] - z[k // group, n]).

Not supported (a CheckpointError says so): act-order GPTQ (a g_idx other than k // group_size:
the dialect's groups are contiguous runs of in-features), bits other than 4 and 8, AWQ GEMV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from .checkpoint import Checkpoint

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ int32 holds out-feature 8c + AWQ_ORDER[i]


@dataclass(frozen=True)
class QuantizedLinear:
    """One imported linear: the IR's tensor names and shapes, and how to unpack them."""

    prefix: str  # e.g. model.layers.0.self_attn.q_proj
    out_features: int
    in_features: int
    bits: int
    group_size: int
    names: tuple[str, str, str]  # qweight, scales, qzeros as the IR names them

    @property
    def value_dtype(self) -> str:
        return f"i{self.bits}"

    @property
    def groups(self) -> int:
        return self.in_features // self.group_size


@dataclass(frozen=True)
class PrequantizedLayout:
    method: str  # "gptq" or "awq"
    bits: int
    group_size: int  # -1: one group per row
    zeros_minus_one: bool  # GPTQ v1 stores zero - 1
    linears: dict[str, QuantizedLinear]  # by the f32 weight name it replaces (<prefix>.weight)

    def raw_shapes(self, q: QuantizedLinear) -> dict[str, tuple[int, ...]]:
        """The checkpoint tensors of one linear with the shapes the format gives them."""
        p, n, k, g = 32 // self.bits, q.out_features, q.in_features, q.groups
        if self.method == "gptq":
            return {q.prefix + ".qweight": (k // p, n), q.prefix + ".qzeros": (g, n // p),
                    q.prefix + ".scales": (g, n)}
        return {q.prefix + ".qweight": (k, n // p), q.prefix + ".qzeros": (g, n // p), q.prefix + ".scales": (g, n)}

    def unpack(self, ckpt: Checkpoint, q: QuantizedLinear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values i8 [N, K], scales f32 [N, G], zeros i8 [N, G]) of one linear, exactly."""
        raw = {name.rsplit(".", 1)[1]: ckpt.load(name, np.int32 if not name.endswith("scales") else np.float32)
               for name in self.raw_shapes(q)}
        if self.method == "gptq":
            values = unpack_rows(raw["qweight"], self.bits)  # [K, N]
            zeros = unpack_cols(raw["qzeros"], self.bits)  # [G, N]
            if self.zeros_minus_one:
                zeros = zeros + 1
        else:
            values = unpack_cols(raw["qweight"], self.bits, AWQ_ORDER)
            zeros = unpack_cols(raw["qzeros"], self.bits, AWQ_ORDER)
        if self.bits == 8:  # unsigned 0..255 -> the dialect's signed int8 (q - z is unchanged)
            values, zeros = values - 128, zeros - 128
        if zeros.min() < -128 or zeros.max() > 127:  # GPTQ v1 int8 stores zero 0 as 255 (+1 = 256)
            bad = zeros.max() if zeros.max() > 127 else zeros.min()
            raise CheckpointError(f"{ckpt.directory}: '{q.prefix}.qzeros' holds a zero point of {bad + 128}, "
                                  "outside 0..255")
        return (np.ascontiguousarray(values.T, np.int8), np.ascontiguousarray(raw["scales"].T, np.float32),
                np.ascontiguousarray(zeros.T, np.int8))

    def check_g_idx(self, ckpt: Checkpoint, q: QuantizedLinear) -> None:
        name = q.prefix + ".g_idx"
        if name not in ckpt.tensors:
            return
        g_idx = ckpt.load(name, np.int64)
        if g_idx.shape != (q.in_features,) or np.any(g_idx != np.arange(q.in_features) // q.group_size):
            raise CheckpointError(f"{ckpt.directory}: tensor '{name}' is an act-order (desc_act) permutation; "
                                  "only groups of consecutive in-features are supported: re-quantize with "
                                  "desc_act=False")


def unpack_rows(packed: np.ndarray, bits: int) -> np.ndarray:
    """int32 [R, C] holding 32/bits values along the rows -> [R * 32/bits, C], unsigned."""
    p = 32 // bits
    shifts = (bits * np.arange(p, dtype=np.uint32))[None, :, None]
    vals = (packed.astype(np.int32).view(np.uint32)[:, None, :] >> shifts) & np.uint32((1 << bits) - 1)
    return vals.reshape(-1, packed.shape[1]).astype(np.int32)


def unpack_cols(packed: np.ndarray, bits: int, order: tuple[int, ...] | None = None) -> np.ndarray:
    """int32 [R, C] holding 32/bits values along the columns -> [R, C * 32/bits], unsigned.

    `order[i]` is the column (within each int32's run) that value i holds (AWQ's interleave).
    """
    p = 32 // bits
    shifts = (bits * np.arange(p, dtype=np.uint32))[None, None, :]
    vals = (packed.astype(np.int32).view(np.uint32)[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    if order is not None:
        out = np.empty_like(vals)
        out[:, :, list(order)] = vals
        vals = out
    return vals.reshape(packed.shape[0], -1).astype(np.int32)


def detect(config, ckpt: Checkpoint, weight_shapes: dict[str, tuple[int, ...]]) -> PrequantizedLayout | None:
    """The layout of a GPTQ/AWQ checkpoint (config.json `quantization_config`), or None.

    A linear is imported quantized when the checkpoint has `<prefix>.qweight` instead of
    `<prefix>.weight` (lm_head usually stays float). Checks every tensor's shape.
    """
    from ..pipelines.quantize_weights import tensor_names

    qc = config.extra.get("quantization_config")
    if not qc:
        return None
    where = ckpt.directory / "config.json"
    method = str(qc.get("quant_method", "")).lower()
    if method not in ("gptq", "awq"):
        raise CheckpointError(f"{where}: quantization_config.quant_method '{method}' is not supported "
                              "(supported: gptq, awq)")
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    if bits not in ((4, 8) if method == "gptq" else (4,)):
        raise CheckpointError(f"{where}: {method} with {bits} bits is not supported "
                              f"(supported: {'4 and 8' if method == 'gptq' else '4'})")
    if method == "awq" and str(qc.get("version", "gemm")).lower() != "gemm":
        raise CheckpointError(f"{where}: AWQ version '{qc.get('version')}' is not supported (supported: gemm)")
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    linears: dict[str, QuantizedLinear] = {}
    for name, shape in weight_shapes.items():
        prefix = name.removesuffix(".weight")
        if len(shape) != 2 or prefix == name or prefix + ".qweight" not in ckpt.tensors:
            continue
        n, k = shape
        g = k if group == -1 else group
        if k % g or n % (32 // bits) or (method == "gptq" and k % (32 // bits)):
            raise CheckpointError(f"{ckpt.directory}: '{prefix}' of shape [{n}, {k}] does not fit {method} "
                                  f"packing with {bits} bits and group size {g}")
        linears[name] = QuantizedLinear(prefix, n, k, bits, g, tensor_names(name, bits, g, False))
    if not linears:
        raise CheckpointError(f"{where}: quantization_config says {method}, but no tensor '<layer>.qweight' exists")
    layout = PrequantizedLayout(method, bits, group, method == "gptq" and fmt != "gptq_v2", linears)
    for q in linears.values():
        for tname, tshape in layout.raw_shapes(q).items():
            ckpt.info(tname, tshape)
        if method == "gptq":
            layout.check_g_idx(ckpt, q)
    return layout
