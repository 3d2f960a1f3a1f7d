"""Artifact directories: manifest round trip, atomic bundle writes, and every refusal."""

import json
from pathlib import Path

import numpy as np
import pytest

from llmirc.artifacts import (
    Manifest,
    read_manifest,
    read_params,
    sha256_file,
    write_bundle,
)
from llmirc.errors import ArtifactError

MODEL = {"architecture": "LlamaForCausalLM", "vocab_size": 64, "hidden_size": 16, "num_layers": 2, "num_heads": 2,
         "num_kv_heads": 1, "head_dim": 8, "max_seq_len": 32, "bos_token_id": 1, "eos_token_id": [2]}
TARGET = {"name": "cpu", "variant": "host", "device": "local", "driver": "local-task",
          "flags": ["--iree-hal-target-device=local"]}
KV = {"page_size": 4, "dtype": "f32"}
PARAMS = {"embed.weight": np.arange(64 * 16, dtype=np.float32).reshape(64, 16),
          "norm.weight": np.ones(16, np.float16)}


def _bundle(out: Path, vmfb: bytes = b"not really a vmfb", **kw) -> Manifest:
    return write_bundle(out, vmfb, PARAMS, model=MODEL, target=TARGET, kv=KV, opt_level=2,
                        source={"checkpoint": "/ckpt"}, **kw)


@pytest.fixture
def artifact(tmp_path) -> Path:
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"fake": "tokenizer"}')
    _bundle(tmp_path / "art", tokenizer_files=[tok, tmp_path / "tokenizer_config.json"])  # 2nd one is absent
    return tmp_path / "art"


def _edit_manifest(art: Path, edit) -> None:
    data = json.loads((art / "manifest.json").read_text())
    edit(data)
    (art / "manifest.json").write_text(json.dumps(data))


def test_bundle_lists_and_hashes_every_file(artifact):
    m = read_manifest(artifact)
    assert set(m.files) == {"model.vmfb", "model.irpa", "tokenizer.json"}
    for name, digest in m.files.items():
        assert sha256_file(artifact / name) == digest
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.irpa", "model.vmfb", "tokenizer.json"]
    assert m.model.num_kv_heads == 1 and m.kv.page_size == 4 and m.target.driver == "local-task"
    assert m.kv.layout == ["page", "layer", "kv", "slot", "kv_head", "head_dim"]
    assert set(m.entry_points) == {"prefill", "extend", "extend_all", "decode"}
    assert m.compiler["llmirc"]
    params = read_params(artifact / "model.irpa")
    np.testing.assert_array_equal(params["embed.weight"], PARAMS["embed.weight"])
    np.testing.assert_array_equal(params["norm.weight"], PARAMS["norm.weight"])


def test_manifest_json_round_trip_keeps_unknown_keys(artifact):
    _edit_manifest(artifact, lambda d: d["model"].update(rope_theta=10000.0))
    text = (artifact / "manifest.json").read_text()
    m = Manifest.from_json(text)
    assert m.model.extra == {"rope_theta": 10000.0}
    assert json.loads(m.to_json()) == json.loads(text)


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_manifest(tmp_path / "nope")


def test_missing_manifest(tmp_path):
    with pytest.raises(ArtifactError, match=r"manifest.json not found.*llmirc compile"):
        read_manifest(tmp_path)


def test_manifest_not_json(artifact):
    (artifact / "manifest.json").write_text("{ this is not json")
    with pytest.raises(ArtifactError, match=r"manifest.json is not valid JSON \(line 1"):
        read_manifest(artifact)


@pytest.mark.parametrize("key,known", [("abi_version", "1 or 2"), ("format_version", "1")])
def test_unknown_versions(artifact, key, known):
    _edit_manifest(artifact, lambda d: d.update({key: 3}))
    with pytest.raises(ArtifactError, match=f"has {key} 3 but this llmirc only reads {key} {known}"):
        read_manifest(artifact)


def test_abi_v2_needs_extend(artifact):
    _edit_manifest(artifact, lambda d: d["entry_points"].pop("extend"))
    with pytest.raises(ArtifactError, match="missing 'entry_points.extend'"):
        read_manifest(artifact)


@pytest.mark.parametrize("path", ["model.vocab_size", "kv.page_size", "target.driver", "entry_points", "opt_level"])
def test_missing_keys_are_named(artifact, path):
    def drop(d):
        *parents, leaf = path.split(".")
        for p in parents:
            d = d[p]
        del d[leaf]
    _edit_manifest(artifact, drop)
    with pytest.raises(ArtifactError, match=f"missing '{path}'"):
        read_manifest(artifact)


def test_wrong_kv_layout_is_another_abi(artifact):
    _edit_manifest(artifact, lambda d: d["kv"].update(layout=["layer", "page", "kv", "slot", "kv_head", "head_dim"]))
    with pytest.raises(ArtifactError, match="kv.layout"):
        read_manifest(artifact)


def test_missing_irpa(artifact):
    (artifact / "model.irpa").unlink()
    with pytest.raises(ArtifactError, match=r"model.irpa is listed in manifest.json but missing"):
        read_manifest(artifact)


def test_edited_vmfb_fails_checksum(artifact):
    with open(artifact / "model.vmfb", "r+b") as f:
        f.write(b"X")
    with pytest.raises(ArtifactError, match=r"model.vmfb does not match its sha256"):
        read_manifest(artifact)
    read_manifest(artifact, verify_checksums=False)  # presence-only check still passes


def test_rewrite_replaces_an_old_artifact(artifact):
    _bundle(artifact, vmfb=b"second version")
    assert (artifact / "model.vmfb").read_bytes() == b"second version"
    assert "tokenizer.json" not in read_manifest(artifact).files
    assert [p.name for p in artifact.parent.iterdir() if p.name.startswith(".")] == []


def test_failed_write_leaves_the_old_artifact_and_no_temp_dirs(artifact):
    before = (artifact / "manifest.json").read_text()
    with pytest.raises(TypeError, match="'bad'"):
        write_bundle(artifact, b"new", {"bad": [1, 2, 3]}, model=MODEL, target=TARGET, kv=KV, opt_level=2)
    assert (artifact / "manifest.json").read_text() == before
    read_manifest(artifact)
    assert [p.name for p in artifact.parent.iterdir() if p.name.startswith(".")] == []


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_bundle(tmp_path / "new", b"x", {"bad": "no"}, model=MODEL, target=TARGET, kv=KV, opt_level=2)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_directory_that_is_not_an_artifact(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="is not an llmirc artifact"):
        _bundle(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_bad_manifest_fields_are_refused_before_writing(tmp_path):
    with pytest.raises(ArtifactError, match="kv.page_size"):
        write_bundle(tmp_path / "a", b"x", PARAMS, model=MODEL, target=TARGET, kv={"page_size": 0, "dtype": "f32"},
                     opt_level=2)
    assert list(tmp_path.iterdir()) == []
