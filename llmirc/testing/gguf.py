"""Random-weight GGUF files as llama.cpp's converter writes them, made offline with `gguf`'s GGUFWriter.

The same CheckpointSpec and weights as testing/checkpoints.py's safetensors checkpoints, so a
test can compile both and compare. What llama.cpp's convert_hf_to_gguf.py does is repeated
here on purpose (independently of the importer, which must undo it):

* tensor names `token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output` (absent when tied);
* q and k rows permuted for llama.cpp's interleaved rope (`permute`, LlamaModel.permute) for
  llama-style architectures, not for qwen2;
* 1-D tensors (norms, biases) stay F32; matrices get the asked type (F32, F16, BF16, or a
  quantized one through `gguf.quants.quantize`);
* metadata `{arch}.context_length`, `.embedding_length`, ... and the vocabulary of the
  checkpoint's tokenizer.json (`tokenizer.ggml.model` gpt2, tokens, token types, merges, ids),
  padded to the model's vocabulary with `[PADn]` tokens as the converter pads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .checkpoints import CheckpointSpec, random_weights

LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}


def gguf_name(hf: str) -> str:
    if hf in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[module]}.{kind}"


def permute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: per head, rows (h0 .. h_{d/2-1}, h_{d/2} ..) interleaved in pairs."""
    return rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def encode_tensor(value: np.ndarray, qtype: str) -> tuple[np.ndarray, object | None]:
    """(array for GGUFWriter.add_tensor, raw_dtype) for one tensor stored as `qtype`."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import quantize

    value = np.ascontiguousarray(value, np.float32)
    if qtype == "F32":
        return value, None
    if qtype == "F16":
        return value.astype(np.float16), None
    t = GGMLQuantizationType[qtype]
    return quantize(value, t), t


def write_gguf(path: str | Path, spec: CheckpointSpec | None = None, weights: Mapping[str, np.ndarray] | None = None,
               qtype: str = "F32", arch: str = "llama", tokenizer: Path | None = None,
               types: Mapping[str, str] | None = None, extra_metadata: Mapping[str, object] | None = None) -> Path:
    """Write `weights` (default: random_weights(spec)) as a GGUF of `arch` with matrices in
    `qtype`; `types` overrides the type of single tensors (by Hugging Face name). `tokenizer`
    is a tokenizer.json whose vocabulary goes into the metadata."""
    from gguf import GGUFWriter

    spec = spec or CheckpointSpec()
    weights = dict(weights if weights is not None else random_weights(spec))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(path, arch)
    w.add_context_length(spec.max_seq_len)
    w.add_embedding_length(spec.hidden)
    w.add_block_count(spec.layers)
    w.add_feed_forward_length(spec.intermediate)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(spec.rope_theta)
    head_dim = spec.head_dim or spec.hidden // spec.heads
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(spec.vocab)
    if tokenizer is not None:
        _add_vocabulary(w, Path(tokenizer), spec.vocab)
    for key, value in (extra_metadata or {}).items():
        _add_value(w, key, value)
    permuted = arch in ("llama", "mistral")
    for name, value in weights.items():
        if permuted and (".q_proj." in name or ".k_proj." in name):
            value = permute(value, spec.heads if ".q_proj." in name else spec.kv_heads)
        kind = (types or {}).get(name, qtype if value.ndim == 2 else "F32")
        data, raw_dtype = encode_tensor(value, kind)
        w.add_tensor(gguf_name(name), data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add_value(w, key: str, value) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, list(value))


def _add_vocabulary(w, tokenizer_json: Path, vocab_size: int) -> None:
    """The byte-level BPE vocabulary of a tokenizer.json, as llama.cpp's converter stores it."""
    tok = json.loads(tokenizer_json.read_text())
    vocab: dict[str, int] = tok["model"]["vocab"]
    special = {t["content"]: t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [5] * vocab_size  # UNUSED, until a token takes the id
    for text, i in {**vocab, **special}.items():
        if i < vocab_size:
            tokens[i], types[i] = text, 3 if text in special else 1
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for text, setter in (("<s>", w.add_bos_token_id), ("</s>", w.add_eos_token_id), ("<unk>", w.add_unk_token_id)):
        if text in special:
            setter(special[text])
    w.add_add_bos_token(True)
