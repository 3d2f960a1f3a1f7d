"""A compiler pass that stores float weight matrices in f16 or bf16; activations stay f32.

Match: an f32 `llm.weight` of rank 2 whose every use is the weight of a linear,
fused_linear or sharded_linear, or the table of an embedding (ops whose lowering widens the
weight element by element inside the matmul or the gather). Norm weights (rank 1) and
quantization scales are left in f32. Rewrite: the same ops on a derived weight
`<name>.<dtype>` of that type; an embedding's rows go back to f32 through `llm.convert`.
Why: half the bytes to store and to read per decode step, while every matmul still
accumulates in f32 (the interpreter computes `x @ w.T` with w widened exactly).
"""

from __future__ import annotations

from iree.compiler import ir

from ..dialect import Builder
from ..dialect.interpreter import round_float
from ..dialect.types import TensorT, from_mlir
from .pass_manager import PassError, register_pass
from .rewrite import attrs_of, functions, llm_ops, replace_op
from .sibling_linears import users

DTYPES = ("f32", "f16", "bf16")
# op -> index of the operand that may be a converted weight
WEIGHT_OPERAND = {"llm.linear": 1, "llm.fused_linear": 1, "llm.sharded_linear": 1, "llm.embedding": 1}


def _convertible(op: ir.Operation) -> bool:
    t = from_mlir(op.results[0].type)
    if not (isinstance(t, TensorT) and t.dtype == "f32" and t.rank == 2):
        return False
    uses = [(getattr(u.owner, "operation", u.owner).name, u.operand_number) for u in op.results[0].uses]
    return bool(uses) and all(WEIGHT_OPERAND.get(name) == i for name, i in uses)


@register_pass("convert-weights", "Store float weight matrices as f16/bf16 (f32 activations and accumulation).",
               needs_weights=True, dtype="f16")
def convert_weights(module: ir.Module, weights, dtype: str) -> None:
    from .dce import dce

    if dtype not in DTYPES:
        raise PassError(f"convert-weights: dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    if dtype == "f32":
        return
    for func in functions(module).values():
        for op in llm_ops(func, "weight"):
            if not _convertible(op):
                continue
            name = attrs_of(op)["name"]
            new_name = f"{name}.{dtype}"
            if new_name not in weights:
                weights.derive(new_name, lambda n=name: round_float(weights[n], dtype))
            t = from_mlir(op.results[0].type)
            b = Builder(ir.InsertionPoint(op))
            w = b.weight(name=new_name, result_types=[TensorT(t.shape, dtype)], loc=op.location)
            for user in users(op.results[0]):
                user.operands[WEIGHT_OPERAND[user.name]] = w
                if user.name == "llm.embedding":
                    _embedding_back_to_f32(user)
            op.erase()
    dce(module)


def _embedding_back_to_f32(emb: ir.Operation) -> None:
    """Recreate `emb` with its new table type and convert its rows back to f32."""
    ids, table = emb.operands
    b = Builder(ir.InsertionPoint(emb))
    rows = b.embedding(ids, table, loc=emb.location)
    replace_op(emb, b.convert(rows, dtype="f32", loc=emb.location))
