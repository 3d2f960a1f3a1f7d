"""A compiler pass that turns the contiguous KV cache into a paged one (PagedAttention).

Why: a contiguous [batch, max_seq_len] cache reserves memory for the longest
sequence per slot; pages let the runtime give each sequence only the blocks it
uses, share prefix pages, and keep one pool on the device for every call.

Rewrite, per function with a `!llm.kv_cache` argument:
- the cache argument becomes the block tables `i64[batch, pages]` and a
  `!llm.paged_kv_cache` pool is appended as the last argument (the ABI order:
  ..., block_tables, pool);
- `llm.append_kv` -> `llm.paged_append_kv`, `llm.attention` -> `llm.paged_attention`.
Position p of row b lives in page block_tables[b, p // block_size].
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect import Builder
from ..dialect.types import KVCacheT, PagedKVCacheT, TensorT, from_mlir, to_mlir
from .pass_manager import register_pass
from .rewrite import attrs_of, functions, llm_ops, operands_of, replace_op, sync_function_type

BLOCK_TABLE_T = TensorT((None, None), "i64")


@register_pass("blockify-kv-cache", "Make the KV cache paged: block tables + one page pool (PagedAttention).",
               block_size=16)
def blockify_kv_cache(module: ir.Module, block_size: int = 16) -> None:
    for func in functions(module).values():
        block = func.regions[0].blocks[0]
        for arg in list(block.arguments):
            t = from_mlir(arg.type)
            if isinstance(t, KVCacheT):
                paged = PagedKVCacheT(t.layers, t.kv_heads, t.head_dim, block_size, t.dtype)
                _blockify(func, arg, paged)
        sync_function_type(func)


def _blockify(func: ir.Operation, cache_arg: ir.Value, paged: PagedKVCacheT) -> None:
    block = func.regions[0].blocks[0]
    pool = block.add_argument(to_mlir(paged), cache_arg.location)
    cache_arg.replace_all_uses_with(pool)
    cache_arg.set_type(to_mlir(BLOCK_TABLE_T))
    tables = cache_arg
    for op in llm_ops(func):
        if op.name not in ("llm.append_kv", "llm.attention"):
            continue
        b, a, args = Builder(ir.InsertionPoint(op)), attrs_of(op), operands_of(op)
        if op.name == "llm.append_kv":
            cache, k, v, pos = args
            new = b.paged_append_kv(cache, tables, k, v, pos, loc=op.location, **a)
        else:
            q, cache, pos = args
            new = b.paged_attention(q, cache, tables, pos, loc=op.location, **a)
        replace_op(op, new)
