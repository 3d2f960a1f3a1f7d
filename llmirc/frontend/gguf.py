"""GGUF files (llama.cpp's format) as a WeightSource: config, tensors, quantized linears, tokenizer.

`llmirc compile model.gguf` reads one GGUF file the way it reads a Hugging Face directory:

* **Config.** The metadata (`general.architecture`, `{arch}.embedding_length`, ...) is mapped
  onto the config.json keys transformers would write (`gguf_config`), and that dict goes
  through the same rules as a config.json (config.config_from_dict): family choices, windows,
  rope. A key under `{arch}.` that is not read gives one warning line, as an unknown
  config.json key does. Architectures: llama, mistral (llama with `attention.sliding_window`),
  qwen2; others are refused by name.
* **Tensors.** GGUF names (`blk.0.attn_q.weight`) are mapped to Hugging Face names; GGUF
  lists dims innermost first, so numpy's order is already [out, in]. llama.cpp's converter
  permutes the rows of q and k of llama-style models for its interleaved rope
  (`LlamaModel.permute` in convert_hf_to_gguf.py: per head, rows [h0, h1, ...] become pairs
  (i, i + d/2)); `unpermute` undoes that, so the IR's rotate-half rope is right. Qwen2 uses
  rotate-half rope in llama.cpp too (NEOX) and is not permuted.
* **Types.** F32/F16/BF16 load as float. Q8_0 and Q4_0 linears are imported as the dialect's
  group-quantized weights (group 32), never dequantized: Q8_0 is int8 q with one f16 scale
  per 32 and zero 0, Q4_0 is q in 0..15 (low nibbles of a block's 16 bytes are elements
  0..15, high nibbles 16..31) with zero 8. Everything else (the K-quants, Q4_1, Q5_*, IQ*,
  and Q8_0/Q4_0 embeddings and lm_head, which the IR takes as float) is dequantized with
  `gguf.quants.dequantize`, and one warning line lists those tensors.
* **Tokenizer.** tokenizer.json (+ tokenizer_config.json) is built from `tokenizer.ggml.*`
  (gguf_tokenizer.py) and carried into the artifact like a Hugging Face one.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .checkpoint import TensorInfo, Unpacked
from .config import ModelConfig, config_from_dict
from .decoder import weight_shapes
from .gguf_format import GGUFFile, GGUFTensor, read_gguf
from .prequantized import QuantizedLinear

GROUP = 32  # the block of Q8_0 and Q4_0


@dataclass(frozen=True)
class Arch:
    """One GGUF architecture: the transformers class it is, and whether llama.cpp's converter
    permuted q/k rows for it (its interleaved "norm" rope)."""

    name: str
    hf_architecture: str
    permuted_qk: bool
    bias: str  # "detect": biases if the file has them (llama); "qkv": always q/k/v (qwen2); "none"


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("llama", "LlamaForCausalLM", True, "detect"),
    Arch("mistral", "MistralForCausalLM", True, "none"),
    Arch("qwen2", "Qwen2ForCausalLM", False, "qkv"),
)}

# GGUF tensor names -> Hugging Face names
GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}
LAYER_TENSORS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")  # the decoder's quantizable linears (embed and lm_head take float)

FLOAT_TYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
NATIVE_QUANT = {"Q8_0": 8, "Q4_0": 4}  # imported as quantized_matmul without dequantizing
INT4_OUT_MULTIPLE = 8  # the lowering's int4 needs out-features a multiple of 8 (lowering/quantized.py)

# {arch}. keys the mapping reads (others under {arch}. warn, as unknown config.json keys do)
READ_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "attention.key_length",
             "attention.value_length", "rope.freq_base", "rope.dimension_count", "rope.scaling.type",
             "rope.scaling.factor", "rope.scaling.original_context_length", "rope.scaling.yarn_beta_fast",
             "rope.scaling.yarn_beta_slow", "attention.sliding_window", "vocab_size", "expert_count",
             "expert_used_count")
INERT_KEYS = {"rope.scaling.finetuned": "a training note of the converter", "tensor_data_layout":
              "the converter's note on the q/k layout; the permutation is undone by architecture"}
CONVERT_HINT = "convert the Hugging Face checkpoint with llama.cpp's convert_hf_to_gguf.py"


def _f32(x: Any) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (1e-05, not 9.99e-06):
    config.json gives 1e-5 and the same model must build the same IR from either."""
    return float(str(np.float32(x)))


def _scalar(meta: Mapping[str, Any], key: str, where: Path, kind=int, default: Any = ...) -> Any:
    if key not in meta:
        if default is ...:
            raise CheckpointError(f"{where}: missing GGUF metadata key '{key}' (the model's shape needs it); "
                                  f"the file is incomplete: {CONVERT_HINT}")
        return default
    value = meta[key]
    if isinstance(value, (list, np.ndarray, str)) or (kind is int and isinstance(value, float)):
        raise CheckpointError(f"{where}: GGUF metadata '{key}' is {_short(value)}; llmirc reads one "
                              f"{'integer' if kind is int else 'number'} there (per-layer values are not supported)")
    return kind(value)


def _short(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def architecture(meta: Mapping[str, Any], where: Path) -> Arch:
    name = meta.get("general.architecture")
    if name is None:
        raise CheckpointError(f"{where}: missing GGUF metadata key 'general.architecture'; {CONVERT_HINT}")
    if name not in ARCHS:
        raise CheckpointError(f"{where}: GGUF architecture '{name}' is not supported (supported: "
                              f"{', '.join(ARCHS)}); compile the Hugging Face checkpoint instead if its family is "
                              "(`llmirc models`)")
    return ARCHS[name]


def _rope_scaling(meta: Mapping[str, Any], a: str, where: Path) -> dict | None:
    kind = meta.get(f"{a}.rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind not in ("linear", "yarn"):
        raise CheckpointError(f"{where}: GGUF metadata {a}.rope.scaling.type '{kind}' is not supported "
                              "(supported: none, linear, yarn)")
    rope = {"rope_type": kind, "factor": _scalar(meta, f"{a}.rope.scaling.factor", where, float)}
    if kind == "yarn":
        orig = _scalar(meta, f"{a}.rope.scaling.original_context_length", where, int, None)
        if orig:
            rope["original_max_position_embeddings"] = orig
        for key, hf in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = _scalar(meta, f"{a}.rope.scaling.{key}", where, float, None)
            if value is not None:
                rope[hf] = value
    return rope


def gguf_config(f: GGUFFile) -> tuple[dict[str, Any], list[str]]:
    """The config.json dict transformers would write for this model, and warning lines."""
    meta, where, tensors = f.metadata, f.path, f.tensors
    arch = architecture(meta, where)
    a = arch.name
    if _scalar(meta, f"{a}.expert_count", where, int, 0):
        raise CheckpointError(f"{where}: GGUF metadata {a}.expert_count {meta[f'{a}.expert_count']}: mixture-of-"
                              "experts models are not supported")
    if "rope_freqs.weight" in tensors:
        raise CheckpointError(f"{where}: tensor 'rope_freqs.weight' (llama3-style rope frequency factors) is not "
                              "supported in GGUF import yet; compile the Hugging Face checkpoint (its llama3 rope "
                              "is supported)")
    heads = _scalar(meta, f"{a}.attention.head_count", where)
    hidden = _scalar(meta, f"{a}.embedding_length", where)
    tokens = meta.get("tokenizer.ggml.tokens")
    embd = tensors.get("token_embd.weight")
    vocab = _scalar(meta, f"{a}.vocab_size", where, int, None) or (len(tokens) if tokens else None) or \
        (embd.shape[0] if embd is not None and len(embd.shape) == 2 else None)
    if vocab is None:
        raise CheckpointError(f"{where}: missing GGUF metadata key '{a}.vocab_size' (and no tokenizer.ggml.tokens "
                              "or token_embd.weight to count); " + CONVERT_HINT)
    head_dim = _scalar(meta, f"{a}.attention.key_length", where, int, None) or hidden // heads
    value_dim = _scalar(meta, f"{a}.attention.value_length", where, int, head_dim)
    if value_dim != head_dim:
        raise CheckpointError(f"{where}: GGUF metadata {a}.attention.value_length {value_dim} differs from "
                              f"key_length {head_dim}; llmirc's attention takes one head size")
    rotary = _scalar(meta, f"{a}.rope.dimension_count", where, int, head_dim)
    if rotary != head_dim:
        raise CheckpointError(f"{where}: GGUF metadata {a}.rope.dimension_count {rotary} is not the head size "
                              f"{head_dim}: partial rotary embeddings are not supported")
    cfg: dict[str, Any] = {
        "architectures": [arch.hf_architecture],
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": _scalar(meta, f"{a}.feed_forward_length", where),
        "num_hidden_layers": _scalar(meta, f"{a}.block_count", where),
        "num_attention_heads": heads,
        "num_key_value_heads": _scalar(meta, f"{a}.attention.head_count_kv", where, int, heads),
        "head_dim": head_dim,
        "max_position_embeddings": _scalar(meta, f"{a}.context_length", where),
        "rms_norm_eps": _f32(_scalar(meta, f"{a}.attention.layer_norm_rms_epsilon", where, float)),
        "rope_theta": _f32(_scalar(meta, f"{a}.rope.freq_base", where, float, 10000.0)),
        "rope_scaling": _rope_scaling(meta, a, where),
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_act": "silu",
        "torch_dtype": _torch_dtype(tensors),
    }
    window = _scalar(meta, f"{a}.attention.sliding_window", where, int, None)
    if window and a != "qwen2":  # qwen2: llama.cpp attends to every position, as transformers does by default
        cfg["architectures"] = [ARCHS["mistral"].hf_architecture]  # a llama with a window is a Mistral
        cfg["sliding_window"] = window
    if arch.bias == "detect" and cfg["architectures"] == [arch.hf_architecture]:
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensors
        cfg["mlp_bias"] = "blk.0.ffn_gate.bias" in tensors
    if meta.get("tokenizer.ggml.bos_token_id") is not None:
        cfg["bos_token_id"] = int(meta["tokenizer.ggml.bos_token_id"])
    stops = list(dict.fromkeys(int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                                      "tokenizer.ggml.eom_token_id") if k in meta))
    if stops:  # llama.cpp ends generation at any of them
        cfg["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    known = {f"{a}.{k}" for k in READ_KEYS}
    warnings = [f"{where}: GGUF metadata '{k}' = {_short(v)} is not known to llmirc and was ignored; if it changes "
                "the model's numerics, the artifact will not match the file"
                for k, v in meta.items() if k.startswith(f"{a}.") and k not in known
                and k[len(a) + 1:] not in INERT_KEYS]
    return cfg, warnings


def _torch_dtype(tensors: Mapping[str, GGUFTensor]) -> str:
    """The dtype --dtype auto keeps: F16 or BF16 when every float matrix is stored so (a
    quantized file dequantizes some tensors to f32 and stays float32)."""
    kinds = {t.type_name for t in tensors.values() if len(t.shape) == 2}
    return {frozenset({"F16"}): "float16", frozenset({"BF16"}): "bfloat16"}.get(frozenset(kinds), "float32")


def hf_name(gguf_name: str) -> str | None:
    """Hugging Face name of a GGUF tensor (None: not one the decoder reads)."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{parts[3]}"
    return None


def unpermute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation along dim 0 (rows of a weight, a bias, or the rows of
    quantized values and scales): per head, the converter reordered rows [0 .. d) as
    (0, d/2, 1, d/2 + 1, ...); this puts them back as transformers has them."""
    n = rows.shape[0]
    return np.ascontiguousarray(rows.reshape(n_heads, n // n_heads // 2, 2, *rows.shape[1:])
                                .swapaxes(1, 2).reshape(rows.shape))


def permute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows (the inverse of `unpermute`; for tests and tools)."""
    n = rows.shape[0]
    return np.ascontiguousarray(rows.reshape(n_heads, 2, n // n_heads // 2, *rows.shape[1:])
                                .swapaxes(1, 2).reshape(rows.shape))


def unpack_q8_0(raw: np.ndarray, shape: tuple[int, int]) -> Unpacked:
    """Q8_0 blocks (f16 scale, 32 x int8) of an [N, K] tensor -> values i8 [N, K], scales f32 [N, K/32], zeros 0."""
    n, k = shape
    blocks = raw.reshape(n, k // GROUP, 2 + GROUP)
    scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    values = blocks[..., 2:].copy().view(np.int8).reshape(n, k)
    return values, scales, np.zeros(scales.shape, np.int8)


def unpack_q4_0(raw: np.ndarray, shape: tuple[int, int]) -> Unpacked:
    """Q4_0 blocks (f16 scale, 16 bytes) of an [N, K] tensor -> values 0..15 as i8 [N, K],
    scales f32 [N, K/32], zeros 8: byte j holds element j in its low nibble, j + 16 in its high."""
    n, k = shape
    blocks = raw.reshape(n, k // GROUP, 2 + GROUP // 2)
    scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 2:]
    values = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8).reshape(n, k)
    return values, scales, np.full(scales.shape, 8, np.int8)


UNPACK = {"Q8_0": unpack_q8_0, "Q4_0": unpack_q4_0}


def dequantize_unpacked(values: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """(q - z) * s per group of 32, in f32: the interpreter's `llm.dequantize`."""
    n, k = values.shape
    q = values.reshape(n, -1, GROUP).astype(np.float32) - zeros[..., None].astype(np.float32)
    return (q * scales[..., None]).reshape(n, k).astype(np.float32)


class GGUFSource:
    """One GGUF file as a WeightSource (checkpoint.py): Hugging Face names, float tensors
    loaded exactly, Q8_0/Q4_0 linears as the dialect's group-quantized integers."""

    def __init__(self, f: GGUFFile, config: ModelConfig, arch: Arch):
        self.file, self.where, self.config, self.arch = f, f.path, config, arch
        self.gguf_names: dict[str, str] = {}  # HF name -> GGUF name
        unread = []
        for name in f.tensors:
            hf = hf_name(name)
            if hf is None:
                unread.append(name)
            else:
                self.gguf_names[hf] = name
        if unread:
            raise CheckpointError(f"{self.where}: tensor '{unread[0]}' is not one llmirc's {arch.name} import reads "
                                  f"({len(unread)} such tensors); it would change the model, so the file is refused")
        for kind in sorted({t.type_name for t in f.tensors.values()}):
            if not _readable(kind, f.tensors):
                name = next(n for n, t in f.tensors.items() if t.type_name == kind)
                raise CheckpointError(f"{self.where}: tensor '{name}' has GGML type {kind}, which is not a weight "
                                      "type llmirc reads (float, or a quantization gguf.quants can dequantize)")
        self.tensors: dict[str, TensorInfo] = {
            hf: TensorInfo(hf, f.path, t.type_name, t.shape, t.offset, t.nbytes)
            for hf, t in ((hf, f.tensors[g]) for hf, g in self.gguf_names.items())}
        unused = [hf for hf in self.tensors if hf not in weight_shapes(config)]
        if unused:
            raise CheckpointError(f"{self.where}: tensor '{self.gguf_names[unused[0]]}' is not part of the "
                                  f"{config.architecture} the metadata describes (a bias it does not have?); "
                                  "the file is inconsistent: " + CONVERT_HINT)
        self.tokenizer: tuple[str, dict, list[str]] | None = None  # tokenizer.json text, its config, warnings
        self._tokenizer_dir: tempfile.TemporaryDirectory | None = None

    def _gguf(self, name: str) -> GGUFTensor:
        return self.file.tensors[self.gguf_names[name]]

    def info(self, name: str, expected_shape: tuple[int, ...] | None = None) -> TensorInfo:
        if name not in self.tensors:
            gguf = next((g for g, h in ((g, hf_name(g)) for g in _gguf_candidates(name)) if h == name), name)
            raise CheckpointError(f"{self.where}: missing tensor '{gguf}' ({name}); the file is incomplete: "
                                  + CONVERT_HINT)
        t = self.tensors[name]
        if expected_shape is not None and tuple(t.shape) != tuple(expected_shape):
            raise CheckpointError(f"{self.where}: tensor '{self.gguf_names[name]}' has shape {list(t.shape)}, "
                                  f"expected {list(expected_shape)} from the GGUF metadata")
        return t

    def _heads(self, name: str) -> int | None:
        """The head count of llama.cpp's q/k permutation for this tensor, or None: not permuted."""
        if not self.arch.permuted_qk:
            return None
        if ".self_attn.q_proj." in name:
            return self.config.num_heads
        if ".self_attn.k_proj." in name:
            return self.config.num_kv_heads
        return None

    def load(self, name: str, dtype=np.float32) -> np.ndarray:
        t = self._gguf(name)
        raw = self.file.raw(t)
        if t.type_name in FLOAT_TYPES:
            value = raw.view(FLOAT_TYPES[t.type_name]).reshape(t.shape).astype(np.float32)
        elif t.type_name == "BF16":
            value = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
        elif t.type_name in UNPACK and len(t.shape) == 2:
            value = dequantize_unpacked(*UNPACK[t.type_name](raw, t.shape))
        else:
            from gguf.constants import GGMLQuantizationType
            from gguf.quants import dequantize

            value = dequantize(raw.reshape(*t.shape[:-1], -1), GGMLQuantizationType(t.type_id)).reshape(t.shape)
        heads = self._heads(name)
        if heads:
            value = unpermute(value, heads)
        return np.ascontiguousarray(value, dtype=dtype)

    @cached_property
    def quantized(self) -> dict[str, QuantizedLinear]:
        """The linears stored as Q8_0/Q4_0 (by the float weight name they replace)."""
        from ..pipelines.quantize_weights import tensor_names

        out = {}
        for name, shape in weight_shapes(self.config).items():
            t = self.file.tensors.get(self.gguf_names.get(name, ""))
            if t is None or t.type_name not in NATIVE_QUANT or tuple(t.shape) != tuple(shape) or \
                    not any(name.endswith(f".{linear}.weight") for linear in LINEARS):
                continue
            bits = NATIVE_QUANT[t.type_name]
            n, k = shape
            if bits == 4 and n % INT4_OUT_MULTIPLE:
                continue  # dequantized (listed in the notice)
            out[name] = QuantizedLinear(name.removesuffix(".weight"), n, k, bits, GROUP,
                                        tensor_names(name, bits, GROUP, False))
        return out

    def load_quantized(self, q: QuantizedLinear) -> Unpacked:
        name = q.prefix + ".weight"
        t = self._gguf(name)
        parts = UNPACK[t.type_name](self.file.raw(t), t.shape)
        heads = self._heads(name)
        return tuple(unpermute(p, heads) for p in parts) if heads else parts

    def dequantized(self) -> list[str]:
        """GGUF names of the quantized tensors that load as float (the notice lists them)."""
        return [self.gguf_names[n] for n, t in self.tensors.items()
                if t.dtype not in FLOAT_TYPES and t.dtype != "BF16" and n not in self.quantized]

    def tokenizer_files(self) -> list[Path]:
        """tokenizer.json and tokenizer_config.json built from the metadata (open_gguf), written
        to a temporary directory that lives as long as this source; none without a vocabulary."""
        if self.tokenizer is None:
            return []
        if self._tokenizer_dir is None:
            self._tokenizer_dir = tempfile.TemporaryDirectory(prefix="llmirc-gguf-tokenizer-")
            d = Path(self._tokenizer_dir.name)
            (d / "tokenizer.json").write_text(self.tokenizer[0], encoding="utf-8")
            (d / "tokenizer_config.json").write_text(json.dumps(self.tokenizer[1], indent=2, ensure_ascii=False),
                                                     encoding="utf-8")
        d = Path(self._tokenizer_dir.name)
        return [d / "tokenizer.json", d / "tokenizer_config.json"]


def _readable(kind: str, tensors: Mapping[str, GGUFTensor]) -> bool:
    """Float, Q8_0/Q4_0, or a type gguf.quants can dequantize (tried on one zero block)."""
    if kind in FLOAT_TYPES or kind == "BF16" or kind in NATIVE_QUANT:
        return True
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    t = next(t for t in tensors.values() if t.type_name == kind)
    try:
        dequantize(np.zeros((1, t.type_size), np.uint8), GGMLQuantizationType(t.type_id))
    except (NotImplementedError, ValueError, TypeError):
        return False
    return True


def _gguf_candidates(hf: str) -> list[str]:
    """GGUF names that could map to `hf` (to name a missing tensor as the file would)."""
    names = list(GLOBAL_TENSORS)
    parts = hf.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"]:
        names += [f"blk.{parts[2]}.{g}.{parts[-1]}" for g in LAYER_TENSORS]
    return names


def open_gguf(path: Path, max_seq_len: int | None = None) -> tuple[ModelConfig, GGUFSource]:
    """Read a GGUF file's config and tensor table (no tensor data yet); every problem is one
    CheckpointError naming the file."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{path}: reading GGUF files needs the `gguf` package: "
                              "pip install 'llmirc[gguf]' (or pip install gguf)") from None
    f = read_gguf(Path(path))
    cfg, warnings = gguf_config(f)
    config = config_from_dict(cfg, f.path, max_seq_len)
    source = GGUFSource(f, config, architecture(f.metadata, f.path))
    from .gguf_tokenizer import tokenizer_json, unsupported_model

    source.tokenizer = tokenizer_json(f.metadata, f.path)
    if source.tokenizer is None:
        warnings.append(f"{f.path}: no tokenizer.json in the artifact: {unsupported_model(f.metadata)}; "
                        "prompts must be given as token ids (--prompt-ids)")
    else:
        warnings += source.tokenizer[2]
    dequantized = source.dequantized()
    if dequantized:
        kinds = sorted({f.tensors[n].type_name for n in dequantized})
        warnings.append(f"{f.path}: {len(dequantized)} {'/'.join(kinds)} tensor(s) are dequantized to float "
                        f"({_list(dequantized)}): llmirc's quantized ops take Q8_0 and Q4_0 linears as they are; "
                        "the embeddings and lm_head are float in the IR")
    return dataclasses.replace(config, warnings=config.warnings + tuple(warnings)), source


def _list(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "")
