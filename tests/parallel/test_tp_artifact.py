"""What a TP=N artifact holds and says: shard tensors in the one model.irpa, the lowered
module's device placement, the manifest's devices (inspect, human and --json), `llmirc run`
over a device list, one-line errors for what --tp does not support, and TP=2 GPU builds
(compile only: no GPU here)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from llmirc.artifacts.manifest import read_manifest
from llmirc.artifacts.params import read_params
from llmirc.compiler import CompileOptions, compile_checkpoint
from tests.cli import assert_one_error, run_cli
from tests.parallel.conftest import compile_tp

O_PROJ = "model.layers.1.self_attn.o_proj.weight"


def test_shards_are_in_the_one_archive(tiny_checkpoint, tp_artifacts):
    """o_proj (row-parallel) shard i is its in-features block i; replicated weights are stored once."""
    params = read_params(tp_artifacts(2) / "model.irpa")
    w = load_file(tiny_checkpoint / "model.safetensors")
    for i in range(2):
        got = np.asarray(params[f"{O_PROJ}.shard{i}"]).reshape(64, 32)
        np.testing.assert_array_equal(got, w[O_PROJ][:, 32 * i:32 * (i + 1)])
    assert O_PROJ not in params  # only its shards are read
    assert "model.embed_tokens.weight" in params and "model.embed_tokens.weight.shard0" not in params


def test_lowered_module_places_everything(tiny_checkpoint, tmp_path):
    out = tmp_path / "tp2.mlir"
    compile_checkpoint(CompileOptions(tiny_checkpoint, out, opt_level=2, tp=2, emit="iree-input"), progress=None)
    text = out.read_text()
    globals_ = re.findall(r'util\.global private (\S+) \{stream\.affinity = #hal\.device\.promise<@__device_(\d)>\} '
                          r'= #stream\.parameter\.named<"model"::"([^"]+)">', text)
    assert globals_ and len(globals_) == text.count("util.global private")  # every weight pinned
    by_key: dict[str, set[str]] = {}
    for _, dev, key in globals_:
        by_key.setdefault(key, set()).add(dev)
    assert by_key["model.embed_tokens.weight"] == {"0", "1"}  # replicated: one global per device
    assert by_key[f"{O_PROJ}.shard0"] == {"0"} and by_key[f"{O_PROJ}.shard1"] == {"1"}
    decode = text[text.index("func.func @decode("):]
    head = decode[:decode.index("{\n")]
    for i, r in ((3, 1), (4, 2)):  # one pool per device, tied to its result
        assert f"%arg{i}: tensor<?x2x2x16x1x16xf32> {{iree.abi.affinity = #hal.device.promise<@__device_{i - 3}>, " \
               f"iree.abi.output = {r} : index}}" in head
    body = decode[:decode.index("\n}\n")]
    moved = re.findall(r"flow\.tensor\.transfer (%arg\d) : [^\n]*? to #hal\.device\.promise<@__device_(\d)>", body)
    assert sorted(moved) == [("%arg0", "1"), ("%arg1", "1"), ("%arg2", "1")]  # each shared argument once
    # 2 layers x 2 all-reduces x 2 devices + the gather: one barrier each
    assert body.count("flow.tensor.barrier") == 2 * 2 * 2 + 1


def test_manifest_and_inspect_show_the_devices(tp_artifacts):
    art = tp_artifacts(2)
    m = read_manifest(art)
    assert m.target.extra["devices"] == {"count": 2, "kind": "local", "parallelism": "tensor"}
    assert m.kv.extra == {"pools": 2, "pool_kv_heads": 1}
    assert m.entry_points["decode"]["args"][-2:] == ["pool@0", "pool@1"]
    assert "--iree-hal-target-device=__device_1=local[1]" in m.target.flags
    res = run_cli("inspect", art)
    assert res.exit_code == 0, res.output
    assert "parallel   tensor parallelism over 2 'local' devices; one KV pool per device (1 KV head each)" \
        in res.stdout
    data = json.loads(run_cli("inspect", art, "--json").stdout)
    assert data["target"]["devices"]["count"] == 2 and data["kv"]["pools"] == 2


def test_one_device_artifact_has_no_device_record(tp_artifacts):
    m = read_manifest(tp_artifacts(1))
    assert "devices" not in m.target.extra and "pools" not in m.kv.extra
    assert "parallel" not in run_cli("inspect", tp_artifacts(1)).stdout


def test_run_over_a_device_list(tp_artifacts):
    args = ("--prompt-ids", "1,5,9", "--max-tokens", "6", "--json")
    default = run_cli("run", tp_artifacts(2), *args)
    listed = run_cli("run", tp_artifacts(2), *args, "--device", "local-task,local-task")
    one = run_cli("run", tp_artifacts(1), *args)
    assert default.exit_code == listed.exit_code == one.exit_code == 0, default.output + listed.output
    ids = [json.loads(r.stdout)[0]["token_ids"] for r in (default, listed, one)]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 6
    assert_one_error(run_cli("run", tp_artifacts(2), *args, "--device", "local-task"),
                     "compiled for 2 devices", "names 1")


@pytest.mark.parametrize("extra, needle", [
    (("--tp", "3"), "do not split over 3 devices"),
    (("--tp", "0"), "--tp must be at least 1"),
    (("--tp", "2", "--target", "tpu-like"), "not tpu-like:host (static-shape buckets)"),
    (("--tp", "2", "--target", "vulkan"), "tensor parallelism compiles for cpu, cuda and rocm targets"),
    (("--tp", "2", "--quantize", "int8"), "--tp 2 with --quantize int8 is not supported"),
])
def test_unsupported_tp_is_one_error(tiny_checkpoint, tmp_path, extra, needle):
    assert_one_error(run_cli("compile", tiny_checkpoint, "-o", tmp_path / "out", "-q", *extra), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["cuda:sm_80", "cuda:sm_90", "rocm:gfx942"])
def test_gpu_tp2_artifacts_compile(tiny_checkpoint, tmp_path, target):
    """Compile only (about 10 s each here). The vmfb's device table names both devices, by
    ordinal, for the asked architecture (its "not found or unavailable" messages quote them)."""
    art = compile_tp(tiny_checkpoint, tmp_path / "art", 2, target=target)
    m = read_manifest(art)
    kind = m.target.device
    assert m.target.extra["devices"] == {"count": 2, "kind": kind, "parallelism": "tensor"}
    assert f"--iree-hal-target-device=__device_1={kind}[1]" in m.target.flags
    vmfb = (art / "model.vmfb").read_bytes()
    for i in range(2):
        found = re.search(rb"HAL device `__device_%d` not found or unavailable: ([^\n]*)" % i, vmfb)
        assert found and b"ordinal = %d : index" % i in found.group(1), found
        assert target.split(":")[1].encode() in found.group(1)
