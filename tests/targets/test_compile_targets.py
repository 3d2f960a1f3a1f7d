"""Every target profile compiles the tiny checkpoint to a complete artifact.

Each compile takes about 7-25 s on the 2-core CI machine (the test summary prints the
times): one variant per family runs by default, the other variants are marked slow
(`pytest -m slow tests/targets`). Running needs the device: the artifacts of targets
that are absent here (CUDA, ROCm, Metal) must fail `llmirc run` with one clear error.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmirc.artifacts import read_manifest
from llmirc.cli import main
from llmirc.targets import resolve

from tests.targets.shared import TPU_BUCKETS

FAST = ["cuda:sm_80", "cuda:sm_90", "rocm:gfx942", "vulkan:generic", "tpu-like:host", "metal:macos"]
SLOW = ["cpu:neoverse-n1", "cpu:aarch64-generic", "cuda:sm_86", "cuda:sm_89", "rocm:gfx90a", "rocm:gfx1100",
        "vulkan:rdna3", "vulkan:ampere", "vulkan:valhall", "vulkan:adreno", "tpu-like:vmvx"]
# Bytes the vmfb must hold for the architecture it claims (PTX / AMDGPU code object / MSL text).
MARKERS = {"cuda": lambda v: f".target {v}".encode(), "rocm": lambda v: v.encode(),
           "metal": lambda v: b"metal_stdlib"}


def _kwargs(target: str) -> dict:
    return {"buckets": TPU_BUCKETS} if target.startswith("tpu-like") else {}


def _check_complete(art, target: str) -> None:
    p = resolve(target)
    m = read_manifest(art)  # also verifies every file's sha256
    assert (m.target.name, m.target.variant, m.target.device, m.target.driver) == (p.name, p.variant, p.device,
                                                                                 p.driver)
    assert m.target.flags == p.compile_flags(3) and m.target.extra["attention"] == p.attention
    assert {"model.vmfb", "model.irpa", "tokenizer.json"} <= set(m.files)
    assert m.kv.page_size == p.page_size and m.model.num_layers == 2
    vmfb = (art / "model.vmfb").read_bytes()
    assert len(vmfb) > 10_000
    if p.name in MARKERS:
        assert MARKERS[p.name](p.variant) in vmfb
    if p.index_dtype != "i64":
        assert m.target.extra["index_dtype"] == p.index_dtype
        assert m.entry_points["decode"]["args"][0] == f"tokens:{p.index_dtype}[B]"
    if p.static_shapes:
        assert m.target.extra["buckets"] == {"batch": [1, 4], "prefill_len": [16, 64], "pages_per_seq": 8,
                                             "num_pages": 33}
        assert m.entry_points["decode"]["functions"] == ["decode_b1", "decode_b4"]


@pytest.mark.parametrize("target", FAST)
def test_compile_default_variants(target_artifact, target):
    _check_complete(target_artifact(target, **_kwargs(target)), target)


@pytest.mark.slow
@pytest.mark.parametrize("target", SLOW)
def test_compile_other_variants(target_artifact, target):
    _check_complete(target_artifact(target, **_kwargs(target)), target)


def test_every_variant_is_covered():
    from llmirc.targets import all_profiles

    x86_cross = {"cpu:generic", "cpu:haswell", "cpu:znver3", "cpu:znver4", "cpu:sapphirerapids"}
    # cpu:host is compiled by tests/e2e; the x86-64 CPU variants differ from it only in one LLVM flag
    assert {p.full_name for p in all_profiles()} == set(FAST) | set(SLOW) | {"cpu:host"} | x86_cross


def test_cli_compile_json_names_target(tiny_checkpoint, tmp_path):
    out = tmp_path / "a.mlir"  # the full CLI compile path is the same as the API's (tests/e2e)
    res = CliRunner().invoke(main, ["compile", str(tiny_checkpoint), "--target", "rocm", "-o", str(out),
                                    "--emit", "iree-input", "--json", "-q"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["target"] == "rocm:gfx942"
    assert "iree_linalg_ext.attention" in out.read_text()  # rocm: fused attention


def _device_present(driver: str) -> bool:
    import iree.runtime as rt

    if driver not in rt.query_available_drivers():
        return False
    try:
        rt.get_device(driver)
        return True
    except (RuntimeError, ValueError):
        return False


@pytest.mark.parametrize("target,needle", [
    ("cuda:sm_80", "needs a cuda device (target 'cuda', driver 'cuda'), which is not present on this machine"),
    ("rocm:gfx942", "needs a hip device (target 'rocm', driver 'hip')"),
    ("metal:macos", "this IREE runtime has no 'metal' driver"),
])
def test_running_an_absent_device_is_one_clear_error(target_artifact, target, needle):
    driver = resolve(target).driver
    if _device_present(driver):
        pytest.skip(f"a {driver} device is present on this machine")
    res = CliRunner().invoke(main, ["run", str(target_artifact(target)), "--prompt-ids", "1,2,3"])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the artifact needs") and needle in lines[0], lines


def test_device_flag_must_suit_the_artifact(target_artifact):
    art = target_artifact("cuda:sm_80")
    res = CliRunner().invoke(main, ["run", str(art), "--prompt-ids", "1,2", "--device", "local-task"])
    assert res.exit_code == 1 and "cannot run on driver 'local-task'; use one of: cuda" in res.stderr
