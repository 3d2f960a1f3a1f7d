"""Structured output through the `openai` client against `llmirc serve`: a JSON schema, a
regex and a choice, on the embedded default model (a tiny model trained on the KJV bible,
whose free text is never JSON; the mask is what makes its output parse).

Run it (from a clone, after README command 1 built build/default):

    .venv/bin/llmirc serve build/default --served-model-name bible --port 8000
    .venv/bin/python examples/openai_structured.py --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import json
import re

from openai import OpenAI

SCHEMA = {
    "type": "object",
    "properties": {
        "book": {"enum": ["Genesis", "Exodus", "Psalms"]},
        "chapter": {"type": "integer", "minimum": 1, "maximum": 150},
        "words": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["book", "chapter", "words"],
    "additionalProperties": False,
}
REGEX = r"[A-Z][a-z]{2,8} [0-9]{1,3}:[0-9]{1,3}"
CHOICES = ["light", "darkness", "water"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default="bible")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    client = OpenAI(base_url=args.base_url, api_key="unused", timeout=120, max_retries=0)

    # OpenAI's response_format: the output is JSON that validates against the schema.
    r = client.completions.create(
        model=args.model, prompt="And God said", max_tokens=120, temperature=1.0, seed=args.seed,
        extra_body={"response_format": {"type": "json_schema",
                                        "json_schema": {"name": "verse", "schema": SCHEMA, "strict": True}}})
    record = json.loads(r.choices[0].text)
    # vLLM's structured_outputs (guided_regex works too): a verse reference.
    ref = client.completions.create(model=args.model, prompt="It is written in", max_tokens=30, temperature=1.0,
                                    seed=args.seed, extra_body={"structured_outputs": {"regex": REGEX}})
    # a choice: the output is exactly one of the strings
    pick = client.completions.create(model=args.model, prompt="And God saw the", max_tokens=8, temperature=0,
                                     extra_body={"structured_outputs": {"choice": CHOICES}})
    result = {"json_schema": record, "regex": ref.choices[0].text, "choice": pick.choices[0].text}
    assert re.fullmatch(REGEX, result["regex"]) and result["choice"] in CHOICES
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
