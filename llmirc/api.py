"""Python API: `llmirc.load(artifact_dir)` -> Model, and `Model.generate(prompts)`.

    model = llmirc.load("out/tiny")
    [c.text for c in model.generate(["Once upon a time"], max_tokens=20)]
    for ev in model.generate(["Hi"], stream=True): print(ev.text, end="")
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterator, Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmirc.errors import ArtifactError
from llmirc.runtime.engine import Engine
from llmirc.runtime.generator import Generator
from llmirc.runtime.sampling import SamplingError, SamplingParams
from llmirc.runtime.stop import StopStringMatcher

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Families whose Hugging Face tokenizers prepend BOS unless tokenizer_config says otherwise.
BOS_BY_DEFAULT = ("Llama", "Mistral", "Mixtral", "Gemma")


@dataclass(frozen=True)
class Completion:
    """The result for one prompt: generated ids (a stop token included), text if a tokenizer
    is present (special tokens skipped; it ends before a stop string), why it ended ("stop":
    stop token or string, or "length": max_tokens or the model's max_seq_len) and the prompt's
    length in tokens."""

    index: int
    token_ids: list[int]
    text: str | None
    finish_reason: str
    prompt_tokens: int = 0


@dataclass(frozen=True)
class StreamEvent:
    """One generated token; `text` is the text it completes ('' when none yet or no tokenizer)."""

    index: int
    token_id: int
    text: str
    finish_reason: str | None


class Model:
    """A loaded artifact: engine, generator and (optional) tokenizer."""

    def __init__(self, engine: Engine, tokenizer: Any | None = None, add_bos: bool = False) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.generator = Generator(engine)

    @property
    def manifest(self):
        return self.engine.manifest

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with BOS prepended when the model expects it."""
        if self.tokenizer is None:
            raise ArtifactError(f"{self.engine.artifact_dir} has no {TOKENIZER_FILE}; pass token ids instead of text")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.manifest.model.bos_token_id
        if self.add_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    def decode(self, ids: Seq[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompts: Seq[str] | Seq[Seq[int]] | str, max_tokens: int = 16, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stream: bool = False,
                 stop_token_ids: Seq[int] | None = None, repetition_penalty: float = 1.0,
                 stop: Seq[str] | str | None = None) -> list[Completion] | Iterator[StreamEvent]:
        """Generate for each prompt (text or token ids; a single one may be passed bare).

        temperature 0 is greedy. stop_token_ids None stops on the manifest's eos ids; `stop`
        strings end a sequence too, and its text stops before them (runtime/stop.py).
        stream=False returns one Completion per prompt, in prompt order; stream=True returns
        an iterator of StreamEvents in the order tokens are produced. `self.generator.stats`
        has the token counts and timing once the generation is consumed.
        """
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                max_tokens=max_tokens,
                                stop_token_ids=None if stop_token_ids is None else tuple(stop_token_ids),
                                repetition_penalty=repetition_penalty, stop=stops)
        if stops and self.tokenizer is None:
            raise SamplingError(f"stop strings need text, but {self.engine.artifact_dir} has no {TOKENIZER_FILE}; "
                                "use stop_token_ids")
        ids = [self.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in _as_prompt_list(prompts)]
        texts = [_TextStream(self.tokenizer, stops, p) for p in ids]
        events = self.generator.generate(ids, params,  # validates now
                                         text_stop=(lambda i, tok: texts[i].stopped_after(tok)) if stops else None)
        if stream:
            return self._stream(events, texts)
        return self._collect(self._stream(events, texts), [len(p) for p in ids], bool(stops))

    def _collect(self, events: Iterator[StreamEvent], prompt_lens: list[int], stops: bool) -> list[Completion]:
        n = len(prompt_lens)
        outs: list[list[int]] = [[] for _ in range(n)]
        pieces: list[list[str]] = [[] for _ in range(n)]
        reasons: list[str] = [""] * n
        for ev in events:
            outs[ev.index].append(ev.token_id)
            pieces[ev.index].append(ev.text)
            reasons[ev.index] = ev.finish_reason or ""
        # Without stop strings the whole-sequence decode (what transformers' decode gives);
        # with them, the streamed text, which ends before the stop string.
        return [Completion(i, outs[i], "".join(pieces[i]) if stops else self.decode(outs[i]), reasons[i],
                           prompt_lens[i]) for i in range(n)]

    def _stream(self, events, texts: list[_TextStream]) -> Iterator[StreamEvent]:
        for ev in events:
            t = texts[ev.seq_index]
            piece = t.last if t.stops else t.step(ev.token_id)
            if ev.finish_reason is not None:
                piece += t.flush()
            yield StreamEvent(ev.seq_index, ev.token_id, piece, ev.finish_reason)


def load(artifact_dir: str | Path, num_pages: int | None = None, device: str | None = None) -> Model:
    """Load an artifact written by `llmirc compile` onto its device (or `device`)."""
    engine = Engine(artifact_dir, num_pages=num_pages, device=device)
    root = Path(artifact_dir)
    tokenizer = None
    if (root / TOKENIZER_FILE).is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(root / TOKENIZER_FILE))
        except Exception as e:  # the tokenizers library raises its own Exception subclass
            raise ArtifactError(f"{root / TOKENIZER_FILE} cannot be read by `tokenizers` ({e}); "
                                "re-run `llmirc compile` to rebuild the artifact") from None
    return Model(engine, tokenizer, add_bos=should_add_bos(engine.manifest, _read_json(root / TOKENIZER_CONFIG_FILE)))


def should_add_bos(manifest, tokenizer_config: dict[str, Any]) -> bool:
    """Follow tokenizer_config's add_bos_token; without it, Llama-family models add BOS."""
    if manifest.model.bos_token_id is None:
        return False
    if "add_bos_token" in tokenizer_config:
        return bool(tokenizer_config["add_bos_token"])
    return manifest.model.architecture.startswith(BOS_BY_DEFAULT)


class _TextStream:
    """Incremental detokenizer: text pieces that are complete UTF-8 as tokens arrive, with
    the tail that may begin a stop string held back (runtime/stop.py).

    With stop strings, the generator calls `step` (through `text_stop`) before the token's
    event is emitted; the event then shows `last`, the piece that step released."""

    def __init__(self, tokenizer: Any | None, stops: tuple[str, ...] = (), prompt: Seq[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.matcher = StopStringMatcher(stops)
        self.last = ""
        if tokenizer is not None:
            from tokenizers.decoders import DecodeStream

            # Started on the prompt, so the first piece is decoded in context: a tokenizer
            # that drops a word's leading space at the start of a text (Metaspace) keeps it
            # here, and `llmirc run` can print prompt + pieces as one text.
            self._stream = DecodeStream(ids=list(prompt), skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        """The piece that is safe to show now (also kept as `last`)."""
        piece = "" if self.tokenizer is None else self._stream.step(self.tokenizer, token_id) or ""
        self.last = self.matcher.feed(piece) if self.stops else piece
        return self.last

    def stopped_after(self, token_id: int) -> bool:
        """`step`, then whether a stop string is complete (the generator's text_stop)."""
        self.step(token_id)
        return self.matcher.stopped

    def flush(self) -> str:
        return self.matcher.flush()


def _as_prompt_list(prompts: Any) -> list:
    """A bare string or a flat list of ints is one prompt."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, numbers.Integral) for t in prompts):
        return [prompts]
    return prompts


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{path} is not valid JSON; re-run `llmirc compile` to rebuild the artifact") from None
    return data if isinstance(data, dict) else {}
