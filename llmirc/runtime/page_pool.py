"""PagePool: host-side bookkeeping of which KV pages of the device pool are in use.

The device buffer itself is owned by the Engine; this class only hands out page indices.
Page 0 is the scratch page of the ABI (padding writes land there), so it is never handed
out. Reference counts let several sequences share the pages of a common prefix: a page
returns to the free list when its last holder releases it.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmirc.errors import PoolExhaustedError

SCRATCH_PAGE = 0


class PagePool:
    """Free list + reference counts over pages 1 .. num_pages-1."""

    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages < 2:
            raise ValueError(f"num_pages must be at least 2 (page 0 is scratch), got {num_pages}")
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        # Pop from the end, so low page numbers go out first (easier to read in traces).
        self._free: list[int] = list(range(num_pages - 1, SCRATCH_PAGE, -1))
        self._refs: list[int] = [0] * num_pages

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def capacity(self) -> int:
        """Pages a sequence can ever get (all but the scratch page)."""
        return self.num_pages - 1

    def pages_for(self, num_tokens: int) -> int:
        """Pages needed to hold `num_tokens` KV slots."""
        return -(-num_tokens // self.page_size)

    def allocate(self, n: int) -> list[int]:
        """Take `n` free pages (reference count 1 each), all or none."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            raise PoolExhaustedError(
                f"KV page pool exhausted: need {n} page(s) of {self.page_size} tokens but only "
                f"{len(self._free)} of {self.capacity} are free; raise --num-pages (now {self.num_pages}), "
                "or use fewer or shorter prompts / a smaller max_tokens")
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._refs[p] = 1
        return pages

    def retain(self, pages: Iterable[int]) -> None:
        """Add a holder to pages already in use (prefix sharing)."""
        pages = list(pages)
        for p in pages:
            self._check_live(p, "retain")
        for p in pages:
            self._refs[p] += 1

    def release(self, pages: Iterable[int]) -> None:
        """Drop a holder; a page whose count reaches 0 becomes free again."""
        pages = list(pages)
        for p in pages:
            self._check_live(p, "release")
        for p in pages:
            self._refs[p] -= 1
            if self._refs[p] == 0:
                self._free.append(p)

    def ref_count(self, page: int) -> int:
        return self._refs[page]

    def _check_live(self, page: int, what: str) -> None:
        if not 0 < page < self.num_pages:
            raise ValueError(f"cannot {what} page {page}: valid pages are 1..{self.num_pages - 1}")
        if self._refs[page] == 0:
            raise ValueError(f"cannot {what} page {page}: it is not allocated")
