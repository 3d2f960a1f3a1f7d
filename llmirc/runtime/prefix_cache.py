"""PrefixCache: a trie over full KV pages, so requests that share a prefix share its pages.

A node stands for one FULL page of tokens: its key is the page's token ids, and its place
in the trie (its parent) stands for everything before them, so two equal pages at
different depths or after different prefixes are different nodes. Each node holds its own
reference on its PagePool page (PagePool.retain): a page stays valid after the request
that computed it finishes or is preempted, until the cache evicts it.

Only full pages are cached: a partial page is still being written by its request, and
page-granular sharing needs no copy on the device. Eviction takes the least recently used
leaf whose page nobody but the cache holds (ref count 1); taking leaves only keeps every
cached path intact from the root.

Hits are capped at `len(tokens) - 1` tokens: the last token must always be computed, since
its logits are what the request samples from.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from .page_pool import PagePool


@dataclass(eq=False)
class PageNode:
    """One cached full page. `key` is its tokens; `parent` None only for the root."""

    key: tuple[int, ...]
    page: int
    parent: PageNode | None
    children: dict[tuple[int, ...], PageNode] = field(default_factory=dict)
    last_used: int = 0
    detached: bool = False  # evicted: no longer reachable from the root


@dataclass
class CacheHit:
    """The result of a lookup: the cached pages of the longest cached prefix, and the node of
    the last one (where the request's next full page will be inserted)."""

    pages: list[int]
    node: PageNode


class PrefixCache:
    """Trie of full pages over `pool`; counts lookups (`queries`) and `hits`, in tokens."""

    def __init__(self, pool: PagePool) -> None:
        self.pool = pool
        self.page_size = pool.page_size
        self.root = PageNode(key=(), page=0, parent=None)
        self._clock = itertools.count(1)  # a logical clock: LRU order without wall time
        self.num_cached_pages = 0
        self.queries = 0
        self.hits = 0

    def lookup(self, tokens: Seq[int]) -> CacheHit:
        """The longest cached run of full pages that prefixes `tokens`, capped at
        len(tokens) - 1 tokens. The caller must `pool.retain` the pages it uses (the cache
        only vouches for them until the next eviction), and `record` the lookup once it is
        used: a request that is looked up but cannot be admitted yet is not counted."""
        max_pages = max(0, len(tokens) - 1) // self.page_size
        node, pages = self.root, []
        now = next(self._clock)
        for i in range(max_pages):
            child = node.children.get(tuple(tokens[i * self.page_size:(i + 1) * self.page_size]))
            if child is None:
                break
            child.last_used = now
            node = child
            pages.append(child.page)
        return CacheHit(pages, node)

    def record(self, num_tokens: int, hit_tokens: int) -> None:
        """Count a lookup of `num_tokens` tokens that found `hit_tokens` of them cached."""
        self.queries += num_tokens
        self.hits += hit_tokens

    def insert(self, parent: PageNode, tokens: Seq[int], page: int) -> PageNode:
        """Cache full page `page` holding `tokens` after `parent`; returns the node now
        standing for those tokens (an existing one if another request cached an equal page
        first: then `page` stays its owner's alone). A detached parent (evicted meanwhile)
        caches nothing and returns itself, so a request stops caching past an eviction."""
        key = tuple(int(t) for t in tokens)
        if len(key) != self.page_size:
            raise ValueError(f"only full pages are cached: got {len(key)} tokens, the page size is {self.page_size}")
        if parent.detached:
            return parent
        node = parent.children.get(key)
        if node is None:
            self.pool.retain([page])
            node = PageNode(key=key, page=page, parent=parent)
            parent.children[key] = node
            self.num_cached_pages += 1
        node.last_used = next(self._clock)
        return node

    def unreferenced_pages(self) -> int:
        """Cached pages nobody but the cache holds: free for all practical purposes (an
        allocation evicts them), so page-usage figures count them as free, as vLLM does."""
        return sum(1 for n in self._nodes() if self._unreferenced(n))

    def evict(self, num_pages: int) -> int:
        """Free up to `num_pages` pages by dropping least recently used unreferenced leaves;
        returns how many were freed."""
        heap = [(n.last_used, id(n), n) for n in self._leaves() if self._unreferenced(n)]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < num_pages:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            self._drop(node)
            freed += 1
            if parent is not self.root and not parent.children and self._unreferenced(parent):
                heapq.heappush(heap, (parent.last_used, id(parent), parent))
        return freed

    def clear(self) -> int:
        """Drop every node (the cache's references only); returns how many pages it held."""
        dropped = 0
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            node.children = {}
            node.detached = True
            self.pool.release([node.page])
            dropped += 1
        self.root.children = {}
        self.num_cached_pages = 0
        return dropped

    def _drop(self, node: PageNode) -> None:
        assert not node.children and node.parent is not None
        del node.parent.children[node.key]
        node.detached = True
        self.pool.release([node.page])
        self.num_cached_pages -= 1

    def _unreferenced(self, node: PageNode) -> bool:
        return self.pool.ref_count(node.page) == 1

    def _nodes(self) -> list[PageNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            out.append(node)
        return out

    def _leaves(self) -> list[PageNode]:
        return [n for n in self._nodes() if not n.children]
