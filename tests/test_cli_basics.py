"""CLI basics: make-checkpoint, --emit llm, passes/targets listings, unknown target."""

from __future__ import annotations

import json

from click.testing import CliRunner

from llmirc.cli import main
from llmirc.frontend.decoder import ENTRY_FUNCTIONS
from llmirc.dialect import parse_module, print_module, verify_module


def test_make_checkpoint_then_emit_llm(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["testing", "make-checkpoint", str(tmp_path / "ck"), "--layers", "3", "--hidden", "32",
                          "--heads", "4", "--kv-heads", "1", "--vocab", "260", "--seed", "7", "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["num_key_value_heads"] == 1
    assert (tmp_path / "ck" / "tokenizer.json").is_file()
    out = tmp_path / "model.mlir"
    res = r.invoke(main, ["compile", str(tmp_path / "ck"), "--emit", "llm", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    text = out.read_text()
    module = parse_module(text)
    verify_module(module)
    assert print_module(module) == text
    assert text.count('"llm.attention"') == len(ENTRY_FUNCTIONS) * 3  # 3 layers
    assert '"llm.weight"() {name = "model.layers.2.mlp.down_proj.weight"}' in text
    assert "dense<" not in text  # weights are referenced by name, never inlined


def test_emit_llm_opt_has_paged_cache(tiny_checkpoint, tmp_path):
    out = tmp_path / "opt.mlir"
    res = CliRunner().invoke(main, ["compile", str(tiny_checkpoint), "--emit", "llm-opt", "-O0", "--page-size", "8",
                                    "-o", str(out), "--timing"])
    assert res.exit_code == 0, res.stderr
    assert "blockify-kv-cache" in res.stderr  # timing report
    assert "!llm.paged_kv_cache<2 : i64, 2 : i64, 16 : i64, 8 : i64, f32>" in out.read_text()


def test_unknown_target_is_one_clear_error(tiny_checkpoint, tmp_path):
    res = CliRunner().invoke(main, ["compile", str(tiny_checkpoint), "--target", "fpga", "-o", str(tmp_path / "a")])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == ["error: unknown target 'fpga' (known: "
                                               + res.stderr.split("(known: ")[1].strip()]
    assert not (tmp_path / "a").exists()


def test_unknown_cpu_variant(tiny_checkpoint, tmp_path):
    res = CliRunner().invoke(main, ["compile", str(tiny_checkpoint), "--target", "cpu:pentium2", "-o",
                                    str(tmp_path / "a")])
    assert res.exit_code == 1 and "unknown cpu variant 'pentium2'" in res.stderr


def test_passes_listing_json():
    res = CliRunner().invoke(main, ["passes", "--json"])
    data = json.loads(res.output)
    assert "blockify-kv-cache" in [p["name"] for p in data["passes"]]
    assert data["levels"]["O0"][0] == "blockify-kv-cache"


def test_dialect_irdl_file_verifies_model_with_iree_opt(tiny_checkpoint, tmp_path):
    from llmirc.dialect.irdl import check_with_irdl

    r = CliRunner()
    irdl = tmp_path / "llm.irdl.mlir"
    assert r.invoke(main, ["dialect", "--irdl", "-o", str(irdl)]).exit_code == 0
    model = tmp_path / "model.mlir"
    assert r.invoke(main, ["compile", str(tiny_checkpoint), "--emit", "llm", "-o", str(model)]).exit_code == 0
    ok, diag = check_with_irdl(model.read_text(), irdl.read_text())
    assert ok, diag
    broken = model.read_text().replace('{eps = 9.99999974E-6 : f32}', '', 1)
    ok, diag = check_with_irdl(broken, irdl.read_text())
    assert not ok and 'attribute "eps" is expected' in diag


def test_help_texts_explain_commands():
    r = CliRunner()
    top = r.invoke(main, ["--help"]).output
    for cmd in ("compile", "run", "inspect", "bench", "opt", "passes", "targets", "dialect", "testing"):
        assert cmd in top
    assert "--emit" in r.invoke(main, ["compile", "--help"]).output


def test_models_lists_every_registered_family():
    from llmirc.frontend.families import FAMILIES

    res = CliRunner().invoke(main, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {a for r in rows for a in r["architectures"]} == set(FAMILIES)
    assert all(r["summary"] and r["supports"] for r in rows)
