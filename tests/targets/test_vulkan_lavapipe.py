"""Vulkan artifacts RUN here through Mesa's lavapipe (a CPU Vulkan driver) and match the CPU
artifact and transformers token for token.

.ci/run installs lavapipe (`apt-get install mesa-vulkan-drivers libvulkan1`); without a
Vulkan device these tests skip and say why. Compile ~6 s, run ~15-30 s (lavapipe is slow).
Only `vulkan:generic` is run: the named GPU profiles (rdna3, ampere, ...) assume their GPU's
subgroup size and give wrong results on lavapipe's 8-wide subgroups (docs/targets.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import llmirc
from llmirc.cli import main
from llmirc.runtime import Engine
from tests.reference import hf_greedy, hf_model

PROMPTS = [[1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8], [1, 250, 3], [1, 44, 45, 46, 47, 48]]
NEW_TOKENS = 32


def _vulkan_device_or_reason() -> str | None:
    import iree.runtime as rt

    if "vulkan" not in rt.query_available_drivers():
        return "this IREE runtime has no vulkan driver"
    try:
        devices = rt.get_driver("vulkan").query_available_devices()
    except (RuntimeError, ValueError) as e:
        return f"no Vulkan loader/ICD ({str(e).splitlines()[0][:120]}); install mesa-vulkan-drivers libvulkan1"
    if not devices:
        return "no Vulkan device (install Mesa lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)"
    return None


_REASON = _vulkan_device_or_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture(scope="module")
def vulkan(target_artifact):
    return target_artifact("vulkan:generic")


@pytest.fixture(scope="module")
def hf_runs(tiny_checkpoint):
    hf = hf_model(tiny_checkpoint)
    return [hf_greedy(hf, p, NEW_TOKENS)[0] for p in PROMPTS]


def test_greedy_tokens_match_transformers_and_cpu(vulkan, target_artifact, hf_runs):
    got = [c.token_ids for c in llmirc.load(vulkan).generate(PROMPTS, max_tokens=NEW_TOKENS, stop_token_ids=())]
    assert got == hf_runs
    cpu = llmirc.load(target_artifact("cpu", opt_level=2)).generate(PROMPTS, max_tokens=NEW_TOKENS,
                                                                     stop_token_ids=())
    assert got == [c.token_ids for c in cpu]


def test_logits_and_pool_match_the_cpu_artifact(vulkan, target_artifact):
    vk, cpu = Engine(vulkan, num_pages=8), Engine(target_artifact("cpu", opt_level=2), num_pages=8)
    assert "vulkan" in vk.device_uri and vk.manifest.target.extra["index_dtype"] == "i32"
    tokens, lens, tables = np.array([[1, 5, 9, 13], [1, 2, 0, 0]]), np.array([4, 2]), np.array([[1], [2]])
    for a, b in [(vk.prefill(tokens, lens, tables), cpu.prefill(tokens, lens, tables)),
                 (vk.decode(np.array([7, 3]), np.array([4, 2]), tables), cpu.decode(np.array([7, 3]),
                                                                                    np.array([4, 2]), tables))]:
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(vk.read_pool(), cpu.read_pool(), atol=1e-5)


def test_cli_run_picks_the_vulkan_driver(vulkan):
    res = CliRunner().invoke(main, ["run", str(vulkan), "--prompt-ids", "1,17,33", "--max-tokens", "4", "--json"])
    assert res.exit_code == 0, res.stderr
    res = CliRunner().invoke(main, ["run", str(vulkan), "--prompt-ids", "1,2", "--device", "local-task"])
    assert res.exit_code == 1 and "cannot run on driver 'local-task'; use one of: vulkan" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_artifact_matches_the_cpu_one(target_artifact, scheme):
    """--quantize on vulkan:generic: same greedy tokens as the CPU artifact with the same quantized weights
    (~10 s to compile for Vulkan, ~30 s for the CPU reference)."""
    vk = llmirc.load(target_artifact("vulkan:generic", quantize=scheme))
    cpu = llmirc.load(target_artifact("cpu", quantize=scheme))
    assert [c.token_ids for c in vk.generate(PROMPTS, max_tokens=16, stop_token_ids=())] == \
        [c.token_ids for c in cpu.generate(PROMPTS, max_tokens=16, stop_token_ids=())]
