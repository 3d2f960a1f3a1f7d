"""`llmirc run` / `inspect` on a compiled artifact, and every broken-artifact error path."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli import assert_one_error, run_cli


def test_run_prompt_ids_json(cpu_artifact):
    res = run_cli("run", cpu_artifact / "model.vmfb", "--prompt-ids", "1,5,9", "--prompt-ids", "1,7",
               "--max-tokens", "5", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert [len(r["token_ids"]) for r in out] == [5, 5]


def test_run_text_prompt_streams(cpu_artifact):
    res = run_cli("run", cpu_artifact, "--prompt", "the compiler", "--max-tokens", "4")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip()


def test_inspect_words_and_json(cpu_artifact):
    res = run_cli("inspect", cpu_artifact)
    assert res.exit_code == 0 and "cpu" in res.stdout and "page" in res.stdout.lower()
    data = json.loads(run_cli("inspect", cpu_artifact, "--json").stdout)
    assert data["abi_version"] == 2 and data["kv"]["page_size"] == 8
    assert set(data["files"]) >= {"model.vmfb", "model.irpa", "tokenizer.json"}


def test_prompt_longer_than_model_maximum(cpu_artifact):
    ids = ",".join(["5"] * 200)  # the tiny model's max_seq_len is 128
    assert_one_error(run_cli("run", cpu_artifact, "--prompt-ids", ids), "128")


def test_page_pool_exhausted(cpu_artifact):
    assert_one_error(run_cli("run", cpu_artifact, "--prompt-ids", ",".join(["5"] * 40), "--num-pages", "3",
                    "--max-tokens", "8"), "--num-pages")


@pytest.fixture
def broken(cpu_artifact, tmp_path):
    return shutil.copytree(cpu_artifact, tmp_path / "art")


def _set_manifest(d, **changes):
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("case,needle", [
    ("edited-vmfb", "model.vmfb"),
    ("unknown-abi", "abi_version"),
    ("missing-irpa", "model.irpa"),
    ("checksum", "sha256"),
    ("truncated-vmfb-unchecked", "model.vmfb"),
    ("no-manifest", "manifest.json"),
])
def test_broken_artifact_one_clear_error(broken, case, needle):
    if case == "edited-vmfb":
        data = bytearray((broken / "model.vmfb").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (broken / "model.vmfb").write_bytes(bytes(data))
    elif case == "unknown-abi":
        _set_manifest(broken, abi_version=99)
    elif case == "missing-irpa":
        (broken / "model.irpa").unlink()
    elif case == "checksum":
        (broken / "tokenizer.json").write_text((broken / "tokenizer.json").read_text() + " ")
    elif case == "truncated-vmfb-unchecked":
        import hashlib

        data = (broken / "model.vmfb").read_bytes()[:1000]
        (broken / "model.vmfb").write_bytes(data)
        m = json.loads((broken / "manifest.json").read_text())
        m["files"]["model.vmfb"] = hashlib.sha256(data).hexdigest()
        (broken / "manifest.json").write_text(json.dumps(m))
    elif case == "no-manifest":
        (broken / "manifest.json").unlink()
    assert_one_error(run_cli("run", broken, "--prompt-ids", "1,2,3", "--max-tokens", "2"), needle)


def test_bench_json_report(cpu_artifact):
    res = run_cli("bench", cpu_artifact, "--prompt-len", "16", "--decode-steps", "4", "--batch", "1,2", "--reps", "2",
               "--json")
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.stdout)
    assert [d["batch"] for d in r["decode"]] == [1, 2]
    assert all(d["tokens_per_s"] > 0 and d["step_ms"]["min"] <= d["step_ms"]["median"] <= d["step_ms"]["max"]
               for d in r["decode"])
    assert r["ttft_ms"]["median"] > 0 and r["peak_rss_mib"] > 0 and 0 < r["pool_pages_used"] <= r["pool_pages"]


def test_bench_rejects_too_long(cpu_artifact):
    assert_one_error(run_cli("bench", cpu_artifact, "--prompt-len", "120", "--decode-steps", "32"), "exceed")
