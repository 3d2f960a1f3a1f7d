"""The shape of the emitted IREE input: FileCheck checks (the `filecheck` package) on lowered IR.

No compilation here (test_lowering_cpu.py runs the compiled module); `iree-opt` parses
and verifies the text, which takes well under a second.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmirc.dialect import Builder, TensorT, make_context
from llmirc.frontend import import_checkpoint
from llmirc.lowering import CompileError, LoweringError, compile_iree, lower_to_iree, CPU_FLAGS
from llmirc.pipelines import PassManager, pipeline_for_level
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

FILECHECK = str(Path(sys.executable).parent / "filecheck")

POOL = "tensor<?x2x2x16x2x16xf32>"

COMMON = r"""
// Every weight is one parameter global, named by its checkpoint name, in scope "model".
// CHECK: util.global private @model.embed_tokens.weight = #stream.parameter.named<"model"::"model.embed_tokens.weight"> : tensor<300x64xf32>
// CHECK: util.global private @model.layers.1.mlp.down_proj.weight = #stream.parameter.named<"model"::"model.layers.1.mlp.down_proj.weight"> : tensor<64x128xf32>
// CHECK: util.global private @lm_head.weight = #stream.parameter.named<"model"::"lm_head.weight"> : tensor<300x64xf32>

// The ABI of docs/abi.md; argument 3 (the pool) is the storage of result 1.
// CHECK-LABEL: func.func @prefill(
// CHECK-SAME: %arg0: tensor<?x?xi64>, %arg1: tensor<?xi64>, %arg2: tensor<?x?xi64>, %arg3: POOL_T {{[{]}}iree.abi.output = 1 : index{{[}]}})
// CHECK-SAME: -> (tensor<?x300xf32>, POOL_T)
// CHECK: util.global.load @model.embed_tokens.weight : tensor<300x64xf32>
// CHECK: linalg.matmul indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d1)>]
// K and V of each layer are scattered into the pool, each write into the previous version.
// CHECK: %[[P1:pool[0-9]+]] = iree_linalg_ext.scatter dimension_map = [0, 1, 2, 3] unique_indices(false) ins(%{{.*}} : tensor<?x2x16xf32>, tensor<?x4xi64>) outs(%arg3 : POOL_T)
// CHECK: %[[P2:pool[0-9]+]] = iree_linalg_ext.scatter {{.*}} outs(%[[P1]] : POOL_T)
// CHECK: %[[P3:pool[0-9]+]] = iree_linalg_ext.scatter {{.*}} outs(%[[P2]] : POOL_T)
// CHECK: %[[P4:pool[0-9]+]] = iree_linalg_ext.scatter {{.*}} outs(%[[P3]] : POOL_T)
// CHECK-NOT: iree_linalg_ext.scatter
// CHECK: return %{{[a-z0-9]+}}, %[[P4]] : tensor<?x300xf32>, POOL_T

// CHECK-LABEL: func.func @decode(
// CHECK-SAME: %arg0: tensor<?xi64>, %arg1: tensor<?xi64>, %arg2: tensor<?x?xi64>, %arg3: POOL_T {{[{]}}iree.abi.output = 1 : index{{[}]}})
// CHECK: iree_linalg_ext.scatter {{.*}} outs(%arg3 : POOL_T)
""".replace("POOL_T", POOL)

# appended to COMMON: these run inside @decode
DECOMPOSED = """
// CHECK-NOT: iree_linalg_ext.attention
// K and V are gathered head-major, [B*KH, S, D], for two batch matmuls over B*KH:
// Q.K^T (K transposed through the indexing map), the masked softmax, then P.V.
// CHECK: linalg.batch_matmul indexing_maps = [affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>, affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>, affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>] ins(%{{.*}}, %{{.*}} : tensor<?x2x16xf32>, tensor<?x?x16xf32>) outs(%{{.*}} : tensor<?x2x?xf32>)
// CHECK: linalg.softmax dimension(4)
// CHECK: linalg.batch_matmul ins(%{{.*}}, %{{.*}} : tensor<?x2x?xf32>, tensor<?x?x16xf32>) outs(%{{.*}} : tensor<?x2x16xf32>)
"""

FUSED = """
// CHECK-NOT: linalg.softmax
// CHECK: iree_linalg_ext.attention <{indexing_maps = [
// CHECK-SAME: ins(%{{.*}} : tensor<?x2x2x16xf32>, tensor<?x?x2x16xf32>, tensor<?x?x2x16xf32>, f32, tensor<?x2x2x?xf32>)
"""


def _filecheck(text: str, checks: str, tmp_path: Path) -> None:
    check_file = tmp_path / "checks.mlir"
    check_file.write_text(checks)
    r = subprocess.run([FILECHECK, str(check_file)], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _verify(text: str) -> None:
    from iree.compiler.tools import binaries

    r = subprocess.run([binaries.find_tool("iree-opt"), "-", "-o", "/dev/null"], input=text,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def paged(tiny_checkpoint):
    m = import_checkpoint(tiny_checkpoint)
    PassManager(pipeline_for_level(0, block_size=16)).run(m.module)
    return m


@pytest.mark.parametrize("strategy,checks", [("decomposed", DECOMPOSED), ("fused", FUSED)])
def test_lowered_ir(paged, strategy, checks, tmp_path):
    text = lower_to_iree(paged.module, attention=strategy)
    _filecheck(text, COMMON + checks, tmp_path)
    _verify(text)


def _function(text: str, name: str) -> str:
    start = text.index(f"func.func @{name}(")
    end = text.find("func.func @", start + 1)
    return text[start:end if end > 0 else len(text)]


def test_softmax_form_follows_query_length(paged):
    """Decode (T = 1) keeps linalg.softmax; a dynamic query length (prefill, extend) gets the
    softmax as generics behind a barrier (linalg.softmax was 30x slower there at 1k keys)."""
    text = lower_to_iree(paged.module)
    decode, prefill, extend = (_function(text, f) for f in ("decode", "prefill", "extend"))
    assert decode.count("linalg.softmax") == 2 and "flow.tensor.tie_shape" not in decode
    for f in (prefill, extend):
        assert "linalg.softmax" not in f
        assert f.count("flow.tensor.tie_shape") == 2 and f.count("math.exp") >= 2


def test_weights_are_parameters_not_constants(paged):
    text = lower_to_iree(paged.module)
    names = list(paged.weights())
    for name in names:  # one global per distinct name, even though prefill and decode both load it
        assert len(re.findall(rf'#stream\.parameter\.named<"model"::"{re.escape(name)}">', text)) == 1, name
    assert text.count("util.global private") == len(names)
    assert "dense_resource" not in text
    # the only dense constants are rope frequency tables (head_dim / 2 values), no weight data
    assert set(re.findall(r"dense<.*?> : (tensor<[^>]*>)", text)) == {"tensor<8xf32>"}


def test_tied_embeddings_share_one_global(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tied", CheckpointSpec(layers=1, hidden=32, heads=2, kv_heads=1, vocab=64,
                                                             intermediate=64, tie_embeddings=True))
    m = import_checkpoint(ckpt)
    PassManager(pipeline_for_level(0, block_size=8)).run(m.module)
    text = lower_to_iree(m.module)
    assert "lm_head" not in text
    assert text.count('"model"::"model.embed_tokens.weight"') == 1


def test_unpaged_module_is_rejected(tiny_checkpoint):
    m = import_checkpoint(tiny_checkpoint)  # no blockify-kv-cache
    with pytest.raises(LoweringError, match="blockify-kv-cache"):
        lower_to_iree(m.module)


def test_unsupported_op_names_op_and_location():
    from iree.compiler import ir
    from iree.compiler.dialects import func

    with make_context(), ir.Location.unknown():
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            f = func.FuncOp("f", ([], [ir.Type.parse("tensor<4x8xi8>")]))
            with ir.InsertionPoint(f.add_entry_block()):
                b = Builder()
                w = b.weight(name="w", result_types=[TensorT((4, 8), "f32")])
                q, _, _ = b.quantize(w, group_size=8, loc="layers.0.q_proj.quantize")
                func.ReturnOp([q])
    with pytest.raises(LoweringError, match=r"'llm\.quantize' at layers\.0\.q_proj\.quantize"):
        lower_to_iree(module)


def test_unknown_strategy(paged):
    with pytest.raises(LoweringError, match="attention strategy 'flash'"):
        lower_to_iree(paged.module, attention="flash")


def test_compiler_error_is_one_clear_line():
    bad = "func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> {\n  return %b : tensor<4xf32>\n}\n"
    with pytest.raises(CompileError, match=r"^iree-compile failed: 2:10: error: use of undeclared SSA value") as info:
        compile_iree(bad, CPU_FLAGS)
    assert "\n" not in str(info.value)


def test_derived_weights_keep_their_parameter_name(tiny_checkpoint, tmp_path):
    """-O2 folds q/k/v into a derived tensor "concat(...)": the parameter key is that exact
    name (what the .irpa holds); only the global's symbol is sanitized."""
    from llmirc.pipelines import WeightStore

    m = import_checkpoint(tiny_checkpoint)
    PassManager(pipeline_for_level(2, block_size=16), weights=WeightStore.from_arrays(m.weights())).run(m.module)
    text = lower_to_iree(m.module)
    p = "model.layers.0.self_attn."
    key = f"concat({p}q_proj.weight,{p}k_proj.weight,{p}v_proj.weight)"
    _filecheck(text, f"""
// CHECK: util.global private @[[QKV:concat_[A-Za-z0-9_.]+]] = #stream.parameter.named<"model"::"{key}"> : tensor<128x64xf32>
// CHECK-LABEL: func.func @prefill(
// CHECK: util.global.load @[[QKV]] : tensor<128x64xf32>
""", tmp_path)
    _verify(text)
