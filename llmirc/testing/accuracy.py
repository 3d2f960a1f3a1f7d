"""Teacher-forced accuracy of a compiled or interpreted model on a fixed text.

Every position of the text is fed its true previous tokens (prefill of the first token, then
one decode step per token), and the model's next-token logits are kept. Two variants of a
model (f32 and quantized) are compared by the share of positions where their top-1
predictions agree, and each by its perplexity on the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# Genesis 1, King James Version (public domain): the fixed text of docs/quantization.md.
GENESIS_1 = """In the beginning God created the heaven and the earth. And the earth was without form, and void; \
and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, \
Let there be light: and there was light. And God saw the light, that it was good: and God divided the light from \
the darkness. And God called the light Day, and the darkness he called Night. And the evening and the morning were \
the first day. And God said, Let there be a firmament in the midst of the waters, and let it divide the waters from \
the waters. And God made the firmament, and divided the waters which were under the firmament from the waters which \
were above the firmament: and it was so. And God called the firmament Heaven. And the evening and the morning were \
the second day. And God said, Let the waters under the heaven be gathered together unto one place, and let the dry \
land appear: and it was so. And God called the dry land Earth; and the gathering together of the waters called he \
Seas: and God saw that it was good. And God said, Let the earth bring forth grass, the herb yielding seed, and the \
fruit tree yielding fruit after his kind, whose seed is in itself, upon the earth: and it was so. And the earth \
brought forth grass, and herb yielding seed after his kind, and the tree yielding fruit, whose seed was in itself, \
after his kind: and God saw that it was good. And the evening and the morning were the third day. And God said, Let \
there be lights in the firmament of the heaven to divide the day from the night; and let them be for signs, and for \
seasons, and for days, and years: And let them be for lights in the firmament of the heaven to give light upon the \
earth: and it was so. And God made two great lights; the greater light to rule the day, and the lesser light to \
rule the night: he made the stars also. And God set them in the firmament of the heaven to give light upon the \
earth, And to rule over the day and over the night, and to divide the light from the darkness: and God saw that it \
was good. And the evening and the morning were the fourth day. And God said, Let the waters bring forth abundantly \
the moving creature that hath life, and fowl that may fly above the earth in the open firmament of heaven. And God \
created great whales, and every living creature that moveth, which the waters brought forth abundantly, after their \
kind, and every winged fowl after his kind: and God saw that it was good. And God blessed them, saying, Be fruitful, \
and multiply, and fill the waters in the seas, and let fowl multiply in the earth. And the evening and the morning \
were the fifth day. And God said, Let the earth bring forth the living creature after his kind, cattle, and \
creeping thing, and beast of the earth after his kind: and it was so. And God made the beast of the earth after his \
kind, and cattle after their kind, and every thing that creepeth upon the earth after his kind: and God saw that it \
was good. And God said, Let us make man in our image, after our likeness: and let them have dominion over the fish \
of the sea, and over the fowl of the air, and over the cattle, and over all the earth, and over every creeping thing \
that creepeth upon the earth. So God created man in his own image, in the image of God created he him; male and \
female created he them. And God blessed them, and God said unto them, Be fruitful, and multiply, and replenish the \
earth, and subdue it: and have dominion over the fish of the sea, and over the fowl of the air, and over every \
living thing that moveth upon the earth. And God said, Behold, I have given you every herb bearing seed, which is \
upon the face of all the earth, and every tree, in the which is the fruit of a tree yielding seed; to you it shall \
be for meat. And to every beast of the earth, and to every fowl of the air, and to every thing that creepeth upon \
the earth, wherein there is life, I have given every green herb for meat: and it was so. And God saw every thing \
that he had made, and, behold, it was very good. And the evening and the morning were the sixth day."""

# step(kind, tokens, position) -> next-token logits [V]; kind is "prefill" (tokens: the first one) or "decode".
Step = Callable[[str, int, int], np.ndarray]


def windows(ids: Sequence[int], bos: int, length: int) -> list[list[int]]:
    """The text's token ids cut into windows of at most `length` tokens, each led by BOS."""
    body = list(ids)
    n = length - 1
    return [[bos] + body[i:i + n] for i in range(0, len(body), n) if len(body[i:i + n]) > 1]


def teacher_forced(step_factory: Callable[[], Step], windows_: list[list[int]]) -> np.ndarray:
    """[positions, V] logits of every next-token prediction over all windows."""
    out = []
    for w in windows_:
        step = step_factory()  # a fresh KV cache per window
        logits = step("prefill", w[0], 0)
        out.append(logits)
        for pos in range(1, len(w) - 1):
            logits = step("decode", w[pos], pos)
            out.append(logits)
    return np.stack(out)


def targets(windows_: list[list[int]]) -> np.ndarray:
    return np.array([t for w in windows_ for t in w[1:]])


@dataclass
class Scores:
    positions: int
    agreement: float  # share of positions whose top-1 equals the reference's
    perplexity: float
    reference_perplexity: float

    @property
    def perplexity_delta(self) -> float:
        return self.perplexity - self.reference_perplexity


def perplexity(logits: np.ndarray, target: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(target)), target].mean()))


def compare(reference: np.ndarray, other: np.ndarray, target: np.ndarray) -> Scores:
    agree = float((reference.argmax(-1) == other.argmax(-1)).mean())
    return Scores(len(target), agree, perplexity(other, target), perplexity(reference, target))


# ---- the two ways to run a model -------------------------------------------------------------

def interpreter_steps(module, weights, num_pages: int = 64) -> Callable[[], Step]:
    """Steps through the numpy interpreter on paged llm IR (batch 1, pages 1..num_pages-1)."""
    from llmirc.dialect.context import functions
    from llmirc.dialect.interpreter import empty_page_pool, run_function
    from llmirc.dialect.types import from_mlir

    pool_t = from_mlir(functions(module)["prefill"].regions[0].blocks[0].arguments[3].type)
    table = np.arange(1, num_pages, dtype=np.int64)[None]

    def factory() -> Step:
        state = {"pool": empty_page_pool(pool_t, num_pages)}

        def step(kind: str, token: int, pos: int) -> np.ndarray:
            if kind == "prefill":
                args = [np.array([[token]]), np.array([1])]
            else:
                args = [np.array([token]), np.array([pos])]
            logits, state["pool"] = run_function(module, kind, args + [table, state["pool"]], weights)
            return logits[0]

        return step

    return factory


def engine_steps(artifact: str | Path, num_pages: int = 64) -> Callable[[], Step]:
    """Steps through a compiled artifact (one Engine; each window rewrites the same pages)."""
    from llmirc.runtime import Engine

    engine = Engine(artifact, num_pages=num_pages)
    table = np.arange(1, num_pages, dtype=np.int64)[None]

    def factory() -> Step:
        def step(kind: str, token: int, pos: int) -> np.ndarray:
            if kind == "prefill":
                return engine.prefill(np.array([[token]]), np.array([1]), table)[0]
            return engine.decode(np.array([token]), np.array([pos]), table)[0]

        return step

    return factory
