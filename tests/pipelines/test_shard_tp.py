"""shard-tp: the sharded module's interpreter logits equal the unsharded module's (TP=2, TP=4,
KV heads fewer than devices, fused and unfused projections), its placement checks out, and a
wrong split is caught."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from iree.compiler import ir

from llmirc.dialect import VerificationError, parse_module, print_module
from llmirc.dialect.context import functions
from llmirc.frontend.config import ModelConfig
from llmirc.frontend.decoder import build_decoder, weight_shapes
from llmirc.pipelines import PassError, PassManager, WeightStore, parse_pipeline, pipeline_for_level
from llmirc.pipelines.shard_tp import (PLACEMENT, Part, WeightSplit, apply_plan, plan_tensor_parallel,
                                       verify_placement)
from tests.pipelines.equivalence import run_model

TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, max_seq_len=64)
QKV = "concat(model.layers.0.self_attn.q_proj.weight,model.layers.0.self_attn.k_proj.weight," \
      "model.layers.0.self_attn.v_proj.weight)"


def _weights(c: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in weight_shapes(c).items()}


def _pipeline_text(specs) -> str:
    return ",".join(n + ("{" + ",".join(f"{k}={v}" for k, v in o.items()) + "}" if o else "") for n, o in specs)


def _compiled(c: ModelConfig, pipeline: str, weights=None):
    """build_decoder(c) after `pipeline`, and the WeightStore the passes derived into."""
    store = WeightStore.from_arrays(weights or _weights(c))
    module = build_decoder(c)
    if pipeline:
        PassManager(parse_pipeline(pipeline), weights=store).run(module)
    return module, store


def _logits(module, store, seed: int = 3):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 60, size=(2, 5)).astype(np.int64)
    return run_model(module, store, tokens, np.array([5, 3], np.int64))


def _max_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


CASES = {  # id: (tp, config changes, level or explicit pipeline before shard-tp)
    "tp2": (2, {}, 0),
    "tp2-O2-fused": (2, {}, 2),
    "tp4-kv-replicated": (4, {}, 0),
    "tp4-kv-replicated-O2-fused": (4, {}, 2),
    "tp4-mha-O2": (4, dict(num_kv_heads=4), 2),
    "tp2-mqa-O2": (2, dict(num_kv_heads=1), 2),
    "tp2-bias-tied-unfolded-concat": (2, dict(qkv_bias=True, o_bias=True, tie_word_embeddings=True),
                                      "fuse-qkv,fuse-gate-up"),
    "tp4-contiguous-cache": (4, {}, ""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_logits_equal_unsharded(case):
    tp, changes, pre = CASES[case]
    c = dataclasses.replace(TINY, **changes)
    w = _weights(c)
    if isinstance(pre, int):  # the -O pipeline with and without its tp option
        ref, ref_store = _compiled(c, _pipeline_text(pipeline_for_level(pre, block_size=4)), w)
        got, store = _compiled(c, _pipeline_text(pipeline_for_level(pre, block_size=4, tp=tp)), w)
    else:
        ref, ref_store = _compiled(c, pre, w)
        got, store = _compiled(c, pre + ("," if pre else "") + f"shard-tp{{tp={tp}}}", w)
    verify_placement(got)
    text = print_module(got)
    assert text.count('"llm.device_all_reduce"') == 4 * 2 * c.num_layers * tp  # o_proj and down, each device
    assert text.count('"llm.device_all_gather"') == 4  # lm_head, on device 0 of each function
    for r, g in zip(_logits(ref, ref_store), _logits(got, store)):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=0)


def test_plan_is_data():
    """TP=4 over 2 KV heads: q/k/v split by heads, KV replicated twice, o_proj/down by
    in-features with an all-reduce, lm_head by vocab with an all-gather, the rest replicated."""
    module, _ = _compiled(TINY, "blockify-kv-cache{block_size=4}")
    before = print_module(module)
    plan = plan_tensor_parallel(module, 4)
    assert print_module(module) == before  # planning changes nothing
    p = "model.layers.0."
    assert plan.kv_replication == 2
    assert plan.split_of(p + "self_attn.q_proj.weight") == WeightSplit(p + "self_attn.q_proj.weight", 0, (Part(32, 4),))
    assert plan.split_of(p + "self_attn.k_proj.weight") == WeightSplit(p + "self_attn.k_proj.weight", 0, (Part(16, 2),))
    assert plan.split_of(p + "self_attn.o_proj.weight") == WeightSplit(p + "self_attn.o_proj.weight", 1, (Part(32, 4),))
    assert plan.split_of(p + "mlp.down_proj.weight").dim == 1
    assert plan.split_of("lm_head.weight").dim == 0
    for name in ("model.embed_tokens.weight", p + "input_layernorm.weight", "model.norm.weight"):
        assert plan.split_of(name) is None  # replicated
    assert plan.all_reduce_after == (p + "self_attn.o_proj", p + "mlp.down_proj", "model.layers.1.self_attn.o_proj",
                                     "model.layers.1.mlp.down_proj")
    assert plan.all_gather_after == ("lm_head",)
    actions = {(q.op, q.action) for q in plan.placement}
    assert ("llm.paged_attention", "replicate") in actions and ("llm.linear", "row") in actions
    assert all(q.devices == (0, 1, 2, 3) for q in plan.placement if q.op != "llm.softcap")
    # the replicated KV head: devices 0, 1 hold head 0 and devices 2, 3 head 1
    k = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    split = plan.split_of(p + "self_attn.k_proj.weight")
    shards = [split.shard(k, d, 4) for d in range(4)]
    np.testing.assert_array_equal(shards[0], k[:8])
    np.testing.assert_array_equal(shards[1], k[:8])
    np.testing.assert_array_equal(shards[3], k[8:])


def test_fused_qkv_is_split_per_part():
    """Shard i of the folded q/k/v weight is [q_i; k_i; v_i], not rows i of the fused matrix."""
    module, store = _compiled(TINY, _pipeline_text(pipeline_for_level(2, block_size=4, tp=2)))
    q, k, v = (store[f"model.layers.0.self_attn.{n}_proj.weight"] for n in "qkv")
    np.testing.assert_array_equal(store[QKV + ".shard1"], np.concatenate([q[16:], k[8:], v[8:]]))
    assert f'name = "{QKV}.shard1"' in print_module(module)


def test_contiguous_split_of_fused_qkv_breaks_equality():
    """The oracle is not vacuous: the same rewrite with the fused q/k/v weight cut into
    contiguous row blocks (shard 0 = q's rows only) gives other logits."""
    level2 = _pipeline_text(pipeline_for_level(2, block_size=4))
    w = _weights(TINY)
    ref, ref_store = _compiled(TINY, level2, w)
    bad, bad_store = _compiled(TINY, level2, w)
    plan = plan_tensor_parallel(bad, 2)
    good = plan.split_of(QKV)
    assert len(good.parts) == 3
    total = sum(p.size for p in good.parts)
    wrong = dataclasses.replace(good, parts=(Part(total, total),))
    bad_plan = dataclasses.replace(plan, weights=tuple(wrong if s.name == QKV else s for s in plan.weights))
    apply_plan(bad, bad_plan, bad_store)
    verify_placement(bad)  # well-placed, shapes fit: only the numbers are wrong
    assert _max_diff(_logits(ref, ref_store), _logits(bad, bad_store)) > 1e-3


@pytest.fixture(scope="module")
def sharded_text() -> str:
    module, _ = _compiled(TINY, "blockify-kv-cache{block_size=4},shard-tp{tp=2}")
    return print_module(module)


def _ops(module, fn: str, name: str) -> list[ir.Operation]:
    return [o.operation for o in functions(module)[fn].regions[0].blocks[0].operations if o.operation.name == name]


def test_placement_check_catches_a_misplaced_op(sharded_text):
    module = parse_module(sharded_text)
    verify_placement(module)
    with module.context:
        lin = next(op for op in _ops(module, "decode", "llm.linear")
                   if ir.IntegerAttr(op.attributes[PLACEMENT]).value == 1)
        lin.attributes[PLACEMENT] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64), 0)
        del _ops(module, "prefill", "llm.embedding")[0].attributes[PLACEMENT]
    with pytest.raises(VerificationError) as e:
        verify_placement(module)
    text = str(e.value)
    assert "on device 0, operand 0 is on device 1" in text and "no 'llm.device'" in text


def test_placement_check_catches_collective_operands_out_of_order(sharded_text):
    module = parse_module(sharded_text)
    with module.context:
        reduce = _ops(module, "decode", "llm.device_all_reduce")[0]
        a, b = list(reduce.operands)
        reduce.operands[0], reduce.operands[1] = b, a
    with pytest.raises(VerificationError, match=r"operands from devices \[1, 0\], expected one from each of 0..1"):
        verify_placement(module)


def test_per_device_kv_caches(sharded_text):
    """TP=2 over 2 KV heads: two pools of one KV head each; block tables shared."""
    module = parse_module(sharded_text)
    fn = functions(module)["decode"]
    types = [str(t) for t in ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value).inputs]
    assert types[-2:] == ["!llm.paged_kv_cache<2 : i64, 1 : i64, 8 : i64, 4 : i64, f32>"] * 2
    assert list(ir.DenseI64ArrayAttr(fn.attributes["llm.arg_devices"])) == [-1, -1, -1, 0, 1]
    assert list(ir.DenseI64ArrayAttr(fn.attributes["llm.result_devices"])) == [0, 0, 1]


def test_tp1_is_nothing():
    assert pipeline_for_level(2, tp=1) == pipeline_for_level(2)
    assert all(name != "shard-tp" for name, _ in pipeline_for_level(3, block_size=4))
    module, _ = _compiled(TINY, "blockify-kv-cache{block_size=4}")
    before = print_module(module)
    PassManager(parse_pipeline("shard-tp{tp=1}"), weights=WeightStore.from_arrays({})).run(module)
    assert print_module(module) == before


@pytest.mark.parametrize("tp, why", [(8, "attention: 4 query heads do not split over 8 devices"),
                                     (3, "heads do not split over 3 devices")])
def test_unsplittable_model_is_refused(tp, why):
    module, _ = _compiled(TINY, "blockify-kv-cache{block_size=4}")
    with pytest.raises(PassError, match=why):
        plan_tensor_parallel(module, tp)
