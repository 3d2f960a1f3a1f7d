"""Every broken checkpoint gives one clear error line, exit 1, and no output file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmirc.cli import main


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _rewrite_tensors(d: Path, fn) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    save_file(fn(tensors), d / "model.safetensors")


def _shard(d: Path) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}))
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")


BREAKAGES = {
    "missing-config": (lambda d: (d / "config.json").unlink(), "missing config.json"),
    "bad-json": (lambda d: (d / "config.json").write_text("{not json"), "config.json: not valid JSON"),
    "unsupported-arch": (lambda d: _edit_config(d, architectures=["BertForMaskedLM"]),
                         "architecture 'BertForMaskedLM' is not supported"),
    "missing-tensor": (lambda d: _rewrite_tensors(d, lambda t: {k: v for k, v in t.items()
                                                                   if "layers.1.mlp.up_proj" not in k}),
                       "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    "wrong-shape": (lambda d: _rewrite_tensors(d, lambda t: t | {"model.norm.weight": t["model.norm.weight"][:32]}),
                    "tensor 'model.norm.weight' has shape [32], expected [64]"),
    "truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
                  "truncated safetensors file"),
    "index-missing-shard": (_shard, "names shard 'model-00002-of-00002.safetensors', which does not exist"),
    "no-weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "unsupported-rope": (lambda d: _edit_config(d, rope_scaling={"rope_type": "ntk-by-parts", "factor": 4.0}),
                         "rope_scaling type 'ntk-by-parts' is not supported"),
    "unsupported-rope-v5": (lambda d: _edit_config(d, rope_parameters={"rope_type": "proportional",
                                                                       "rope_theta": 1e4}),
                            "rope_parameters type 'proportional' is not supported"),
    "partial-rotary": (lambda d: _edit_config(d, partial_rotary_factor=0.5),
                       "partial_rotary_factor 0.5 is not supported"),
    "unknown-layer-type": (lambda d: _edit_config(d, layer_types=["full_attention", "chunked_attention"]),
                           "layer_types 'chunked_attention' is not supported"),
    "unsupported-act": (lambda d: _edit_config(d, hidden_act="relu2"), "hidden_act 'relu2' is not supported"),
    "falcon-alibi": (lambda d: _edit_config(d, architectures=["FalconForCausalLM"], model_type="falcon", alibi=True),
                     "alibi True (ALiBi attention biases) is not supported"),
    "bad-gqa": (lambda d: _edit_config(d, num_key_value_heads=3),
                "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
}


@pytest.mark.parametrize("emit", ["llm", "vmfb"])
@pytest.mark.parametrize("case", list(BREAKAGES))
def test_broken_checkpoint_one_clear_error(checkpoint_copy, tmp_path, case, emit):
    breakage, message = BREAKAGES[case]
    breakage(checkpoint_copy)
    out = tmp_path / ("model.mlir" if emit == "llm" else "artifact")
    result = CliRunner().invoke(main, ["compile", str(checkpoint_copy), "--emit", emit, "-o", str(out), "-q"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_missing_checkpoint_dir(tmp_path):
    result = CliRunner().invoke(main, ["compile", str(tmp_path / "nope"), "--emit", "llm", "-o", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "checkpoint directory does not exist" in result.stderr
