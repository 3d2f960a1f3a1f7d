"""The runtime: load an artifact on its device, keep the paged KV pool, and generate.

One idea per module: page_pool (which pages are free), sequence (a request and its block
table), sampling (next-token choice), engine (the device, the module, the pool), generator
(the admit -> prefill -> decode -> finish loop).
"""

from .engine import Engine, default_num_pages
from .generator import Generator, TokenEvent
from .page_pool import PagePool
from .sampling import SamplingParams, sample
from .sequence import Sequence

__all__ = ["Engine", "default_num_pages", "Generator", "TokenEvent", "PagePool", "SamplingParams", "sample",
           "Sequence"]
