"""The `llm` MLIR dialect: op specs, types, builder, verifier, IRDL export, interpreter."""

from . import ops as _ops  # noqa: F401  (registers the op specs)
from .builder import Builder
from .context import functions, make_context, parse_module, print_module
from .spec import REGISTRY, OpSpec, SpecError, lookup
from .types import KVCacheT, PagedKVCacheT, TensorT
from .verifier import VerificationError, verify_module

__all__ = ["Builder", "functions", "make_context", "parse_module", "print_module", "REGISTRY",
           "OpSpec", "SpecError", "lookup", "KVCacheT", "PagedKVCacheT", "TensorT",
           "VerificationError", "verify_module"]
