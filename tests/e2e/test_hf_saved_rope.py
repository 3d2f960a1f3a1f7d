"""Checkpoints saved by the installed transformers, each rope type, both config layouts, compiled
at -O3 and compared with transformers: greedy tokens and last-step logits.

transformers 5 writes `rope_parameters`; transformers 4 wrote `rope_theta` + `rope_scaling`. A
frontend that reads one layout only silently falls back to theta 10000 and no scaling, so every
case also checks that the same weights with that fallback rope give other tokens: the
comparison can fail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmirc.frontend import load_config
from tests.e2e.conftest import compile_artifact
from tests.hf_checkpoints import save_hf_model, to_transformers4_layout
from tests.reference import check_artifact_against_transformers, hf_greedy, hf_model

PROMPTS = [[1, 17, 33, 5, 99, 7, 250, 12, 4, 61, 8], [1, 250, 3]]
NEW_TOKENS = 32

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 1000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32},
}
FALLBACK = {"rope_type": "default", "rope_theta": 10000.0}  # what a reader of the other layout gets


def _fallback_tokens(ckpt: Path, tmp: Path) -> list[list[int]]:
    """transformers' greedy tokens for the same weights with the fallback rope."""
    other = Path(shutil.copytree(ckpt, tmp / "fallback"))
    cfg = json.loads((other / "config.json").read_text())
    for key in ("rope_scaling", "rope_theta"):
        cfg.pop(key, None)
    cfg["rope_parameters"] = dict(FALLBACK)
    (other / "config.json").write_text(json.dumps(cfg))
    hf = hf_model(other)
    return [hf_greedy(hf, p, NEW_TOKENS)[0] for p in PROMPTS]


def _check_against_transformers(ckpt: Path, art: Path, tmp: Path, rope_matters: bool = True) -> None:
    ref_tokens = check_artifact_against_transformers(ckpt, art, PROMPTS, NEW_TOKENS)
    if rope_matters:
        assert _fallback_tokens(ckpt, tmp) != ref_tokens, "this rope does not change the answer"


def _case(tmp_path: Path, rope: str, layout: str) -> tuple[Path, dict]:
    ckpt = save_hf_model(tmp_path / "ckpt", "llama", seed=7, rope_parameters=dict(ROPES[rope]),
                         attention_bias=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == rope and "rope_scaling" not in cfg  # transformers 5's layout
    if layout == "transformers4":
        cfg = to_transformers4_layout(ckpt)
    return ckpt, cfg


@pytest.mark.parametrize("rope", list(ROPES))
def test_transformers5_layout_matches_transformers(tmp_path, rope):
    ckpt, _ = _case(tmp_path, rope, "transformers5")
    assert load_config(ckpt).warnings == ()  # every key transformers writes is known
    _check_against_transformers(ckpt, compile_artifact(ckpt, tmp_path / "art", opt_level=3), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("rope", list(ROPES))
def test_transformers4_layout_matches_transformers(tmp_path, rope):
    ckpt, cfg = _case(tmp_path, rope, "transformers4")
    assert "rope_parameters" not in cfg and "rope_theta" in cfg
    assert load_config(ckpt).warnings == ()
    _check_against_transformers(ckpt, compile_artifact(ckpt, tmp_path / "art", opt_level=3), tmp_path)
