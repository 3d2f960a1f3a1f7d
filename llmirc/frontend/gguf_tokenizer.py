"""A GGUF file's vocabulary (`tokenizer.ggml.*`) -> tokenizer.json + tokenizer_config.json.

The runtime loads an artifact's tokenizer.json with the `tokenizers` library and adds BOS
itself when tokenizer_config.json says `add_bos_token` (api.should_add_bos), so that is what
is built here, with the `tokenizers` library's own components:

* `tokenizer.huggingface.json` present: it is the tokenizer.json, as the converter stored it.
* model `gpt2` (byte-level BPE: Llama 3, Qwen2, ...): BPE over the tokens and merges as the file
  spells them (already in the byte-level alphabet), a ByteLevel pre-tokenizer whose split regex
  follows `tokenizer.ggml.pre` (gpt2/default, llama-bpe, qwen2; another gives a warning and
  GPT-2's split), ByteLevel decoding.
* model `llama` (SentencePiece BPE: Llama 2, Mistral): BPE with byte fallback (`<0x41>` tokens)
  whose merge order comes from the scores (SentencePiece merges the pair whose result scores
  highest first; llama.cpp does the same), "▁" for spaces and a "▁" prefix unless
  `tokenizer.ggml.add_space_prefix` is false.
* Tokens of type control (3) become special added tokens, user-defined (4) plain added tokens,
  so both are matched whole in text.

Another model type (bert, t5, rwkv, ...) or no vocabulary: no tokenizer files, and one warning
line (the artifact then takes token ids: `llmirc run --prompt-ids`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONTROL, USER_DEFINED = 3, 4

# Pre-tokenizer split patterns of `tokenizer.ggml.pre` values, as the models' own tokenizer.json give them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}
GPT2_PRE = ("default", "gpt2", "gpt-2")


def tokenizer_json(meta: Mapping[str, Any], where: Path) -> tuple[str, dict, list[str]] | None:
    """(tokenizer.json text, tokenizer_config dict, warning lines), or None without a vocabulary."""
    tokens = meta.get("tokenizer.ggml.tokens")
    model = meta.get("tokenizer.ggml.model")
    if not tokens or model is None:
        return None
    warnings: list[str] = []
    if isinstance(meta.get("tokenizer.huggingface.json"), str):
        text = meta["tokenizer.huggingface.json"]
    elif model == "gpt2":
        text, warnings = _byte_level(meta, where)
    elif model == "llama":
        text = _sentencepiece(meta)
    else:
        return None
    return text, tokenizer_config(meta), warnings


def unsupported_model(meta: Mapping[str, Any]) -> str | None:
    """Why no tokenizer.json can be built (None: it can)."""
    if not meta.get("tokenizer.ggml.tokens"):
        return "it has no vocabulary (tokenizer.ggml.tokens)"
    model = meta.get("tokenizer.ggml.model")
    if isinstance(meta.get("tokenizer.huggingface.json"), str) or model in ("gpt2", "llama"):
        return None
    return f"its tokenizer.ggml.model '{model}' is not one llmirc converts (supported: gpt2, llama)"


def tokenizer_config(meta: Mapping[str, Any]) -> dict:
    """What the runtime and the chat template read: special tokens, add_bos_token, chat_template.
    llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise."""
    tokens = meta["tokenizer.ggml.tokens"]
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("unk_token", "unknown_token_id"),
                      ("pad_token", "padding_token_id")):
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is not None and 0 <= int(i) < len(tokens):
            cfg[name] = tokens[int(i)]
    default_bos = meta.get("tokenizer.ggml.model") == "llama"
    cfg["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", default_bos))
    cfg["add_eos_token"] = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if isinstance(meta.get("tokenizer.chat_template"), str):
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    return cfg


def _types(meta: Mapping[str, Any], n: int) -> list[int]:
    types = meta.get("tokenizer.ggml.token_type")
    return [int(t) for t in types] if types is not None and len(types) == n else [1] * n


def _add_tokens(tok, tokens: list[str], types: list[int]) -> None:
    """Control tokens as special (matched whole, skipped when decoding with skip_special_tokens),
    user-defined ones as plain added tokens; both keep their ids."""
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=True) for t, ty in zip(tokens, types)
                    if ty == USER_DEFINED])


def _byte_level(meta: Mapping[str, Any], where: Path) -> tuple[str, list[str]]:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = meta.get("tokenizer.ggml.pre", "default")
    warnings = []
    if pre in SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLITS[pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        if pre not in GPT2_PRE:
            warnings.append(f"{where}: tokenizer.ggml.pre '{pre}' is not one llmirc knows (known: "
                            f"{', '.join(GPT2_PRE + tuple(SPLITS))}); GPT-2's pre-tokenizer split is used, so some "
                            "texts may encode to other ids than llama.cpp gives (token ids are unaffected)")
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    _add_tokens(tok, tokens, _types(meta, len(tokens)))
    return tok.to_str(), warnings


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """SentencePiece BPE's merge order from its vocabulary: every split of a normal token into
    two tokens of the vocabulary, the pairs whose result scores highest first."""
    vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 1}
    found = []
    for piece, i in vocab.items():
        for cut in range(1, len(piece)):
            a, b = piece[:cut], piece[cut:]
            if a in vocab and b in vocab:
                found.append((-float(scores[i]), vocab[a], vocab[b], a, b))
    found.sort()
    return [(a, b) for _, _, _, a, b in found]


def _sentencepiece(meta: Mapping[str, Any]) -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens = list(meta["tokenizer.ggml.tokens"])
    scores = meta.get("tokenizer.ggml.scores")
    scores = [float(s) for s in scores] if scores is not None and len(scores) == len(tokens) else \
        [-float(i) for i in range(len(tokens))]
    types = _types(meta, len(tokens))
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    unk_token = tokens[int(unk)] if unk is not None and 0 <= int(unk) < len(tokens) else None
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(tokens, scores, types), unk_token=unk_token,
                               byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.get("tokenizer.ggml.add_space_prefix", True):
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    _add_tokens(tok, tokens, types)
    return tok.to_str()
