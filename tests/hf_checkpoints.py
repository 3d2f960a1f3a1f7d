"""Checkpoints made and saved by transformers itself (`save_pretrained`, the installed version).

Our own writer (llmirc.testing.checkpoints) writes the layout we expect; these catch the
layout transformers writes today, so the next change of its config format fails the suite.
transformers' random init leaves norm weights at 1 and biases at 0, which cannot tell a
missing norm or bias from a present one: both get noise here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.05, bos_token_id=1,
             eos_token_id=2)
# the same sizes in the keys of families that spell them otherwise (a key the family does not
# read would be written to config.json and warn)
SMALL_BY_TYPE = {
    "gpt2": dict(vocab_size=300, n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=128,
                 initializer_range=0.05, bos_token_id=1, eos_token_id=2),
    "falcon": dict(vocab_size=300, hidden_size=64, ffn_hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_kv_heads=2, max_position_embeddings=128, initializer_range=0.05, bos_token_id=1,
                   eos_token_id=2),
}


def save_hf_model(directory: Path, model_type: str = "llama", seed: int = 0, base_model: bool = False,
                  **config: Any) -> Path:
    """A tiny random `model_type` model (SMALL, overridden by `config`), perturbed, saved by
    transformers' save_pretrained into `directory`. `base_model` saves the model without its LM
    head (GPT2Model rather than GPT2LMHeadModel: tensor names without the `transformer.` prefix)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **(SMALL_BY_TYPE.get(model_type, SMALL) | config))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    perturb_norms_and_biases(model, seed)
    (model.base_model if base_model else model).save_pretrained(directory)
    return Path(directory)


def perturb_norms_and_biases(model, seed: int) -> None:
    """Norm weights 1 + 0.1 N(0,1) and biases 0.2 N(0,1) (LayerNorm biases too), so each one
    changes the output. A norm is found by its name or, for GPT-2's ln_1 / Falcon's ln_attn, by
    its module being a LayerNorm."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    layer_norms = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name and name.endswith("weight")) or name in layer_norms:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def to_transformers4_layout(directory: Path) -> dict[str, Any]:
    """Rewrite config.json as transformers 4 wrote it: top-level rope_theta, and rope_scaling
    (null for the default type, with the legacy `type` key otherwise). Returns the new config."""
    path = Path(directory) / "config.json"
    cfg = json.loads(path.read_text())
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    kind = rope.pop("rope_type")
    cfg["rope_scaling"] = None if kind == "default" else {"type": kind, **rope}
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    cfg["transformers_version"] = "4.46.0"
    path.write_text(json.dumps(cfg, indent=2))
    return cfg
