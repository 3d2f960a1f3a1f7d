"""Golden IR of quantize-weights and convert-weights (`// RUN:` + FileCheck, run by `llmirc opt`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipelines.test_golden import test_golden as run_golden

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.mlir"))


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_quant_golden(path):
    run_golden(path)
