"""A fake executor that follows docs/abi.md's paged-KV contract on token ids instead of K/V.

Its "pool" is i64[num_pages, page_size] of token ids (-1 = never written). `extend` and
`decode` write each new token into the page and slot the block table names for its
position, then compute the logits of a position from the token sequence they READ BACK
through the block table for positions 0..p. So a wrong table, a shared page overwritten, a
bad cache hit or a wrong position after preemption changes the tokens, exactly as it would
on the device. The logits are a deterministic function of that sequence (`fake_logits`),
which `reference_greedy` uses to say what a request alone must produce.
"""

from __future__ import annotations

import hashlib

import numpy as np

VOCAB = 40


def fake_logits(tokens, vocab: int = VOCAB) -> np.ndarray:
    """f32[V] logits determined by the whole token sequence (a stable hash seeds them)."""
    digest = hashlib.blake2b(np.asarray(tokens, np.int64).tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return (rng.standard_normal(vocab) * 3.0).astype(np.float32)


def reference_greedy(prompt: list[int], max_tokens: int, max_seq_len: int = 10**9,
                     stop_ids: tuple[int, ...] = ()) -> tuple[list[int], str]:
    """What a greedy request alone produces: argmax of fake_logits, stop token included."""
    seq, out = list(prompt), []
    while True:
        t = int(np.argmax(fake_logits(seq)))
        seq.append(t)
        out.append(t)
        if t in stop_ids:
            return out, "stop"
        if len(out) >= max_tokens or len(seq) >= max_seq_len:
            return out, "length"


class FakeExecutor:
    """page_size/num_pages/max_seq_len/vocab_size plus ABI v2 `extend` and v1 `decode`.

    `page_pool` (set by a test to the engine's PagePool) makes every write check that the
    page is held by exactly one owner: a shared page must never be written.
    """

    def __init__(self, num_pages: int, page_size: int = 4, max_seq_len: int = 64, vocab_size: int = VOCAB) -> None:
        self.num_pages, self.page_size, self.max_seq_len, self.vocab_size = num_pages, page_size, max_seq_len, vocab_size
        self.pool = np.full((num_pages, page_size), -1, np.int64)
        self.page_pool = None
        self.calls: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # kind, tokens, start, lens, tables
        self.tokens_computed = 0

    def extend(self, tokens: np.ndarray, start_pos: np.ndarray, new_lens: np.ndarray, block_tables: np.ndarray,
               all_logits: bool = False) -> np.ndarray:
        tokens, start_pos, new_lens, block_tables = (np.asarray(x) for x in (tokens, start_pos, new_lens, block_tables))
        b, t = tokens.shape
        assert tokens.dtype == np.int64 and start_pos.shape == new_lens.shape == (b,) and block_tables.shape[0] == b
        assert block_tables.dtype == np.int64 and np.all(new_lens >= 1) and np.all(new_lens <= t)
        self.calls.append(("extend", tokens.copy(), start_pos.copy(), new_lens.copy(), block_tables.copy()))
        return self._run(tokens, start_pos, new_lens, block_tables, all_logits)

    def _run(self, tokens, start_pos, new_lens, block_tables, all_logits: bool) -> np.ndarray:
        b, t = tokens.shape
        out = np.zeros((b, t, self.vocab_size) if all_logits else (b, self.vocab_size), np.float32)
        for r in range(b):
            for j in range(int(new_lens[r])):
                self._write(block_tables[r], int(start_pos[r]) + j, int(tokens[r, j]))
        for r in range(b):
            n, s = int(new_lens[r]), int(start_pos[r])
            if all_logits:
                for j in range(n):
                    out[r, j] = fake_logits(self._read(block_tables[r], s + j + 1), self.vocab_size)
            else:
                out[r] = fake_logits(self._read(block_tables[r], s + n), self.vocab_size)
        return out

    def decode(self, tokens: np.ndarray, positions: np.ndarray, block_tables: np.ndarray) -> np.ndarray:
        tokens, positions, block_tables = (np.asarray(x) for x in (tokens, positions, block_tables))
        assert tokens.ndim == 1 and positions.shape == tokens.shape and block_tables.shape[0] == len(tokens)
        self.calls.append(("decode", tokens[:, None].copy(), positions.copy(), np.ones_like(positions),
                           block_tables.copy()))
        for r in range(len(tokens)):
            self._write(block_tables[r], int(positions[r]), int(tokens[r]))
        return np.stack([fake_logits(self._read(block_tables[r], int(positions[r]) + 1), self.vocab_size)
                         for r in range(len(tokens))]) if len(tokens) else np.zeros((0, self.vocab_size), np.float32)

    def _write(self, table: np.ndarray, pos: int, token: int) -> None:
        assert 0 <= pos < self.max_seq_len, f"position {pos} outside the model's {self.max_seq_len}"
        assert 0 <= token < self.vocab_size
        page = int(table[pos // self.page_size])
        assert page != 0, f"a valid token at position {pos} would be written to the scratch page"
        if self.page_pool is not None:
            assert self.page_pool.ref_count(page) == 1, f"page {page} is shared but written (position {pos})"
        self.pool[page, pos % self.page_size] = token
        self.tokens_computed += 1

    def _read(self, table: np.ndarray, length: int) -> list[int]:
        pos = np.arange(length)
        pages = table[pos // self.page_size]
        assert np.all(pages != 0), "attention read through the scratch page"
        seq = self.pool[pages, pos % self.page_size]
        assert np.all(seq >= 0), "attention read a slot that was never written"
        return seq.tolist()


class V1FakeExecutor(FakeExecutor):
    """The same model with only ABI v1 entry points: `prefill` (from position 0) and `decode`."""

    extend = None  # type: ignore[assignment]

    def prefill(self, tokens: np.ndarray, seq_lens: np.ndarray, block_tables: np.ndarray) -> np.ndarray:
        self.calls.append(("prefill", tokens.copy(), np.zeros_like(seq_lens), seq_lens.copy(), block_tables.copy()))
        return self._run(tokens, np.zeros_like(seq_lens), seq_lens, block_tables, False)
