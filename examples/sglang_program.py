"""An SGLang frontend program (`sgl.function`: gen with regex, select, fork, run_batch)
against `llmirc serve`, unmodified: the server speaks SGLang's native /generate protocol.
It runs on the embedded default model (a tiny model trained on the KJV bible).

Run it (from a clone, after README command 1 built build/default; `pip install -e '.[test]'`
installs the frontend, sglang==0.5.2):

    .venv/bin/llmirc serve build/default --served-model-name bible --port 8000
    .venv/bin/python examples/sglang_program.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import re

import sglang as sgl
from sglang import RuntimeEndpoint

REF = r"[0-9]{1,2}:[0-9]{1,2}"
NAME = r"[A-Z][a-z]{2,6}"
CHOICES = ["light", "darkness", "water", "the firmament"]


@sgl.function
def verse(s, book):
    s += book + " "
    s += sgl.gen("ref", max_tokens=10, regex=REF, temperature=1.0)         # constrained by a regex
    s += ". And God saw the " + sgl.select("seen", choices=CHOICES)        # ranked by prompt logprobs
    forks = s.fork(2)                                                      # two continuations of one prefix
    for i, f in enumerate(forks):
        f += f", and witness {i} was "
        f += sgl.gen("witness", max_tokens=10, regex=NAME, temperature=1.0)
    s["witnesses"] = [f["witness"] for f in forks]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    args = ap.parse_args(argv)
    backend = RuntimeEndpoint(args.url)
    states = verse.run_batch([{"book": b} for b in ("Genesis", "Exodus", "Psalms")], backend=backend,
                             num_threads=2)
    results = []
    for s in states:
        r = {"text": s.text(), "ref": s["ref"], "seen": s["seen"], "witnesses": s["witnesses"]}
        assert re.fullmatch(REF, r["ref"]) and r["seen"] in CHOICES
        assert all(re.fullmatch(NAME, w) for w in r["witnesses"])
        results.append(r)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
