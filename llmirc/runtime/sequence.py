"""Sequence: one prompt being generated, and the block table that maps it onto KV pages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .page_pool import SCRATCH_PAGE


@dataclass
class Sequence:
    """Token ids and KV pages of one request.

    `cached_len` counts the positions whose K/V are in the pool; it lags the token count by
    one while a sampled token waits to be fed to the next decode step.
    """

    id: int
    prompt_ids: list[int]
    generated_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    cached_len: int = 0
    max_pages: int = 0  # pages reserved for this sequence's worst case at admission
    finish_reason: str | None = None  # "stop" (stop token), "length" (max_tokens or max_seq_len)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.generated_ids

    @property
    def length(self) -> int:
        """Tokens so far (prompt + generated)."""
        return len(self.prompt_ids) + len(self.generated_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def block_table_row(self, width: int) -> np.ndarray:
        """The block table as an i64 row of `width`, padded with the scratch page."""
        if width < len(self.block_table):
            raise ValueError(f"block table of sequence {self.id} has {len(self.block_table)} pages, "
                             f"more than the row width {width}")
        row = np.full(width, SCRATCH_PAGE, dtype=np.int64)
        row[: len(self.block_table)] = self.block_table
        return row


def block_tables(seqs: list[Sequence]) -> np.ndarray:
    """Stack the block tables of `seqs` into i64[B, P], P = the longest table (at least 1)."""
    width = max([1] + [len(s.block_table) for s in seqs])
    return np.stack([s.block_table_row(width) for s in seqs]) if seqs else np.zeros((0, width), np.int64)
