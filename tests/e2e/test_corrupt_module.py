"""A vmfb damaged *and* re-checksummed must not crash the process: the runtime test-runs an
unknown module in a child process first (llmirc/runtime/probe.py)."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from llmirc.runtime.probe import is_verified

LLMIRC = [sys.executable, "-m", "llmirc.cli"]
# An instruction that always traps, to fill the dispatch code with: ud2 (x86-64), udf #0 (aarch64).
TRAP = {"x86_64": b"\x0f\x0b", "aarch64": b"\x00\x00\x00\x00"}


def _trap_executable_code(vmfb: bytes) -> bytes:
    """Overwrite every executable section of the ELF embedded in an llvm-cpu vmfb with traps."""
    trap = TRAP[platform.machine()]
    elf = vmfb.find(b"\x7fELF\x02\x01")
    assert elf > 0, "no 64-bit ELF executable in the vmfb"
    shoff, = struct.unpack_from("<Q", vmfb, elf + 0x28)
    shentsize, shnum = struct.unpack_from("<HH", vmfb, elf + 0x3A)
    out = bytearray(vmfb)
    patched = 0
    for i in range(shnum):
        sh = elf + shoff + i * shentsize
        flags, = struct.unpack_from("<Q", vmfb, sh + 8)
        offset, size = struct.unpack_from("<QQ", vmfb, sh + 0x18)
        if flags & 0x4 and size:  # SHF_EXECINSTR
            start = elf + offset
            out[start:start + size] = (trap * (size // len(trap) + 1))[:size]
            patched += size
    assert patched > 0
    return bytes(out)


def _rechecksum(art: Path, name: str) -> str:
    digest = hashlib.sha256((art / name).read_bytes()).hexdigest()
    m = json.loads((art / "manifest.json").read_text())
    m["files"][name] = digest
    (art / "manifest.json").write_text(json.dumps(m))
    return digest


def _run(art: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LLMIRC + ["run", str(art), "--prompt-ids", "1,2,3", "--max-tokens", "2", "-q"],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(platform.machine() not in TRAP, reason=f"no trap instruction known for {platform.machine()}")
def test_damaged_code_with_a_matching_checksum_is_an_error_not_a_crash(cpu_artifact, tmp_path):
    art = Path(shutil.copytree(cpu_artifact, tmp_path / "art"))
    (art / "model.vmfb").write_bytes(_trap_executable_code((art / "model.vmfb").read_bytes()))
    digest = _rechecksum(art, "model.vmfb")
    res = _run(art)
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert res.stderr.splitlines() == [
        f"error: {art / 'model.vmfb'} crashed a test run (SIGILL while loading, in its initializers, in a child "
        "process): the module is corrupt although its sha256 matches the manifest; re-run `llmirc compile` to "
        "rebuild the artifact"]
    assert not is_verified(digest)


def test_damaged_bytecode_with_a_matching_checksum_is_refused_by_iree(cpu_artifact, tmp_path):
    """IREE's bytecode verifier (VmModule.mmap) catches a damaged VM program without a probe."""
    art = Path(shutil.copytree(cpu_artifact, tmp_path / "art"))
    data = bytearray((art / "model.vmfb").read_bytes())
    data[100] ^= 0xFF  # inside the module's flatbuffer tables (IREE 3.13: verifier.c rejects it)
    (art / "model.vmfb").write_bytes(bytes(data))
    _rechecksum(art, "model.vmfb")
    res = _run(art)
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "model.vmfb is not a loadable IREE module" in res.stderr or "could not be initialised" in res.stderr


def test_a_module_that_ran_is_remembered(cpu_artifact, tmp_path):
    """A module unknown to this machine (its digest unmarked) is test-run once, then trusted."""
    art = Path(shutil.copytree(cpu_artifact, tmp_path / "art"))
    m = json.loads((art / "manifest.json").read_text())
    m["source"]["note"] = "copied"  # the module is the same: its digest is the compiler's, marked
    assert is_verified(m["files"]["model.vmfb"])
    data = (art / "model.vmfb").read_bytes() + b"\0" * 16  # same program, new digest: unknown here
    (art / "model.vmfb").write_bytes(data)
    digest = _rechecksum(art, "model.vmfb")
    assert not is_verified(digest)
    res = _run(art)
    assert res.returncode == 0, res.stderr
    assert is_verified(digest)


def test_the_probe_calls_every_entry_point(cpu_artifact):
    """The child's call list against the manifest: every entry point and specialised decode."""
    res = subprocess.run([sys.executable, "-m", "llmirc.runtime.probe", str(cpu_artifact), "local-task"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    called = [ln.removeprefix("calling ") for ln in res.stdout.splitlines()]
    eps = json.loads((cpu_artifact / "manifest.json").read_text())["entry_points"]
    expected = set(eps) | set(eps["decode"].get("batch_functions", {}).values())
    assert set(called) == expected and len(called) == len(expected), (called, expected)
