"""One rule for every config.json key: read (implemented), inert (known not to change
inference numerics), or unknown (one warning line each).

A key that changes numerics and that we do not implement is never silently defaulted:
`load_config` reads it and refuses any value other than the one that changes nothing
(`sliding_window` at least the compiled length, `partial_rotary_factor` 1.0,
`hidden_act` silu, ...). That is why such keys are listed under READ, not INERT.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Keys load_config (and rope.py, prequantized.py) reads for every family; each is implemented or
# refused there. A family's own keys (attention_bias, use_sliding_window, ...) are in its module.
READ = frozenset({
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
    "hidden_act", "hidden_activation", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "torch_dtype", "dtype", "quantization_config",
    # rope (rope.py): both layouts, and what refines them
    "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "original_max_position_embeddings",
    # attention span: refused until sliding-window attention exists, unless it spans the whole sequence
    "sliding_window", "layer_types",
})

_GENERATION = "a generation default; llmirc takes sampling settings with each request"
_TRAINING = "training only"
_BOOKKEEPING = "bookkeeping of the library that wrote the file"

# Keys known not to change what an inference forward pass computes, with the reason.
INERT: dict[str, str] = {
    "initializer_range": "weight initialisation, " + _TRAINING,
    "attention_dropout": "dropout is off at inference",
    "use_cache": "whether transformers keeps a KV cache; llmirc always pages one",
    "pad_token_id": "padding id; padded positions never reach a sampled token",
    "transformers_version": _BOOKKEEPING, "_name_or_path": _BOOKKEEPING, "_commit_hash": _BOOKKEEPING,
    "_attn_implementation_autoset": _BOOKKEEPING, "attn_implementation": "which attention kernel transformers "
    "runs; the same math", "_attn_implementation": "which attention kernel transformers runs; the same math",
    "torchscript": _BOOKKEEPING, "use_bfloat16": "a TPU training flag", "tokenizer_class": "tokenizer files are "
    "read from tokenizer.json", "output_attentions": "what transformers returns, not what it computes",
    "output_hidden_states": "what transformers returns, not what it computes", "return_dict": _BOOKKEEPING,
    "pruned_heads": "empty unless heads were pruned, which changes tensor shapes (checked there)",
    "tie_encoder_decoder": "encoder-decoder models only", "is_encoder_decoder": "encoder-decoder models only",
    "is_decoder": "encoder-decoder models only", "add_cross_attention": "encoder-decoder models only",
    "cross_attention_hidden_size": "encoder-decoder models only", "decoder_start_token_id": "encoder-decoder models "
    "only", "chunk_size_feed_forward": "a memory-saving chunking of the MLP; the same math",
    "finetuning_task": _TRAINING, "id2label": "classification heads only", "label2id": "classification heads only",
    "problem_type": "classification heads only", "prefix": _GENERATION, "task_specific_params": _GENERATION,
    "sep_token_id": "a tokenizer id that the causal LM never reads",
    "max_length": _GENERATION, "min_length": _GENERATION, "do_sample": _GENERATION, "early_stopping": _GENERATION,
    "num_beams": _GENERATION, "num_beam_groups": _GENERATION, "diversity_penalty": _GENERATION,
    "temperature": _GENERATION, "top_k": _GENERATION, "top_p": _GENERATION, "typical_p": _GENERATION,
    "repetition_penalty": _GENERATION, "length_penalty": _GENERATION, "no_repeat_ngram_size": _GENERATION,
    "encoder_no_repeat_ngram_size": _GENERATION, "bad_words_ids": _GENERATION,
    "num_return_sequences": _GENERATION, "output_scores": _GENERATION, "return_dict_in_generate": _GENERATION,
    "forced_bos_token_id": _GENERATION, "forced_eos_token_id": _GENERATION, "remove_invalid_values": _GENERATION,
    "exponential_decay_length_penalty": _GENERATION, "suppress_tokens": _GENERATION,
    "begin_suppress_tokens": _GENERATION, "tf_legacy_loss": _TRAINING, "torch_compile": _BOOKKEEPING,
}


def unknown_key_warnings(cfg: dict[str, Any], where: str, family_reads: frozenset[str] = frozenset(),
                         family_inert: Mapping[str, str] | None = None) -> list[str]:
    """One line per key that is neither read (here or by the family) nor known to be inert."""
    known = READ | family_reads | set(INERT) | set(family_inert or {})
    return [f"{where}: key '{k}' = {_short(v)} is not known to llmirc and was ignored; if it changes the model's "
            "numerics, the artifact will not match the checkpoint" for k, v in cfg.items() if k not in known]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
