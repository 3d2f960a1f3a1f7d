"""PrefixCache: full pages only, keyed by tokens and parent, own page references, LRU leaves."""

import pytest

from llmirc.runtime.page_pool import PagePool
from llmirc.runtime.prefix_cache import PrefixCache

PS = 4


def cached_request(cache: PrefixCache, pool: PagePool, tokens: list[int]) -> list[int]:
    """What a request does: allocate its pages, cache the full ones, release its own holds."""
    pages = pool.allocate(pool.pages_for(len(tokens)))
    node = cache.root
    for i in range(len(tokens) // PS):
        node = cache.insert(node, tokens[i * PS:(i + 1) * PS], pages[i])
    pool.release(pages)
    return pages


def test_hit_follows_the_path_and_is_capped_at_length_minus_one():
    pool = PagePool(20, PS)
    cache = PrefixCache(pool)
    pages = cached_request(cache, pool, list(range(12)))  # 3 full pages
    assert cache.num_cached_pages == 3 and all(pool.ref_count(p) == 1 for p in pages)  # the cache's own holds
    assert cache.lookup(list(range(13))).pages == pages  # 13 tokens: all 3 pages
    assert cache.lookup(list(range(12))).pages == pages[:2]  # 12 tokens: the last one must be computed
    assert cache.lookup(list(range(9))).pages == pages[:2]
    assert cache.lookup([0, 1, 2, 3, 9, 9, 9, 9, 9]).pages == pages[:1]  # diverges in page 2
    assert cache.lookup([1, 0, 2, 3, 4]).pages == []
    cache.record(13, 12)
    assert (cache.queries, cache.hits) == (13, 12)


def test_same_page_after_a_different_prefix_is_a_different_node():
    pool = PagePool(20, PS)
    cache = PrefixCache(pool)
    cached_request(cache, pool, [1, 1, 1, 1, 5, 5, 5, 5])
    cached_request(cache, pool, [2, 2, 2, 2, 5, 5, 5, 5])
    assert cache.num_cached_pages == 4
    assert cache.lookup([5, 5, 5, 5, 0]).pages == []  # page [5,5,5,5] exists, but only after a prefix


def test_equal_page_cached_twice_keeps_the_first():
    pool = PagePool(20, PS)
    cache = PrefixCache(pool)
    first = cached_request(cache, pool, [1, 2, 3, 4])
    second = cached_request(cache, pool, [1, 2, 3, 4])
    assert cache.num_cached_pages == 1 and cache.lookup([1, 2, 3, 4, 0]).pages == first[:1]
    assert pool.ref_count(second[0]) == 0  # the duplicate was its owner's alone and is free again


def test_only_full_pages_are_cached():
    cache = PrefixCache(PagePool(8, PS))
    with pytest.raises(ValueError, match="only full pages"):
        cache.insert(cache.root, [1, 2, 3], 1)


def pages_in(cache: PrefixCache) -> set[int]:
    """Every cached page, read off the trie without touching its LRU order."""
    out, stack = set(), list(cache.root.children.values())
    while stack:
        node = stack.pop()
        out.add(node.page)
        stack.extend(node.children.values())
    return out


def test_evicts_least_recently_used_unreferenced_leaves_first():
    pool = PagePool(8, PS)  # 7 pages
    cache = PrefixCache(pool)
    a = cached_request(cache, pool, [1] * 8)  # 2 pages: a0 -> a1
    b = cached_request(cache, pool, [2] * 4)
    c = cached_request(cache, pool, [3] * 4)
    assert cache.lookup([2] * 5).pages == b  # b is used again: now the most recent
    pool.retain(c)  # a running request holds c: not evictable
    assert pool.free_pages == 3 and cache.unreferenced_pages() == 3
    assert cache.evict(1) == 1 and pages_in(cache) == {a[0], *b, *c}  # a's leaf went first (oldest)
    assert cache.evict(1) == 1 and pages_in(cache) == {*b, *c}  # then a's first page: a leaf now
    assert cache.evict(5) == 1 and pages_in(cache) == set(c)  # then b; c is held
    assert pool.free_pages == 6
    pool.release(c)
    assert cache.unreferenced_pages() == 1 and cache.evict(1) == 1 and pool.free_pages == 7


def test_a_hit_refreshes_the_lru_order():
    pool = PagePool(8, PS)
    cache = PrefixCache(pool)
    a = cached_request(cache, pool, [1] * 4)
    b = cached_request(cache, pool, [2] * 4)
    cache.lookup([1] * 5)
    assert cache.evict(1) == 1 and pages_in(cache) == set(a) and b[0] not in pages_in(cache)


def test_an_interior_page_is_not_evicted_while_it_has_children():
    pool = PagePool(8, PS)
    cache = PrefixCache(pool)
    a = cached_request(cache, pool, [1] * 8)
    pool.retain(a[1:])  # the leaf is held by a request
    assert cache.evict(7) == 0  # the root page has a child: it must stay, or the path breaks
    pool.release(a[1:])
    assert cache.evict(7) == 2


def test_insert_under_an_evicted_node_caches_nothing():
    pool = PagePool(8, PS)
    cache = PrefixCache(pool)
    node = cache.insert(cache.root, [1] * 4, pool.allocate(1)[0])
    pool.release([node.page])
    cache.evict(1)
    page = pool.allocate(1)[0]
    assert cache.insert(node, [2] * 4, page) is node and cache.num_cached_pages == 0 and pool.ref_count(page) == 1


def test_clear_releases_every_page():
    pool = PagePool(10, PS)
    cache = PrefixCache(pool)
    cached_request(cache, pool, list(range(16)))
    assert pool.free_pages == 5
    assert cache.clear() == 4 and pool.free_pages == 9 and cache.lookup(list(range(16))).pages == []
