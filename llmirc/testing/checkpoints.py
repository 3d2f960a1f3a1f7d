"""Random-weight checkpoints in the Hugging Face layout, made offline.

Tests and demos never download weights: they build a small Llama checkpoint
with a fixed seed (config.json, model.safetensors or shards + index,
tokenizer.json) that transformers' LlamaForCausalLM loads as it is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..frontend.config import ModelConfig
from ..frontend.decoder import weight_shapes

_TOKENIZER_TEXT = (
    "In the beginning the compiler read the checkpoint, and the pages of the cache were "
    "without form. And the runtime said, let there be tokens: and there were tokens. "
) * 8


@dataclass
class CheckpointSpec:
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab: int = 512
    max_seq_len: int = 256
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_embeddings: bool = False
    attention_bias: bool = False
    seed: int = 0
    shards: int = 1
    dtype: str = "float32"  # or "bfloat16", "float16"
    extra_config: dict = field(default_factory=dict)

    def hf_config(self) -> dict:
        cfg = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab, "hidden_size": self.hidden, "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": 1e-5, "rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling,
            "tie_word_embeddings": self.tie_embeddings, "attention_bias": self.attention_bias,
            "mlp_bias": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
            "torch_dtype": self.dtype, "initializer_range": 0.02,
        }
        if self.head_dim:
            cfg["head_dim"] = self.head_dim
        return cfg | self.extra_config


# Benchmark models (random weights, Llama shape). "1b" is TinyLlama-1.1B's shape:
# 22 layers x 44.0M + 2 x 65.5M embeddings/head = 1.10B parameters.
PRESETS: dict[str, CheckpointSpec] = {
    "small": CheckpointSpec(layers=4, hidden=256, heads=8, kv_heads=4, intermediate=688, vocab=2048,
                            max_seq_len=512, seed=0),
    # 12 layers x 6.29M + 2 x 8192 x 768 embeddings/head = 88.1M
    "100m": CheckpointSpec(layers=12, hidden=768, heads=12, kv_heads=4, intermediate=2048, vocab=8192,
                           max_seq_len=512, seed=0),
    "1b": CheckpointSpec(layers=22, hidden=2048, heads=32, kv_heads=4, intermediate=5632, vocab=32000,
                         max_seq_len=512, seed=0),
}


def n_params(spec: CheckpointSpec) -> int:
    return sum(int(np.prod(s)) for s in weight_shapes(_config(spec)).values())


def _config(spec: CheckpointSpec) -> ModelConfig:
    return ModelConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                       num_layers=spec.layers, num_heads=spec.heads, num_kv_heads=spec.kv_heads,
                       head_dim=spec.head_dim or spec.hidden // spec.heads, max_seq_len=spec.max_seq_len,
                       tie_word_embeddings=spec.tie_embeddings, qkv_bias=spec.attention_bias,
                       o_bias=spec.attention_bias)


def random_weights(spec: CheckpointSpec) -> dict[str, np.ndarray]:
    """Normal(0, 0.02) matrices, norms near 1, so every weight changes the output."""
    rng = np.random.default_rng(spec.seed)
    return {name: _random_tensor(rng, name, shape) for name, shape in weight_shapes(_config(spec)).items()}


def _random_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...],
                   draw: type = np.float64) -> np.ndarray:
    """One f32 weight: normal(0, 0.02) (x5 for embeddings), norms near 1; drawn in `draw`."""
    x = rng.standard_normal(shape, dtype=draw)
    if name.endswith("norm.weight"):
        return (1.0 + 0.1 * x).astype(np.float32, copy=False)
    return (0.02 * x * (5 if "embed" in name else 1)).astype(np.float32, copy=False)


def _encode(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return arr.astype(np.float16)
    if dtype == "bfloat16":  # round to nearest even, stored as uint16 bit patterns
        bits = arr.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return arr


def _save(tensors: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    save_file({k: _encode(v, dtype) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    if dtype == "bfloat16":  # safetensors.numpy writes uint16 as U16: relabel the header as BF16
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = raw[8:8 + n].rstrip().replace(b'"U16"', b'"BF16"')
        header += b" " * (-len(header) % 8)  # keep the data 8-byte aligned, as safetensors does
        path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])


def write_tokenizer(directory: Path, vocab_size: int, corpus: list[str] | None = None) -> None:
    """A byte-level BPE tokenizer.json (<unk>=0, <s>=1, </s>=2) no larger than the vocab.

    Without `corpus` it is trained on one short text (about 300 tokens: fast, and enough for
    tests); with one, to the model's whole vocabulary, so every id has text (what a benchmark
    that detokenizes in two servers needs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    size = vocab_size if corpus else min(vocab_size, 300 + 3)
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus or [_TOKENIZER_TEXT], trainer)
    # <s> first, as Llama's own tokenizer.json does: transformers 5 reads BOS from here, not
    # from tokenizer_config's add_bos_token, so both agree with the runtime on every prompt
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "add_bos_token": True, "model_max_length": 1 << 20}, indent=2))


def make_checkpoint(directory: str | Path, spec: CheckpointSpec | None = None,
                    weights: dict[str, np.ndarray] | None = None) -> Path:
    """Write a Llama checkpoint directory; returns its path."""
    spec = spec or CheckpointSpec()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = weights if weights is not None else random_weights(spec)
    (directory / "config.json").write_text(json.dumps(spec.hf_config(), indent=2))
    if spec.shards <= 1:
        _save(weights, directory / "model.safetensors", spec.dtype)
    else:
        names = list(weights)
        weight_map = {}
        for i in range(spec.shards):
            part = names[i::spec.shards]
            fname = f"model-{i + 1:05d}-of-{spec.shards:05d}.safetensors"
            _save({n: weights[n] for n in part}, directory / fname, spec.dtype)
            weight_map |= {n: fname for n in part}
        (directory / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": int(sum(w.nbytes for w in weights.values()))},
             "weight_map": weight_map}, indent=2))
    write_tokenizer(directory, spec.vocab)
    (directory / "llmirc-spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return directory


def make_large_checkpoint(directory: str | Path, spec: CheckpointSpec) -> Path:
    """An f32 model.safetensors written one tensor at a time, so a 1B model never sits in
    memory twice (make_checkpoint builds every array first). Same distributions as
    random_weights (_random_tensor), different draws."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shapes = weight_shapes(_config(spec))
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(spec.seed)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape in shapes.items():  # drawn in f32: half the memory of random_weights' f64
            f.write(_random_tensor(rng, name, shape, np.float32).tobytes())
    (directory / "config.json").write_text(json.dumps(spec.hf_config(), indent=2))
    write_tokenizer(directory, spec.vocab)
    (directory / "llmirc-spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return directory
