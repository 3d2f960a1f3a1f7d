"""The runtime: load an artifact on its device, keep the paged KV pool, and generate.

One idea per module: page_pool (which pages are free), prefix_cache (a trie of full pages
shared between requests), scheduler (which tokens each step computes: chunked prefill,
decode, preemption), llm_engine (requests in, outputs out: sampling, stop conditions,
detokenizing), sampling (next-token choice), stop (stop strings), engine (the device, the
module, the pool).
"""

from .engine import Engine, default_num_pages
from .llm_engine import CompletionOutput, EngineStats, LLMEngine, RequestOutput
from .page_pool import PagePool
from .prefix_cache import PrefixCache
from .sampling import SamplingParams, sample
from .scheduler import SchedulerConfig

__all__ = ["Engine", "default_num_pages", "LLMEngine", "RequestOutput", "CompletionOutput", "EngineStats", "PagePool",
           "PrefixCache", "SamplingParams", "SchedulerConfig", "sample"]
