"""Small GPTQ and AWQ checkpoints with known integers, made offline.

The packers follow AutoGPTQ's `QuantLinear.pack` and AutoAWQ's `WQLinear_GEMM.from_linear`
loop by loop (written independently of the frontend's vectorised unpacking, which the tests
check against them): known integers go in, and the import must give the same integers back.

    ckpt, ints = make_prequantized_checkpoint(dir, CheckpointSpec(), method="gptq", bits=4, group_size=32)
    ints["model.layers.0.mlp.up_proj"] == (values [N, K], zeros [N, G], scales f16 [N, G])
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from .checkpoints import CheckpointSpec, _config, random_weights, write_tokenizer
from ..frontend.decoder import weight_shapes

AWQ_ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def quantize_unsigned(w: np.ndarray, bits: int, group_size: int, sym: bool):
    """GPTQ/AWQ-style unsigned integers of a [N, K] weight: (values, zeros, scales f16), [N, K] / [N, G].

    Scales are rounded to f16 first (as the formats store them) and the values computed with them.
    """
    n, k = w.shape
    hi = (1 << bits) - 1
    wg = w.reshape(n, k // group_size, group_size).astype(np.float32)
    if sym:
        scale = np.abs(wg).max(-1) * 2 / hi
        zero = np.full(scale.shape, (hi + 1) // 2, np.int64)
    else:
        mn, mx = np.minimum(wg.min(-1), 0), np.maximum(wg.max(-1), 0)
        scale = (mx - mn) / hi
    scale = np.where(scale == 0, 1, scale).astype(np.float16)
    s32 = scale.astype(np.float32)
    if not sym:
        zero = np.clip(np.round(-mn / s32), 0, hi).astype(np.int64)
    q = np.clip(np.round(wg / s32[..., None]) + zero[..., None], 0, hi).astype(np.int64)
    return q.reshape(n, k), zero, scale


def pack_gptq(values: np.ndarray, zeros: np.ndarray, scales: np.ndarray, bits: int, group_size: int,
              zeros_minus_one: bool = True) -> dict[str, np.ndarray]:
    """AutoGPTQ's layout: qweight [K*b/32, N] (packed along in), qzeros [G, N*b/32] (along out)."""
    intweight = values.T.astype(np.uint32)  # [K, N]
    per = 32 // bits
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        for j in range(i, i + per):
            qweight[row] |= intweight[j] << np.uint32(bits * (j - i))
        i += per
        row += 1
    z = zeros.T.astype(np.int64) - (1 if zeros_minus_one else 0)  # [G, N]
    z = (z & ((1 << bits) - 1)).astype(np.uint32)
    qzeros = np.zeros((z.shape[0], z.shape[1] // 32 * bits), dtype=np.uint32)
    i = col = 0
    while col < qzeros.shape[1]:
        for j in range(i, i + per):
            qzeros[:, col] |= z[:, j] << np.uint32(bits * (j - i))
        i += per
        col += 1
    k = values.shape[1]
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32),
            "scales": np.ascontiguousarray(scales.T.astype(np.float16)),
            "g_idx": (np.arange(k) // group_size).astype(np.int32)}


def pack_awq(values: np.ndarray, zeros: np.ndarray, scales: np.ndarray, bits: int = 4) -> dict[str, np.ndarray]:
    """AutoAWQ's GEMM layout: qweight [K, N*b/32] and qzeros [G, N*b/32], packed along out in
    the order [0, 2, 4, 6, 1, 3, 5, 7]."""
    assert bits == 4
    pack_num = 32 // bits
    intweight = values.T.astype(np.uint32)  # [K, N]
    qweight = np.zeros((intweight.shape[0], intweight.shape[1] // 32 * bits), dtype=np.uint32)
    for col in range(intweight.shape[1] // pack_num):
        for i in range(pack_num):
            qweight[:, col] |= intweight[:, col * pack_num + AWQ_ORDER_MAP[i]] << np.uint32(i * bits)
    z = zeros.T.astype(np.uint32)  # [G, N]
    qzeros = np.zeros((z.shape[0], z.shape[1] // 32 * bits), dtype=np.uint32)
    for col in range(z.shape[1] // pack_num):
        for i in range(pack_num):
            qzeros[:, col] |= z[:, col * pack_num + AWQ_ORDER_MAP[i]] << np.uint32(i * bits)
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32),
            "scales": np.ascontiguousarray(scales.T.astype(np.float16))}


def make_prequantized_checkpoint(directory: str | Path, spec: CheckpointSpec | None = None, method: str = "gptq",
                                 bits: int = 4, group_size: int = 32, sym: bool = False,
                                 checkpoint_format: str = "gptq") -> tuple[Path, dict]:
    """A random Llama whose decoder linears are stored GPTQ- or AWQ-packed (lm_head and
    embeddings float). Returns the directory and, per linear prefix, its known
    (values [N, K], zeros [N, G], scales f16 [N, G])."""
    spec = spec or CheckpointSpec()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dense = random_weights(spec)
    tensors: dict[str, np.ndarray] = {}
    ints: dict[str, tuple] = {}
    for name in weight_shapes(_config(spec)):
        prefix = name.removesuffix(".weight")
        if not prefix.endswith(LINEARS):
            tensors[name] = dense[name]
            continue
        values, zeros, scales = quantize_unsigned(dense[name], bits, group_size, sym)
        ints[prefix] = (values, zeros, scales)
        packed = pack_gptq(values, zeros, scales, bits, group_size, checkpoint_format == "gptq") \
            if method == "gptq" else pack_awq(values, zeros, scales, bits)
        tensors |= {f"{prefix}.{k}": v for k, v in packed.items()}
    config = spec.hf_config()
    if method == "gptq":
        config["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": group_size,
                                         "desc_act": False, "sym": sym, "checkpoint_format": checkpoint_format}
    else:
        config["quantization_config"] = {"quant_method": "awq", "bits": bits, "group_size": group_size,
                                         "zero_point": True, "version": "gemm"}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(directory, spec.vocab)
    return directory, ints


def dequantized_weights(spec: CheckpointSpec, ints: dict) -> dict[str, np.ndarray]:
    """The f32 weights a prequantized checkpoint stands for: (q - z) * s, other tensors as made."""
    dense = random_weights(spec)
    for prefix, (values, zeros, scales) in ints.items():
        n, k = values.shape
        g = k // zeros.shape[1]
        qg = values.reshape(n, -1, g).astype(np.float32) - zeros[..., None].astype(np.float32)
        dense[prefix + ".weight"] = (qg * scales.astype(np.float32)[..., None]).reshape(n, k).astype(np.float32)
    return dense
