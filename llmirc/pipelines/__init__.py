"""Passes over llm IR, the pass manager, and the O0-O3 pipelines (see pipeline.py)."""

from . import (  # noqa: F401  (registers passes)
    blockify_kv_cache, canonicalize, convert_weights, cse, dce, fold_weights, fuse_gate_up, fuse_matmul_activation,
    fuse_qkv, fuse_residual_norm, quantize_weights, shard_tp)
from .pass_manager import PASSES, PassError, PassManager, parse_pipeline, register_pass
from .pipeline import pipeline_for_level, precision_passes
from .quantize_weights import QuantConfig
from .weights import WeightStore

__all__ = ["PASSES", "PassError", "PassManager", "QuantConfig", "parse_pipeline", "pipeline_for_level",
           "precision_passes", "register_pass", "WeightStore"]
