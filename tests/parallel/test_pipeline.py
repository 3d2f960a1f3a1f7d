"""Pipeline-parallel CPU artifacts (`--pp N`): PP=2 of the tiny checkpoint against its PP=1
artifact (logits within 1e-5, each stage's pool equal to its layers of the one pool), PP=3 of a
3-layer checkpoint (a middle stage takes and returns hidden states) against transformers,
micro-batches pipelined over the stages (same values, and both stages really in flight at
once), the manifest, inspect, `llmirc run`, one-line refusals, and (slow) the stages as Ray
actors on a local Ray cluster."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest

import llmirc
from llmirc.artifacts.manifest import read_manifest
from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.frontend import stage_layers
from llmirc.runtime import Engine
from llmirc.runtime.pipeline import PipelineEngine, Stage
from llmirc.testing.checkpoints import make_checkpoint
from tests.cli import assert_one_error, run_cli
from tests.conftest import TINY
from tests.parallel.conftest import PAGE
from tests.parallel.test_tp_cpu import PROMPTS, STEPS, TABLES
from tests.reference import greedy_with_engine, hf_greedy, hf_model, padded_batch


def compile_pp(checkpoint, out, pp: int, **kw):
    compile_checkpoint(CompileOptions(checkpoint, out, opt_level=kw.pop("opt_level", 2), page_size=PAGE, pp=pp,
                                      **kw), progress=None)
    return out


@pytest.fixture(scope="module")
def pp2(tiny_checkpoint, tmp_path_factory):
    return compile_pp(tiny_checkpoint, tmp_path_factory.mktemp("pp") / "pp2", 2)


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("l3") / "ckpt", dataclasses.replace(TINY, layers=3, seed=3))


def _run(engine):
    """Prefill of PROMPTS on scattered pages, then STEPS greedy decodes: every step's logits."""
    tokens, lens = padded_batch(PROMPTS)
    logits = engine.prefill(tokens, lens, TABLES)
    out, positions = [logits], lens.copy()
    for _ in range(STEPS):
        logits = engine.decode(logits.argmax(-1).astype(np.int64), positions, TABLES)
        out.append(logits)
        positions += 1
    return out


@pytest.fixture(scope="module")
def reference(tp_artifacts):
    """PP=1 (the same -O2, 8-token-page compile as the TP tests' reference): logits and pool."""
    engine = Engine(tp_artifacts(1), num_pages=32)
    return _run(engine), engine.read_pool()


def _assert_close(got: list, ref: list, atol: float = 1e-5) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, atol=atol, rtol=0)


@pytest.mark.parametrize("layers, stages, want", [
    (2, 2, [(0, 1), (1, 2)]), (5, 3, [(0, 2), (2, 4), (4, 5)]), (3, 3, [(0, 1), (1, 2), (2, 3)]), (4, 1, [(0, 4)])])
def test_stage_layers_are_contiguous_and_even(layers, stages, want):
    assert stage_layers(layers, stages) == want


def test_pp2_logits_and_pools_equal_pp1(pp2, reference):
    engine = Engine(pp2, num_pages=32)
    assert isinstance(engine, PipelineEngine) and len(engine.devices) == 2
    pools_before = list(engine.pools)
    _assert_close(_run(engine), reference[0])
    assert all(a is b for a, b in zip(engine.pools, pools_before))  # updated in place through the tied results
    one_pool = reference[1]
    stage_pools = [engine.read_pool(i) for i in range(2)]
    assert [p.shape[1] for p in stage_pools] == [1, 1]  # each stage holds its own layer
    np.testing.assert_allclose(np.concatenate(stage_pools, axis=1), one_pool, atol=1e-5, rtol=0)
    assert not np.array_equal(stage_pools[0], stage_pools[1])


@pytest.mark.parametrize("micro_batches", [2, 3])
def test_micro_batches_give_the_one_batch_values(pp2, reference, micro_batches):
    """Rows split over micro-batches come back in row order: the prompts differ, so a row out
    of place would not match."""
    _assert_close(_run(PipelineEngine(pp2, num_pages=32, micro_batches=micro_batches)), reference[0])


def test_micro_batches_are_in_flight_on_both_stages_at_once(pp2, monkeypatch):
    """Stage 1 runs micro-batch 0 only once stage 0 has started micro-batch 1, and stage 0's
    micro-batch 1 only once stage 1 has started micro-batch 0: both get through only if the
    two stages run at the same time (a runner that sends each micro-batch through every stage
    before the next would time out here)."""
    started = {(0, 1): threading.Event(), (1, 0): threading.Event()}
    waited: dict[tuple[int, int], bool] = {}
    seen = {0: 0, 1: 0}
    run = Stage.run

    def traced(self, name, args, hidden):
        k = seen[self.index]
        seen[self.index] += 1
        if (self.index, k) in started:
            started[(self.index, k)].set()
            other = (0, 1) if self.index == 1 else (1, 0)
            waited[(self.index, k)] = started[other].wait(timeout=10)
        return run(self, name, args, hidden)

    engine = PipelineEngine(pp2, num_pages=32, micro_batches=2)
    monkeypatch.setattr(Stage, "run", traced)
    tokens, lens = padded_batch(PROMPTS[:2])
    engine.prefill(tokens, lens, TABLES[:2])
    assert waited == {(0, 1): True, (1, 0): True}


def test_pp3_middle_stage_matches_transformers(three_layers, tmp_path):
    """3 layers over 3 stages: stage 1 takes and returns hidden states. Greedy tokens through
    llmirc.load (scheduler, one PagePool for the three pools; a shared prefix goes through
    extend on the second call) and logits through the raw Engine, against transformers."""
    art = compile_pp(three_layers, tmp_path / "pp3", 3)
    hf = hf_model(three_layers)
    model = llmirc.load(art)
    prompts = PROMPTS + [PROMPTS[0] + [70, 71]]  # the last shares PROMPTS[0]'s pages once it is cached
    refs = [hf_greedy(hf, p, 16) for p in prompts]
    got = model.generate(prompts[:3], max_tokens=16, stop_token_ids=())
    got += model.generate(prompts[3:], max_tokens=16, stop_token_ids=())
    assert len(model.engine.pools) == 3 and model.llm.stats.prefix_cache_hits >= 1
    assert [c.token_ids for c in got] == [t for t, _ in refs]
    tokens, logits = greedy_with_engine(Engine(art, num_pages=64), prompts, 15)
    for row, toks, (ref_tokens, ref_logits) in zip(logits, tokens, refs):
        assert toks == ref_tokens[:15]
        np.testing.assert_allclose(row, ref_logits, atol=1e-3, rtol=0)


def test_manifest_and_inspect_show_the_stages(pp2):
    m = read_manifest(pp2)
    assert m.target.extra["devices"] == {
        "count": 2, "kind": "local", "parallelism": "pipeline",
        "stages": [{"layers": [0, 1], "vmfb": "model.vmfb", "input": "tokens", "output": "hidden"},
                   {"layers": [1, 2], "vmfb": "stage1.vmfb", "input": "hidden", "output": "logits"}]}
    assert m.kv.extra == {"pools": 2, "pool_layers": [1, 1]} and {"model.vmfb", "stage1.vmfb"} <= set(m.files)
    res = run_cli("inspect", pp2)
    assert res.exit_code == 0, res.output
    assert ("parallel   pipeline parallelism: 2 stages on 2 'local' devices (model.vmfb layers 0..0; stage1.vmfb "
            "layers 1..1)") in res.stdout
    data = json.loads(run_cli("inspect", pp2, "--json").stdout)
    assert data["target"]["devices"]["stages"][1]["vmfb"] == "stage1.vmfb"


def test_run_and_device_list(pp2, tp_artifacts):
    args = ("--prompt-ids", "1,5,9", "--max-tokens", "6", "--json")
    runs = [run_cli("run", pp2, *args), run_cli("run", pp2, *args, "--device", "local-task,local-task"),
            run_cli("run", tp_artifacts(1), *args)]
    assert all(r.exit_code == 0 for r in runs), "".join(r.output for r in runs)
    ids = [json.loads(r.stdout)[0]["token_ids"] for r in runs]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 6
    assert_one_error(run_cli("run", pp2, *args, "--device", "local-task"),
                     "compiled for 2 devices (pipeline parallelism)", "names 1")


def test_ray_needs_a_pipeline_artifact(tp_artifacts):
    assert_one_error(run_cli("run", tp_artifacts(1), "--prompt-ids", "1,5", "--ray"),
                     "is not a pipeline-parallel artifact (compile one with --pp N)")


def test_a_missing_stage_module_is_one_error(pp2, tmp_path):
    import shutil

    art = shutil.copytree(pp2, tmp_path / "art")
    (art / "stage1.vmfb").unlink()
    assert_one_error(run_cli("run", art, "--prompt-ids", "1,5", "--max-tokens", "2"), "stage1.vmfb")


@pytest.mark.parametrize("extra, needle", [
    (("--pp", "0"), "--pp must be at least 1"),
    (("--pp", "3"), "the model has 2 layers, fewer than the stages"),
    (("--pp", "2", "--tp", "2"), "--pp 2 with --tp 2 is not supported yet"),
    (("--pp", "2", "--target", "tpu-like"), "pipeline parallelism compiles for cpu, cuda and rocm targets"),
    (("--pp", "2", "--target", "vulkan"), "pipeline parallelism compiles for cpu, cuda and rocm targets"),
    (("--pp", "2", "--passes", "blockify-kv-cache"), "--pp 2 with --passes is not supported"),
])
def test_unsupported_pp_is_one_error(tiny_checkpoint, tmp_path, extra, needle):
    assert_one_error(run_cli("compile", tiny_checkpoint, "-o", tmp_path / "out", "-q", *extra), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pp2_at_O3_with_its_static_batch_decode(tiny_checkpoint, tmp_path, reference):
    """-O3 adds decode_b{B} (one static batch per B, not split into micro-batches) and data
    tiling: PP=2 at -O3 equals the -O2 PP=1 reference within 1e-5."""
    two = compile_pp(tiny_checkpoint, tmp_path / "pp2", 2, opt_level=3)
    assert read_manifest(two).entry_points["decode"].get("batch_functions")
    _assert_close(_run(Engine(two, num_pages=32)), reference[0])
    _assert_close(_run(PipelineEngine(two, num_pages=32, micro_batches=2)), reference[0])


@pytest.mark.slow
def test_pp2_with_int8_weights(tiny_checkpoint, tmp_path):
    """--quantize runs per stage: PP=2 int8 equals PP=1 int8 (-O2)."""
    one = compile_pp(tiny_checkpoint, tmp_path / "pp1", 1, quantize="int8")
    two = compile_pp(tiny_checkpoint, tmp_path / "pp2", 2, quantize="int8")
    _assert_close(_run(Engine(two, num_pages=32)), _run(Engine(one, num_pages=32)))


@pytest.mark.slow
def test_stages_as_ray_actors(pp2, reference):
    """Each stage in its own Ray actor process on a local Ray cluster; the hidden state goes
    actor to actor through Ray's object store. Same logits and pools as PP=1."""
    import ray

    from llmirc.runtime.ray_stages import RayPipelineEngine

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        engine = RayPipelineEngine(pp2, num_pages=32, micro_batches=2)
        _assert_close(_run(engine), reference[0])
        np.testing.assert_allclose(np.concatenate([engine.read_pool(i) for i in range(2)], axis=1), reference[1],
                                   atol=1e-5, rtol=0)
        engine.shutdown()
        args = ("--prompt-ids", "1,5,9", "--max-tokens", "6", "--json")
        runs = [run_cli("run", pp2, *args, "--ray"), run_cli("run", pp2, *args)]  # the CLI on the same cluster
        assert all(r.exit_code == 0 for r in runs), "".join(r.output for r in runs)
        assert json.loads(runs[0].stdout)[0]["token_ids"] == json.loads(runs[1].stdout)[0]["token_ids"]
    finally:
        ray.shutdown()


@pytest.mark.parametrize("target", ["cuda:sm_90", pytest.param("rocm:gfx942", marks=pytest.mark.slow)])
def test_gpu_pp2_artifacts_compile(tiny_checkpoint, tmp_path, target):
    """Compile only (no GPU here): each stage a one-device module for the asked architecture."""
    art = compile_pp(tiny_checkpoint, tmp_path / "art", 2, target=target)
    m = read_manifest(art)
    assert m.target.extra["devices"]["count"] == 2 and m.target.extra["devices"]["kind"] == m.target.device
    for name in ("model.vmfb", "stage1.vmfb"):
        vmfb = (art / name).read_bytes()
        assert target.split(":")[1].encode() in vmfb and b"__device_1" not in vmfb
