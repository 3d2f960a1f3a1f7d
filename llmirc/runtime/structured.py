"""Structured output: a per-sequence grammar matcher that masks the logits before sampling.

llguidance does the work (it reads tokenizer.json itself, compiles a JSON schema lazily and
fills a token bitmask in microseconds; it has no dependencies). A constraint is data
(`Constraint`: json schema, json object, regex, choice or a Lark / GBNF grammar); the engine
compiles it once per request against the model's tokenizer (`GrammarCompiler`), and every
sequence of the request gets its own matcher (`SequenceGrammar`), which

- masks the logits of each step (greedy or sampled: disallowed tokens get -inf),
- consumes the sampled token, and
- says when the grammar is complete, so the engine ends the request with "stop".

An invalid schema, regex or grammar is a `SamplingError` at add time, never a hung request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sampling import SamplingError

KINDS = ("json", "json_object", "regex", "choice", "grammar")
# JSON as json.dumps writes it, with no free whitespace: a model may otherwise pad forever
# with spaces that the grammar allows (a schema's own "x-guidance" options override these).
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Constraint:
    """What the output must match. `value`: a JSON schema (dict or JSON text) for "json",
    ignored for "json_object", a regex, a list of strings for "choice", Lark or GBNF text
    for "grammar"."""

    kind: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SamplingError(f"structured output kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "choice" and (not isinstance(self.value, (list, tuple)) or not self.value
                                      or not all(isinstance(c, str) for c in self.value)):
            raise SamplingError(f"a choice constraint takes a non-empty list of strings, got {self.value!r}")
        if self.kind in ("regex", "grammar") and (not isinstance(self.value, str) or not self.value):
            raise SamplingError(f"a {self.kind} constraint takes a non-empty string, got {self.value!r}")

    def grammar(self) -> str:
        """The llguidance grammar text (not yet checked against a tokenizer)."""
        from llguidance import LLMatcher
        from llguidance.gbnf_to_lark import gbnf_to_lark  # the function (llguidance.gbnf_to_lark is its module)

        if self.kind == "json":
            schema = self.value
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except json.JSONDecodeError as e:
                    raise SamplingError(f"the JSON schema is not valid JSON: {e}") from None
            if not isinstance(schema, dict):
                raise SamplingError(f"a JSON schema must be an object, got {type(schema).__name__}")
            try:
                return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
            except ValueError as e:
                raise SamplingError(f"invalid JSON schema: {e}") from None
        if self.kind == "json_object":
            return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.value)
        if self.kind == "choice":
            return LLMatcher.grammar_from_regex("|".join(re.escape(c) for c in self.value))
        text = self.value
        if "::=" in text:  # GBNF / EBNF as llama.cpp and xgrammar write it
            try:
                text = gbnf_to_lark(text)
            except Exception as e:  # llguidance raises its own types for a malformed grammar
                raise SamplingError(f"invalid grammar: {e}") from None
        return LLMatcher.grammar_from_lark(text)


class GrammarCompiler:
    """The model's tokenizer as llguidance sees it; compiles constraints into matchers."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        """`tokenizer`: the model's `tokenizers.Tokenizer` (llguidance reads its JSON form)."""
        from copy import copy

        from llguidance import LLTokenizer

        self.vocab_size = vocab_size
        backend = copy(tokenizer)
        backend.no_padding()
        backend.no_truncation()
        self.tokenizer = LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=list(eos_token_ids) or None)

    def compile(self, constraint: Constraint) -> SequenceGrammar:
        """A fresh matcher at the start of the output; SamplingError names what is wrong."""
        from llguidance import LLMatcher

        grammar = constraint.grammar()
        error = LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise SamplingError(f"invalid {constraint.kind} constraint: {error.splitlines()[0]}")
        matcher = LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise SamplingError(f"invalid {constraint.kind} constraint: {matcher.get_error()}")
        return SequenceGrammar(matcher, self.vocab_size)


class SequenceGrammar:
    """One sequence's matcher state: mask, consume, done."""

    def __init__(self, matcher, vocab_size: int) -> None:
        from llguidance.numpy import allocate_token_bitmask

        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bitmask = allocate_token_bitmask(1, vocab_size)

    def copy(self) -> SequenceGrammar:
        return SequenceGrammar(self.matcher.deep_copy(), self.vocab_size)

    def allowed(self) -> np.ndarray:
        """bool[V]: the tokens the grammar allows next."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self.vocab_size].astype(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of logits [V] with every disallowed token at -inf."""
        return np.where(self.allowed(), logits, -np.inf).astype(np.float32)

    def consume(self, token: int) -> bool:
        """Advance past `token`; False when the matcher refuses it (it is then in an error state)."""
        return bool(self.matcher.consume_token(token))

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more (the request ends with "stop")."""
        return self.matcher.is_stopped()
