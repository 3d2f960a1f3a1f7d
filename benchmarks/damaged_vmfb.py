"""What a damaged, re-checksummed model.vmfb does to `llmirc run` (docs/abi.md, "Damaged modules").

Compiles the tiny test model (-O2), then for each of N byte offsets (8 fixed + random ones,
seeded) flips that byte, rewrites the vmfb's sha256 in manifest.json so the checksum check
passes, and runs `llmirc run ART --prompt-ids 1,2,3 --max-tokens 3` in a fresh process with an
empty module cache. Prints one line per offset and the tally: killed by a signal / one error
line / ran. The numbers in docs/abi.md come from `--flips 40`.

    .venv/bin/python benchmarks/damaged_vmfb.py [--flips 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from llmirc.compiler import CompileOptions, compile_checkpoint
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint

TINY = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=300, max_seq_len=128, seed=0)
FIXED_OFFSETS = (8, 16, 32, 64, 100, 200, 400, 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flips", type=int, default=40, help="random offsets besides the 8 fixed ones")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        art = root / "art"
        compile_checkpoint(CompileOptions(make_checkpoint(root / "ckpt", TINY), art, opt_level=2, page_size=8),
                           progress=None)
        data = (art / "model.vmfb").read_bytes()
        rng = random.Random(args.seed)
        offsets = sorted(set(FIXED_OFFSETS) | {rng.randrange(len(data)) for _ in range(args.flips)})
        env = dict(os.environ, LLMIRC_CACHE_DIR=str(root / "cache"))  # nothing is known to be safe
        tally: Counter = Counter()
        for off in offsets:
            bad = root / "bad"
            shutil.rmtree(bad, ignore_errors=True)
            shutil.copytree(art, bad)
            flipped = bytearray(data)
            flipped[off] ^= 0xFF
            (bad / "model.vmfb").write_bytes(bytes(flipped))
            manifest = json.loads((bad / "manifest.json").read_text())
            manifest["files"]["model.vmfb"] = hashlib.sha256(bytes(flipped)).hexdigest()
            (bad / "manifest.json").write_text(json.dumps(manifest))
            r = subprocess.run([sys.executable, "-m", "llmirc.cli", "run", str(bad), "--prompt-ids", "1,2,3",
                                "--max-tokens", "3", "-q"], capture_output=True, text=True, env=env, timeout=600)
            kind = "signal" if r.returncode < 0 else "error" if r.returncode else "ran"
            tally[kind] += 1
            last = (r.stderr.strip().splitlines() or [""])[-1]
            print(f"offset {off:7d}  rc {r.returncode:4d}  {kind:6}  {last[:140]}", flush=True)
        print(f"{len(offsets)} flips of a {len(data)}-byte vmfb: {tally['signal']} killed by a signal, "
              f"{tally['error']} one error line, {tally['ran']} ran")


if __name__ == "__main__":
    main()
