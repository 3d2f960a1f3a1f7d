"""The architecture registry: one module per model family, each declaring only what differs.

A family names the `architectures` strings of config.json it serves, the config keys it
reads beyond the common ones (config_keys.READ), and turns them into block choices of the
one decoder builder (frontend/decoder.py): biases, per-head q/k norms, the attention
window. Adding a Llama-shaped family is adding a module with one `Family` record; a family
whose checkpoints name or lay out tensors otherwise (GPT-2, Falcon) also says where each IR
weight lies (`tensor_sources`) and how its config.json spells the common keys (`common_keys`).
"""

from __future__ import annotations

from ...errors import CheckpointError
from .base import Family, TensorSource, flag


def _registry() -> dict[str, Family]:
    from . import falcon, gemma, gemma2, gpt2, llama, mistral, mixtral, phi3, qwen2, qwen3

    families = [llama.FAMILY, mistral.FAMILY, qwen2.FAMILY, qwen3.FAMILY, gemma.FAMILY, gemma2.FAMILY, phi3.FAMILY,
                gpt2.FAMILY, falcon.FAMILY, mixtral.FAMILY]
    return {arch: f for f in families for arch in f.architectures}


FAMILIES: dict[str, Family] = _registry()  # architecture string -> family


def family_for(architecture: str, where: str) -> Family:
    family = FAMILIES.get(architecture)
    if family is None:
        raise CheckpointError(f"{where}: architecture '{architecture}' is not supported "
                              f"(supported: {', '.join(FAMILIES)}; see `llmirc models`)")
    return family


__all__ = ["FAMILIES", "Family", "TensorSource", "family_for", "flag"]
