"""Run a module once in a child process before trusting it in this one.

Why: a vmfb whose bytes were damaged *and* whose sha256 in manifest.json was rewritten to
match passes every check we have, and IREE cannot verify it either. IREE's bytecode verifier
(run by `VmModule.mmap`) rejects a damaged VM program, but the dispatch code is native code
(on llvm-cpu an ELF shared object inside the vmfb) that the runtime loads and jumps into: a
damaged instruction kills the process with SIGSEGV, SIGILL or SIGBUS inside
`VmContext.invoke` (iree.runtime `FunctionInvoker.__call__`, IREE 3.13). Measured on a tiny
-O2 artifact: of 48 single-byte flips with the checksum rewritten, 20 crashed the process
that way, 8 were refused with an error and 20 ran; with this probe none crashed, 30 were
errors and 18 ran (docs/abi.md, "Damaged modules").

So before an Engine uses a module it has not seen, a child process loads it and calls every
entry point once on a one-token input. A crash there becomes an ArtifactError here. A
module that ran is remembered by its sha256 (a marker file in the user's cache), and the
compiler marks what it wrote, so the probe costs nothing on the usual compile-then-run path.
This catches code that breaks on first use; it cannot prove that every input is safe (only
a signature by a trusted compiler could).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from llmirc.errors import ArtifactError

PROBE_TIMEOUT_S = 1800  # a 7B f32 -O3 module relays its weights at load: allow for it


def cache_dir() -> Path:
    """$LLMIRC_CACHE_DIR, else $XDG_CACHE_HOME/llmirc, else ~/.cache/llmirc."""
    if os.environ.get("LLMIRC_CACHE_DIR"):
        return Path(os.environ["LLMIRC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmirc"


def _marker(sha256: str) -> Path:
    return cache_dir() / "verified-modules" / sha256


def is_verified(sha256: str) -> bool:
    return _marker(sha256).is_file()


def mark_verified(sha256: str) -> None:
    """Remember a module that ran (or that this machine's compiler wrote). Best effort: an
    unwritable cache only means the probe runs again next time."""
    try:
        _marker(sha256).parent.mkdir(parents=True, exist_ok=True)
        _marker(sha256).touch()
    except OSError:
        pass


def ensure_module_runs(artifact_dir: Path, sha256: str, device_uri: str, vmfb: Path) -> None:
    """Probe the module in a child process unless it is known; raise ArtifactError if the
    child dies from a signal. Other child failures (no device, ...) are left to the caller,
    which meets them again, with its own error, when it loads the module itself."""
    if is_verified(sha256):
        return
    cmd = [sys.executable, "-m", "llmirc.runtime.probe", str(artifact_dir), device_uri]
    try:
        child = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{vmfb} did not finish a one-token test run in {PROBE_TIMEOUT_S} s; it may be "
                            "corrupt: re-run `llmirc compile` to rebuild the artifact") from None
    if child.returncode < 0:
        sig = signal.Signals(-child.returncode).name
        calls = [ln.removeprefix("calling ") for ln in child.stdout.splitlines() if ln.startswith("calling ")]
        where = f" in its '{calls[-1]}' function" if calls else " while loading, in its initializers"
        raise ArtifactError(f"{vmfb} crashed a test run ({sig}{where}, in a child process): the module is "
                            "corrupt although its sha256 matches the manifest; re-run `llmirc compile` to "
                            "rebuild the artifact")
    if child.returncode == 0:
        mark_verified(sha256)


def _probe(artifact_dir: str, device_uri: str) -> None:
    """The child: every entry point once (prefill, extend, extend_all, each decode), one
    token per row (a bucket's length on static-shape targets, R for a row-chunked `_r{R}`
    function), all pages the first one."""
    from llmirc.artifacts.manifest import read_manifest

    from .engine import Engine

    static = bool(read_manifest(artifact_dir, verify_checksums=False).target.extra.get("buckets"))
    engine = Engine(artifact_dir, num_pages=None if static else 2, device=device_uri, probe=False)
    one = np.ones

    def call(name: str, fn, *args) -> None:
        print(f"calling {name}", flush=True)
        fn(*args)

    if engine.buckets is None:
        call("prefill", engine.prefill, one((1, 1), np.int64), one(1, np.int64), one((1, 1), np.int64))
        if engine.supports_extend:  # ABI v2
            call("extend", engine.extend, one((1, 1), np.int64), np.zeros(1, np.int64), one(1, np.int64),
                 one((1, 1), np.int64))
        if engine.supports_all_logits:
            call("extend_all", lambda *a: engine.extend(*a, all_logits=True), one((1, 1), np.int64),
                 np.zeros(1, np.int64), one(1, np.int64), one((1, 1), np.int64))
        for rows in engine._prefill_by_rows:  # prefill_r{R}: R token rows in one row
            call(f"prefill_r{rows}", engine.prefill, one((1, rows), np.int64), np.full(1, rows, np.int64),
                 one((1, -(-rows // engine.page_size)), np.int64))
        for rows in engine._extend_by_rows:
            call(f"extend_r{rows}", engine.extend, one((1, rows), np.int64), np.zeros(1, np.int64),
                 np.full(1, rows, np.int64), one((1, -(-rows // engine.page_size)), np.int64))
        specialised = sorted(engine._decode_by_batch)
        for b in specialised + [max(specialised, default=0) + 1]:  # decode_b{B}, then the dynamic decode
            name = f"decode_b{b}" if b in engine._decode_by_batch else "decode"
            call(name, engine.decode, one(b, np.int64), np.zeros(b, np.int64), one((b, 1), np.int64))
        return
    bk = engine.buckets
    for b in bk.batch:
        for t in bk.prefill_len:
            pages = -(-t // engine.page_size)
            call(f"prefill_b{b}_t{t}", engine.prefill, one((b, t), np.int64), np.full(b, t, np.int64),
                 one((b, pages), np.int64))
            if engine.supports_extend:
                call(f"extend_b{b}_t{t}", engine.extend, one((b, t), np.int64), np.zeros(b, np.int64),
                     np.full(b, t, np.int64), one((b, pages), np.int64))
        call(f"decode_b{b}", engine.decode, one(b, np.int64), np.zeros(b, np.int64), one((b, 1), np.int64))


if __name__ == "__main__":
    _probe(sys.argv[1], sys.argv[2])
