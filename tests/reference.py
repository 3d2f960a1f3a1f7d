"""Independent reference numerics: Hugging Face transformers on torch CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def hf_model(checkpoint: Path):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()


def hf_last_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()


def hf_greedy(model, ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy continuation and the logits of the last step, computed by transformers."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             min_new_tokens=new_tokens, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None)
    return out.sequences[0, len(ids):].tolist(), out.logits[-1][0].float().numpy()
