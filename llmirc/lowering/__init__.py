"""Lowering of paged llm IR to IREE input MLIR, and its compilation to a .vmfb.

    text = lower_to_iree(module, attention="decomposed")   # or "fused"
    vmfb = compile_iree(text, CPU_FLAGS, Path("model.vmfb"))
"""

from .compile import CPU_FLAGS, CompileError, compile_iree
from .kv import STRATEGIES
from .ops import LOWERINGS, LoweringError
from .quantized import stored_transposed, stored_vnni
from .to_iree import PARAMETER_SCOPE, lower_to_iree

__all__ = ["CPU_FLAGS", "CompileError", "LOWERINGS", "LoweringError", "PARAMETER_SCOPE", "STRATEGIES",
           "compile_iree", "lower_to_iree", "stored_transposed", "stored_vnni"]
