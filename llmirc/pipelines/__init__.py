"""Passes over llm IR, the pass manager, and the O0-O3 pipelines (see pipeline.py)."""

from . import blockify_kv_cache, canonicalize, cse, dce  # noqa: F401  (registers passes)
from .pass_manager import PASSES, PassError, PassManager, parse_pipeline, register_pass
from .pipeline import pipeline_for_level

__all__ = ["PASSES", "PassError", "PassManager", "parse_pipeline", "pipeline_for_level", "register_pass"]
