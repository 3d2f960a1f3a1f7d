"""Golden IR tests in MLIR's style: each file has a `// RUN:` line and `// CHECK:` lines (filecheck)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.mlir"))


def _run_line(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("// RUN:"):
            return line.removeprefix("// RUN:").strip().replace("%s", str(path))
    raise AssertionError(f"{path}: no // RUN: line")


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden(path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", "-o", "pipefail", "-c", _run_line(path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_golden_check_can_fail(tmp_path):
    """A CHECK that does not hold makes the runner fail (the harness is not vacuous)."""
    bad = tmp_path / "bad.mlir"
    source = Path(__file__).parent / "golden" / "cse.mlir"
    assert "// CHECK-NOT:" in source.read_text()
    bad.write_text(source.read_text().replace("// CHECK-NOT:", "// CHECK:", 1))
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", "-o", "pipefail", "-c", _run_line(bad)], capture_output=True, text=True, env=env)
    assert r.returncode != 0
