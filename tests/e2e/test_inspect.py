"""`llmirc inspect`: weights, sizes and devices of an intact artifact; everything wrong with a
damaged one (described, then one error line); a file is "not a directory"."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli import assert_one_error, run_cli


def test_inspect_shows_weights_sizes_and_devices(cpu_artifact):
    res = run_cli("inspect", cpu_artifact)
    assert res.exit_code == 0, res.stderr
    vmfb = (cpu_artifact / "model.vmfb").stat().st_size
    assert f"model.vmfb  {vmfb / 1024:.1f} KiB, sha256 " in res.stdout
    assert "weights    f32 matrices (--dtype auto)" in res.stdout.splitlines()
    assert "devices    local-task: local-task://0" in res.stdout and "local-sync:" in res.stdout
    data = json.loads(run_cli("inspect", cpu_artifact, "--json").stdout)
    assert data["inspect"]["problems"] == [] and data["inspect"]["file_sizes"]["model.vmfb"] == vmfb
    assert data["compiler"]["weights"] == {"dtype": "f32", "requested_dtype": "auto"}


@pytest.fixture
def damaged(cpu_artifact, tmp_path):
    return shutil.copytree(cpu_artifact, tmp_path / "art")


def test_inspect_lists_every_problem_of_a_damaged_artifact(damaged):
    (damaged / "model.irpa").unlink()
    (damaged / "tokenizer.json").write_text("{}")
    res = run_cli("inspect", damaged)
    assert_one_error(res, f"{damaged} is damaged: 2 problems (listed above)")
    assert "model      LlamaForCausalLM: 2 layers" in res.stdout  # still described
    assert "model.irpa  MISSING" in res.stdout
    assert f"{damaged / 'model.irpa'} is listed in manifest.json but missing" in res.stdout
    assert f"{damaged / 'tokenizer.json'} does not match its sha256" in res.stdout
    data = json.loads(run_cli("inspect", damaged, "--json").stdout)
    assert len(data["inspect"]["problems"]) == 2 and data["model"]["num_layers"] == 2


def test_inspect_describes_an_artifact_whose_manifest_is_broken(damaged):
    (damaged / "manifest.json").write_text("{not json")
    res = run_cli("inspect", damaged)
    assert_one_error(res, "is damaged: 1 problem")
    assert "manifest unreadable" in res.stdout and "manifest.json is not valid JSON (line 1" in res.stdout
    assert "model.vmfb  " in res.stdout  # what is there, with sizes


def test_a_regular_file_is_not_a_directory(cpu_artifact, tmp_path):
    assert_one_error(run_cli("inspect", cpu_artifact / "manifest.json"), "is a file, not an artifact directory")
    assert_one_error(run_cli("run", cpu_artifact / "tokenizer.json", "--prompt", "x"),
                     "is a file, not an artifact directory")
    assert_one_error(run_cli("inspect", tmp_path / "nope"), "does not exist")
