"""Target profiles as data: resolve, listing, errors, flags (fast: no iree-compile)."""

from __future__ import annotations

import json

import pytest

from tests.cli import assert_one_error, run_cli
from llmirc.runtime.engine import DRIVERS_FOR_DEVICE
from llmirc.pipelines.quantize_weights import SCHEMES
from llmirc.targets import TARGETS, Buckets, TargetError, all_profiles, resolve

FAMILIES = {"cpu", "cuda", "rocm", "vulkan", "tpu-like", "metal"}


def test_every_family_is_registered_with_its_variants():
    assert set(TARGETS) == FAMILIES
    assert set(TARGETS["cuda"][1]) == {"sm_80", "sm_86", "sm_89", "sm_90"}
    assert set(TARGETS["rocm"][1]) == {"gfx90a", "gfx942", "gfx1100"}
    assert set(TARGETS["vulkan"][1]) == {"generic", "rdna3", "ampere", "valhall", "adreno"}
    assert {"host", "neoverse-n1", "aarch64-generic"} <= set(TARGETS["cpu"][1])


@pytest.mark.parametrize("profile", all_profiles(), ids=lambda p: p.full_name)
def test_profile_is_consistent(profile):
    """Device and driver agree with the runtime's table; flags name the device; sane fields."""
    assert profile.driver in DRIVERS_FOR_DEVICE[profile.device]
    assert f"--iree-hal-target-device={profile.device}" in profile.flags
    assert profile.attention in ("decomposed", "fused")
    assert profile.dtypes and set(profile.dtypes) <= {"f32", "f16", "bf16"}
    assert set(profile.quantize) <= set(SCHEMES)
    assert profile.page_size > 0 and profile.index_dtype in ("i32", "i64")
    assert profile.static_shapes == (profile.buckets is not None)
    assert resolve(profile.full_name) == profile


def test_defaults_and_strategies():
    assert resolve("cuda").full_name == "cuda:sm_80" and resolve("rocm").full_name == "rocm:gfx942"
    assert resolve("vulkan").full_name == "vulkan:generic" and resolve("tpu-like").full_name == "tpu-like:host"
    # docs/attention-strategy.md: fused is faster on CUDA, fails to compile on Vulkan/Metal, slower on CPU
    assert resolve("cuda:sm_90").attention == "fused" and resolve("rocm:gfx90a").attention == "fused"
    assert {resolve(f"vulkan:{v}").attention for v in TARGETS["vulkan"][1]} == {"decomposed"}
    assert resolve("cpu").attention == "decomposed" and resolve("metal").attention == "decomposed"
    assert resolve("cuda:sm_86").flags == ("--iree-hal-target-device=cuda", "--iree-cuda-target=sm_86")
    assert resolve("rocm:gfx1100").flags == ("--iree-hal-target-device=hip", "--iree-rocm-target=gfx1100")
    assert "--iree-llvmcpu-target-triple=aarch64-unknown-linux-gnu" in resolve("cpu:neoverse-n1").flags


def test_sm_90_gets_an_explicit_gpu_target_description():
    sm90, sm80 = resolve("cuda:sm_90"), resolve("cuda:sm_80")
    assert sm80.device_target_attr is None and sm80.module_text("module {\n}\n") == "module {\n}\n"
    text = sm90.module_text("module {\n  func.func @f() {\n    return\n  }\n}\n")
    assert text.startswith('module attributes {hal.device.targets = [#hal.device.target<"cuda"')
    assert 'arch = "sm_90"' in text and 'features = "+ptx78"' in text and "func.func @f()" in text


def test_vulkan_i32_targets():
    for v, demoted in [("generic", True), ("valhall", True), ("adreno", True), ("rdna3", False), ("ampere", False)]:
        p = resolve(f"vulkan:{v}")
        assert ("--iree-input-demote-i64-to-i32" in p.flags) == demoted
        assert p.index_dtype == ("i32" if demoted else "i64")


def test_tpu_like_is_static_and_tiled():
    p = resolve("tpu-like")
    assert p.static_shapes and p.systolic_tile == 128 and "bf16" in p.dtypes
    assert p.buckets.resolve(max_seq_len=128, page_size=16) == {
        "batch": [1, 4], "prefill_len": [32, 128], "pages_per_seq": 8, "num_pages": 33}
    assert p.buckets.resolve(max_seq_len=4096, page_size=16)["prefill_len"] == [32, 128, 512, 2048, 4096]


def test_bucket_spec_parsing_and_errors():
    b = Buckets.parse("batch=2,1;len=16,64;pages=40")
    assert b.resolve(128, 16) == {"batch": [1, 2], "prefill_len": [16, 64], "pages_per_seq": 8, "num_pages": 40}
    assert Buckets.parse("len=64", Buckets(batch=(3,))).batch == (3,)
    for bad, needle in [("batch=", "positive"), ("size=4", "cannot read"), ("len=a,b", "integers"),
                        ("pages=1,2", "one integer"), ("batch=0", "positive")]:
        with pytest.raises(TargetError, match=needle):
            Buckets.parse(bad)
    with pytest.raises(TargetError, match="max_seq_len"):
        Buckets(prefill_len=(256,)).resolve(128, 16)
    with pytest.raises(TargetError, match="at least 9"):
        Buckets(num_pages=4).resolve(128, 16)


def test_targets_listing_text_and_json():
    res = run_cli("targets")
    assert res.exit_code == 0
    for name in ("cpu:host", "cuda:sm_90", "rocm:gfx1100", "vulkan:valhall", "tpu-like:host", "metal:macos"):
        assert name in res.stdout
    data = {r["name"]: r for r in json.loads(run_cli("targets", "--json").stdout)}
    assert set(data) == FAMILIES
    assert data["tpu-like"]["static_shapes"] and data["cuda"]["driver"] == "cuda"
    assert [p["variant"] for p in data["rocm"]["profiles"]] == ["gfx90a", "gfx942", "gfx1100"]


@pytest.mark.parametrize("target,needle", [
    ("tpu", "unknown target 'tpu'"),
    ("cuda:sm_75", "unknown cuda GPU architecture 'sm_75' (known: sm_80, sm_86, sm_89, sm_90)"),
    ("rocm:gfx908", "unknown rocm GPU architecture 'gfx908'"),
    ("vulkan:mali", "unknown vulkan GPU architecture 'mali'"),
    ("cpu:pentium2", "unknown cpu variant 'pentium2'"),
])
def test_unknown_target_or_arch_is_one_clear_error(tiny_checkpoint, tmp_path, target, needle):
    res = run_cli("compile", tiny_checkpoint, "--target", target, "-o", tmp_path / "a")
    assert_one_error(res, needle)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("args,needle", [
    (["--target", "vulkan", "--dtype", "f16"], "unsupported dtype 'f16' for target vulkan:generic (supported: f32)"),
    (["--target", "metal", "--quantize", "int4"], "unsupported quantization 'int4' for target metal:macos"),
    (["--target", "tpu-like", "--quantize", "int4"], "unsupported quantization 'int4' for target tpu-like:host"),
    (["--target", "tpu-like", "--dtype", "f16"], "unsupported dtype 'f16' for target tpu-like:host"),
    (["--target", "vulkan:rdna3", "--quantize", "int4"], "unsupported quantization 'int4' for target vulkan:rdna3"),
    (["--target", "cpu", "--buckets", "batch=1"], "--buckets is for static-shape targets"),
    (["--target", "tpu-like", "--buckets", "len=999"], "prefill length buckets must be in 1..128"),
])
def test_unsupported_option_for_target_is_one_clear_error(tiny_checkpoint, tmp_path, args, needle):
    res = run_cli("compile", tiny_checkpoint, "-o", tmp_path / "a", "-q", *args)
    assert_one_error(res, needle)
    assert not (tmp_path / "a").exists()


def test_sm_90_iree_input_carries_the_target(tiny_checkpoint, tmp_path):
    out = tmp_path / "sm90.mlir"
    res = run_cli("compile", tiny_checkpoint, "--target", "cuda:sm_90", "--emit", "iree-input", "-o", out, "-q")
    assert res.exit_code == 0, res.stderr
    text = out.read_text()
    assert text.startswith("module attributes {hal.device.targets = [") and "iree_linalg_ext.attention" in text


def test_tpu_like_iree_input_is_static_and_padded(tiny_checkpoint, tmp_path):
    out = tmp_path / "tpu.mlir"
    res = run_cli("compile", tiny_checkpoint, "--target", "tpu-like", "--emit", "iree-input", "-o", out, "-q",
               "--buckets", "batch=1,2;len=16,64")
    assert res.exit_code == 0, res.stderr
    text = out.read_text()
    heads = [ln.split("(")[0].strip() for ln in text.splitlines() if ln.strip().startswith("func.func")]
    assert heads == ["func.func @prefill_b1_t16", "func.func @prefill_b1_t64", "func.func @prefill_b2_t16",
                     "func.func @prefill_b2_t64", "func.func @extend_b1_t16", "func.func @extend_b1_t64",
                     "func.func @extend_b2_t16", "func.func @extend_b2_t64", "func.func @decode_b1",
                     "func.func @decode_b2"]
    assert "tensor.dim" not in text and "?x" not in text  # every shape static
    assert "tensor<2x64xi64>, %arg1: tensor<2xi64>, %arg2: tensor<2x8xi64>, %arg3: tensor<17x2x2x16x2x16xf32>" in text
    # hidden 64 -> K padded to 128; vocab 300 -> N padded to 384; 2x16 rows are already a multiple of 8
    assert "high[0, 64]" in text and "high[84, 64]" in text
    assert "iree_linalg_ext.attention" not in text
