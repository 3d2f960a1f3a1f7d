"""The embedded default model (README command 1): compiled for this CPU, same text as transformers."""

from __future__ import annotations


import llmirc
from llmirc.cli import DEFAULT_MODEL


def test_default_model_generates_what_transformers_generates(default_artifact):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    hf = LlamaForCausalLM.from_pretrained(DEFAULT_MODEL, torch_dtype=torch.float32).eval()
    model = llmirc.load(default_artifact)
    for prompt in ["And the LORD said", "In the beginning"]:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
        (got,) = model.generate([prompt], max_tokens=24)
        assert model.encode(prompt) == ids[0].tolist()
        assert got.token_ids == ref[0, ids.shape[1]:].tolist()
        assert got.text == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)


def test_readme_command_1_prints_the_prompt_then_text_that_does_not_loop(default_artifact):
    """README command 1's `llmirc run` (its own arguments) on the default model: the prompt
    comes first, and no 4-word phrase repeats 3 times (greedy without the penalty does:
    "and the earth, and the earth, ...")."""
    import shlex
    from collections import Counter

    from tests.cli import run_cli
    from tests.test_readme import readme_commands

    args = shlex.split(readme_commands()[0].split("llmirc run ", 1)[1])[1:]  # drop the artifact path
    prompt = args[args.index("--prompt") + 1]
    res = run_cli("run", default_artifact, *args)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(prompt + " ") and len(res.stdout.split()) > len(prompt.split()) + 10
    words = res.stdout.split()
    phrases = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    assert max(phrases.values()) < 3, phrases.most_common(3)
    no_penalty = list(args)
    i = no_penalty.index("--repetition-penalty")
    del no_penalty[i:i + 2]
    looping = run_cli("run", default_artifact, *no_penalty).stdout.split()
    assert max(Counter(tuple(looping[i:i + 4]) for i in range(len(looping) - 3)).values()) >= 3  # the test can fail
