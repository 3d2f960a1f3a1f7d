"""PagePool: scratch page never handed out, all-or-nothing allocation, reference counts."""

import numpy as np
import pytest

from llmirc.errors import PoolExhaustedError
from llmirc.runtime.page_pool import PagePool
from llmirc.runtime.sampling import SamplingParams
from llmirc.runtime.scheduler import Sequence, block_tables


def test_allocates_every_page_but_scratch():
    pool = PagePool(num_pages=6, page_size=4)
    pages = pool.allocate(5)
    assert sorted(pages) == [1, 2, 3, 4, 5]
    assert pool.free_pages == 0
    assert all(pool.ref_count(p) == 1 for p in pages)


def test_exhausted_is_all_or_nothing_with_a_clear_message():
    pool = PagePool(num_pages=5, page_size=16)
    pool.allocate(3)
    with pytest.raises(PoolExhaustedError) as e:
        pool.allocate(2)
    msg = str(e.value)
    assert "need 2 page(s)" in msg and "only 1 of 4 are free" in msg and "--num-pages" in msg
    assert pool.free_pages == 1  # nothing was taken by the failed request


def test_release_returns_pages_for_reuse():
    pool = PagePool(num_pages=4, page_size=4)
    a = pool.allocate(2)
    pool.release(a)
    assert pool.free_pages == 3
    assert sorted(pool.allocate(3)) == [1, 2, 3]


def test_shared_prefix_page_is_freed_by_its_last_holder():
    pool = PagePool(num_pages=4, page_size=4)
    prefix = pool.allocate(1)
    pool.retain(prefix)  # a second sequence shares the prefix page
    assert pool.ref_count(prefix[0]) == 2
    pool.release(prefix)
    assert pool.free_pages == 2 and pool.ref_count(prefix[0]) == 1
    pool.release(prefix)
    assert pool.free_pages == 3 and pool.ref_count(prefix[0]) == 0


@pytest.mark.parametrize("page", [0, 3, 99])
def test_release_of_a_page_not_held_is_refused(page):
    pool = PagePool(num_pages=4, page_size=4)
    pool.allocate(1)  # page 1
    with pytest.raises(ValueError, match=f"page {page}"):
        pool.release([page])
    assert pool.free_pages == 2


def test_double_release_is_refused():
    pool = PagePool(num_pages=4, page_size=4)
    a = pool.allocate(1)
    pool.release(a)
    with pytest.raises(ValueError, match="not allocated"):
        pool.release(a)


def test_pages_for_rounds_up():
    pool = PagePool(num_pages=4, page_size=4)
    assert [pool.pages_for(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_block_tables_are_padded_with_the_scratch_page():
    a = Sequence("a", 0, [1, 2, 3], SamplingParams(), block_table=[5, 2])
    b = Sequence("b", 0, [4], SamplingParams(), block_table=[7])
    table = block_tables([a, b])
    assert table.dtype == np.int64
    assert table.tolist() == [[5, 2], [7, 0]]
    assert block_tables([]).shape == (0, 1)
