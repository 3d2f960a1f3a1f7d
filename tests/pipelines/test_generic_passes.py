"""canonicalize, cse, dce: interpreter output before == after on whole models."""

from __future__ import annotations

import pytest

from llmirc.dialect import print_module
from llmirc.frontend import import_checkpoint
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint
from tests.pipelines.equivalence import assert_pipeline_preserves
from llmirc.frontend.decoder import ENTRY_FUNCTIONS


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    return import_checkpoint(make_checkpoint(tmp_path_factory.mktemp("tied"), CheckpointSpec(tie_embeddings=True)))


@pytest.mark.parametrize("pipeline", ["canonicalize", "cse", "dce", "canonicalize,cse,dce",
                                      "blockify-kv-cache{block_size=4},cse,canonicalize"])
def test_generic_pass_preserves_model(tied, pipeline):
    assert_pipeline_preserves(tied.module, tied.weights(), pipeline)


def test_cse_merges_tied_embedding_load(tied):
    after = assert_pipeline_preserves(tied.module, tied.weights(), "cse")
    text = print_module(after)
    n = len(ENTRY_FUNCTIONS)
    assert text.count('{name = "model.embed_tokens.weight"}') == n  # one per function, was two
    assert print_module(tied.module).count('{name = "model.embed_tokens.weight"}') == 2 * n
