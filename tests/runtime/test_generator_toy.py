"""Engine + LLMEngine on a toy module that follows docs/abi.md exactly.

The toy "model" stores, for each position p of a sequence, K = emb[token] + layer and V = 1
in the page pool (through the block table), and its logits are one-hot at

    next = (sum of emb[t] over the cached tokens + number of cached tokens) mod VOCAB

which it computes by reading the pool back through the block table (K of layer 0, V of the
last layer). So any page mix-up between sequences, a write to the wrong slot, a pool that
is copied instead of updated in place, or a wrong position changes the answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import llmirc
from llmirc.artifacts import sha256_file, write_bundle
from llmirc.errors import ArtifactError, LlmircError, PoolExhaustedError, PromptTooLongError, RuntimeDeviceError
from llmirc.runtime import Engine, LLMEngine, SamplingParams, SchedulerConfig

VOCAB, LAYERS, KV_HEADS, HEAD_DIM, PAGE = 32, 3, 1, 2, 4
MAX_SEQ_LEN, BOS, EOS = 24, 1, 2
EMB = ((np.arange(VOCAB) * 7 + 3) % VOCAB).astype(np.float32)  # a parameter, so the irpa is exercised
# The toy is compiled for a generic x86/arm CPU on purpose: `host` makes LLVM unroll the gathers and
# triples the compile time of this file.
FLAGS = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
         "--iree-llvmcpu-target-cpu=generic"]


def ref_next(tokens: list[int]) -> int:
    return int((EMB[tokens].sum() + len(tokens)) % VOCAB)


def ref_generate(prompt: list[int], max_tokens: int, stop=(EOS,)) -> tuple[list[int], str]:
    """The generator's contract, written out: greedy, stop token included, capped by MAX_SEQ_LEN."""
    seq, out = list(prompt), []
    while True:
        t = ref_next(seq)
        seq.append(t)
        out.append(t)
        if t in stop:
            return out, "stop"
        if len(out) >= max_tokens or len(seq) >= MAX_SEQ_LEN:
            return out, "length"


# ----------------------------------------------------------------------------- the toy module

def toy_mlir() -> str:
    V, L, H, D, S = VOCAB, LAYERS, KV_HEADS, HEAD_DIM, PAGE
    pool = f"tensor<?x{L}x2x{S}x{H}x{D}xf32>"
    par = '"parallel"'
    consts = f"""
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %cS = arith.constant {S} : index
  %cDm1 = arith.constant {D - 1} : index
  %cLm1 = arith.constant {L - 1} : index
  %i0 = arith.constant 0 : i64
  %i1 = arith.constant 1 : i64
  %i2 = arith.constant 2 : i64
  %cV = arith.constant {V} : i64
  %f0 = arith.constant 0.0 : f32
  %f1 = arith.constant 1.0 : f32
  %emb = util.global.load @emb : tensor<{V}xf32>
  %B = tensor.dim %bt, %c0 : tensor<?x?xi64>
  %P = tensor.dim %bt, %c1 : tensor<?x?xi64>"""

    def index_body(valid: str) -> str:
        # scatter coordinates (page, layer, kv, slot); invalid (padding) rows go to scratch page 0
        return f"""
    %isel0 = arith.cmpi eq, %c, %i0 : i64
    %isel1 = arith.cmpi eq, %c, %i1 : i64
    %isel2 = arith.cmpi eq, %c, %i2 : i64
    %li = arith.index_cast %l : index to i64
    %ki = arith.index_cast %k : index to i64
    %sel3 = arith.select %isel2, %ki, %slot : i64
    %sel2 = arith.select %isel1, %li, %sel3 : i64
    %pg = arith.select {valid}, %page, %i0 : i64
    %sel1 = arith.select %isel0, %pg, %sel2 : i64
    linalg.yield %sel1 : i64"""

    def update_body() -> str:
        return f"""
    %tix = arith.index_cast %tok : i64 to index
    %e = tensor.extract %emb[%tix] : tensor<{V}xf32>
    %li = arith.index_cast %l : index to i64
    %lf = arith.sitofp %li : i64 to f32
    %kval = arith.addf %e, %lf : f32
    %isk = arith.cmpi eq, %k, %c0 : index
    %val = arith.select %isk, %kval, %f1 : f32
    linalg.yield %val : f32"""

    scatter = f"""
  %new = iree_linalg_ext.scatter dimension_map = [0, 1, 2, 3] unique_indices(false)
      ins(%updf, %idxf : tensor<?x{H}x{D}xf32>, tensor<?x4xi64>) outs(%pool : {pool}) {{
  ^bb0(%a: f32, %old: f32):
    iree_linalg_ext.yield %a : f32
  }} -> {pool}"""

    def logits_from_pool(lens: str) -> str:
        # Gather (parallel) and sum (reduction) are separate generics: fused, the CUDA/HIP
        # backends of IREE 3.13 fail with "failed to distribute".
        return f"""
  %PS = arith.muli %P, %cS : index
  %dom = tensor.empty(%B, %PS) : tensor<?x?xf32>
  %se = tensor.empty(%B) : tensor<?xf32>
  %sz = linalg.fill ins(%f0 : f32) outs(%se : tensor<?xf32>) -> tensor<?xf32>
  %contrib = linalg.generic {{indexing_maps = [affine_map<(b, p) -> (b, p)>], iterator_types = [{par}, {par}]}}
      outs(%dom : tensor<?x?xf32>) {{
  ^bb0(%unused: f32):
    %b = linalg.index 0 : index
    %p = linalg.index 1 : index
    %len = tensor.extract {lens}[%b] : tensor<?xi64>
    %pi = arith.index_cast %p : index to i64
    %valid = arith.cmpi slt, %pi, %len : i64
    %blk = arith.divui %p, %cS : index
    %slot = arith.remui %p, %cS : index
    %page64 = tensor.extract %bt[%b, %blk] : tensor<?x?xi64>
    %page = arith.index_cast %page64 : i64 to index
    %k = tensor.extract %new[%page, %c0, %c0, %slot, %c0, %cDm1] : {pool}
    %v = tensor.extract %new[%page, %cLm1, %c1, %slot, %c0, %c0] : {pool}
    %kv = arith.addf %k, %v : f32
    %x = arith.select %valid, %kv, %f0 : f32
    linalg.yield %x : f32
  }} -> tensor<?x?xf32>
  %sums = linalg.generic {{indexing_maps = [affine_map<(b, p) -> (b, p)>, affine_map<(b, p) -> (b)>],
                          iterator_types = [{par}, "reduction"]}}
      ins(%contrib : tensor<?x?xf32>) outs(%sz : tensor<?xf32>) {{
  ^bb0(%x: f32, %acc: f32):
    %r = arith.addf %x, %acc : f32
    linalg.yield %r : f32
  }} -> tensor<?xf32>
  %le = tensor.empty(%B) : tensor<?x{V}xf32>
  %logits = linalg.generic {{indexing_maps = [affine_map<(b, v) -> (b)>, affine_map<(b, v) -> (b, v)>],
                            iterator_types = [{par}, {par}]}}
      ins(%sums : tensor<?xf32>) outs(%le : tensor<?x{V}xf32>) {{
  ^bb0(%s: f32, %o: f32):
    %v = linalg.index 1 : index
    %si = arith.fptosi %s : f32 to i64
    %n = arith.remsi %si, %cV : i64
    %vi = arith.index_cast %v : index to i64
    %eq = arith.cmpi eq, %n, %vi : i64
    %r = arith.select %eq, %f1, %f0 : f32
    linalg.yield %r : f32
  }} -> tensor<?x{V}xf32>
  return %logits, %new : tensor<?x{V}xf32>, {pool}
}}
"""

    return f"""
util.global private @emb = #stream.parameter.named<"model"::"toy.emb"> : tensor<{V}xf32>

func.func @prefill(%tokens: tensor<?x?xi64>, %seq_lens: tensor<?xi64>, %bt: tensor<?x?xi64>, %pool: {pool})
    -> (tensor<?x{V}xf32>, {pool} {{iree.abi.output = 3 : index}}) {{{consts}
  %T = tensor.dim %tokens, %c1 : tensor<?x?xi64>
  %ie = tensor.empty(%B, %T) : tensor<?x?x{L}x2x4xi64>
  %idx = linalg.generic {{indexing_maps = [affine_map<(b, t, l, k, c) -> (b, t, l, k, c)>],
                         iterator_types = [{par}, {par}, {par}, {par}, {par}]}}
      outs(%ie : tensor<?x?x{L}x2x4xi64>) {{
  ^bb0(%o: i64):
    %b = linalg.index 0 : index
    %t = linalg.index 1 : index
    %l = linalg.index 2 : index
    %k = linalg.index 3 : index
    %cx = linalg.index 4 : index
    %c = arith.index_cast %cx : index to i64
    %len = tensor.extract %seq_lens[%b] : tensor<?xi64>
    %ti = arith.index_cast %t : index to i64
    %valid = arith.cmpi slt, %ti, %len : i64
    %blk = arith.divui %t, %cS : index
    %page = tensor.extract %bt[%b, %blk] : tensor<?x?xi64>
    %slotx = arith.remui %t, %cS : index
    %slot = arith.index_cast %slotx : index to i64{index_body("%valid")}
  }} -> tensor<?x?x{L}x2x4xi64>
  %idxf = tensor.collapse_shape %idx [[0, 1, 2, 3], [4]] : tensor<?x?x{L}x2x4xi64> into tensor<?x4xi64>
  %ue = tensor.empty(%B, %T) : tensor<?x?x{L}x2x{H}x{D}xf32>
  %upd = linalg.generic {{indexing_maps = [affine_map<(b, t, l, k, h, d) -> (b, t, l, k, h, d)>],
                         iterator_types = [{par}, {par}, {par}, {par}, {par}, {par}]}}
      outs(%ue : tensor<?x?x{L}x2x{H}x{D}xf32>) {{
  ^bb0(%o: f32):
    %b = linalg.index 0 : index
    %t = linalg.index 1 : index
    %l = linalg.index 2 : index
    %k = linalg.index 3 : index
    %tok = tensor.extract %tokens[%b, %t] : tensor<?x?xi64>{update_body()}
  }} -> tensor<?x?x{L}x2x{H}x{D}xf32>
  %updf = tensor.collapse_shape %upd [[0, 1, 2, 3], [4], [5]]
      : tensor<?x?x{L}x2x{H}x{D}xf32> into tensor<?x{H}x{D}xf32>{scatter}{logits_from_pool("%seq_lens")}
func.func @decode(%tokens: tensor<?xi64>, %positions: tensor<?xi64>, %bt: tensor<?x?xi64>, %pool: {pool})
    -> (tensor<?x{V}xf32>, {pool} {{iree.abi.output = 3 : index}}) {{{consts}
  %ie = tensor.empty(%B) : tensor<?x{L}x2x4xi64>
  %idx = linalg.generic {{indexing_maps = [affine_map<(b, l, k, c) -> (b, l, k, c)>],
                         iterator_types = [{par}, {par}, {par}, {par}]}}
      outs(%ie : tensor<?x{L}x2x4xi64>) {{
  ^bb0(%o: i64):
    %b = linalg.index 0 : index
    %l = linalg.index 1 : index
    %k = linalg.index 2 : index
    %cx = linalg.index 3 : index
    %c = arith.index_cast %cx : index to i64
    %pos = tensor.extract %positions[%b] : tensor<?xi64>
    %posx = arith.index_cast %pos : i64 to index
    %blk = arith.divui %posx, %cS : index
    %page = tensor.extract %bt[%b, %blk] : tensor<?x?xi64>
    %slotx = arith.remui %posx, %cS : index
    %slot = arith.index_cast %slotx : index to i64
    %true = arith.constant true{index_body("%true")}
  }} -> tensor<?x{L}x2x4xi64>
  %idxf = tensor.collapse_shape %idx [[0, 1, 2], [3]] : tensor<?x{L}x2x4xi64> into tensor<?x4xi64>
  %ue = tensor.empty(%B) : tensor<?x{L}x2x{H}x{D}xf32>
  %upd = linalg.generic {{indexing_maps = [affine_map<(b, l, k, h, d) -> (b, l, k, h, d)>],
                         iterator_types = [{par}, {par}, {par}, {par}, {par}]}}
      outs(%ue : tensor<?x{L}x2x{H}x{D}xf32>) {{
  ^bb0(%o: f32):
    %b = linalg.index 0 : index
    %l = linalg.index 1 : index
    %k = linalg.index 2 : index
    %tok = tensor.extract %tokens[%b] : tensor<?xi64>{update_body()}
  }} -> tensor<?x{L}x2x{H}x{D}xf32>
  %updf = tensor.collapse_shape %upd [[0, 1, 2], [3], [4]]
      : tensor<?x{L}x2x{H}x{D}xf32> into tensor<?x{H}x{D}xf32>{scatter}
  %le0 = tensor.empty(%B) : tensor<?xi64>
  %lens = linalg.generic {{indexing_maps = [affine_map<(b) -> (b)>, affine_map<(b) -> (b)>], iterator_types = [{par}]}}
      ins(%positions : tensor<?xi64>) outs(%le0 : tensor<?xi64>) {{
  ^bb0(%q: i64, %o: i64):
    %r = arith.addi %q, %i1 : i64
    linalg.yield %r : i64
  }} -> tensor<?xi64>{logits_from_pool("%lens")}"""


def write_tokenizer(path: Path) -> None:
    """A word-level tokenizer: '<unk>' '<s>' '</s>' then 'w3' .. 'w31' (token id = word number)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": BOS, "</s>": EOS, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(path))


@pytest.fixture(scope="module")
def toy_artifact(tmp_path_factory) -> Path:
    import iree.compiler as ic

    root = tmp_path_factory.mktemp("toy")
    write_tokenizer(root / "tokenizer.json")
    (root / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    write_bundle(
        root / "artifact", ic.compile_str(toy_mlir(), extra_args=FLAGS), {"toy.emb": EMB},
        model={"architecture": "ToyForCausalLM", "vocab_size": VOCAB, "hidden_size": 1, "num_layers": LAYERS,
               "num_heads": 1, "num_kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "max_seq_len": MAX_SEQ_LEN,
               "bos_token_id": BOS, "eos_token_id": [EOS]},
        target={"name": "cpu", "variant": "generic", "device": "local", "driver": "local-task", "flags": FLAGS},
        kv={"page_size": PAGE, "dtype": "f32"}, opt_level=0,
        tokenizer_files=[root / "tokenizer.json", root / "tokenizer_config.json"])
    # The toy has only the ABI v1 entry points (no extend): LLMEngine (llmirc.load) stands in
    # for extend with prefill + decode, which this file then checks on a real module.
    manifest = root / "artifact" / "manifest.json"
    data = json.loads(manifest.read_text())
    data.update(abi_version=1, entry_points={k: data["entry_points"][k] for k in ("prefill", "decode")})
    manifest.write_text(json.dumps(data, indent=2))
    return root / "artifact"


@pytest.fixture(scope="module")
def engine(toy_artifact) -> Engine:
    return Engine(toy_artifact, num_pages=16)


@pytest.fixture
def copy_of(toy_artifact, tmp_path):
    return Path(shutil.copytree(toy_artifact, tmp_path / "artifact"))


def _llm(engine: Engine, **config) -> LLMEngine:
    return LLMEngine(engine, SchedulerConfig(**config), eos_token_ids=tuple(engine.manifest.model.eos_token_id))


def _add(llm: LLMEngine, prompts, **kw) -> None:
    for i, p in enumerate(prompts):
        llm.add_request(str(i), p, SamplingParams(**kw))


def _run(llm: LLMEngine, prompts, **kw) -> tuple[list[list[int]], list[str]]:
    """Greedy (or `kw`) generation of every prompt; tokens and finish reasons in prompt order."""
    _add(llm, prompts, **kw)
    outs, reasons = [[] for _ in prompts], [None] * len(prompts)
    for _ in range(1000):
        if not llm.has_unfinished_requests():
            return outs, reasons
        for out in llm.step():
            i = int(out.request_id)
            outs[i], reasons[i] = out.outputs[0].token_ids, out.outputs[0].finish_reason
    raise AssertionError("the engine does not finish")


# ----------------------------------------------------------------------------- engine

def test_prefill_and_decode_update_the_device_pool_in_place(engine):
    pool_array = engine.pool
    before = engine.read_pool()
    prompt = [5, 6, 7, 8, 9, 10]  # 6 tokens: page 11 full, page 4 slots 0-1
    logits = engine.prefill(np.array([prompt]), np.array([6]), np.array([[11, 4]]))
    assert logits.shape == (1, VOCAB) and logits.dtype == np.float32
    assert int(logits.argmax()) == ref_next(prompt)
    assert engine.pool is pool_array  # same device array, never swapped for a result
    after = pool_array.to_host()
    for p, tok in enumerate(prompt):
        page, slot = [11, 4][p // PAGE], p % PAGE
        for layer in range(LAYERS):
            np.testing.assert_array_equal(after[page, layer, 0, slot, 0], EMB[tok] + layer)
            np.testing.assert_array_equal(after[page, layer, 1, slot, 0], 1.0)
    untouched = [p for p in range(engine.num_pages) if p not in (0, 4, 11)]
    np.testing.assert_array_equal(after[untouched], before[untouched])
    np.testing.assert_array_equal(after[4, :, :, 2:], 0.0)  # slots past the sequence stay empty

    logits = engine.decode(np.array([12]), np.array([6]), np.array([[11, 4]]))
    assert int(logits.argmax()) == ref_next(prompt + [12])
    np.testing.assert_array_equal(pool_array.to_host()[4, 0, 0, 2, 0], EMB[12])


def test_the_toy_reads_through_the_block_table(engine):
    """Sanity of the oracle: pointing a row at another sequence's page changes the answer."""
    a, b = [3, 4, 5, 6], [20, 21, 22, 23]
    engine.prefill(np.array([a, b]), np.array([4, 4]), np.array([[7], [8]]))
    right = engine.decode(np.array([9]), np.array([4]), np.array([[7, 9]])).argmax()
    wrong = engine.decode(np.array([9]), np.array([4]), np.array([[8, 9]])).argmax()
    assert right == ref_next(a + [9]) and wrong == ref_next(b + [9]) and right != wrong


def test_engine_refuses_out_of_range_inputs(engine):
    with pytest.raises(ValueError, match="token ids"):
        engine.prefill(np.array([[VOCAB]]), np.array([1]), np.array([[1]]))
    with pytest.raises(ValueError, match="block table entries"):
        engine.decode(np.array([3]), np.array([0]), np.array([[engine.num_pages]]))
    with pytest.raises(ValueError, match="cover"):
        engine.prefill(np.array([[3] * 5]), np.array([5]), np.array([[1]]))


# ----------------------------------------------------------------------------- LLMEngine

PROMPTS = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16]]


def test_batched_generation_matches_the_reference(engine):
    llm = _llm(engine)
    outs, reasons = _run(llm, PROMPTS, max_tokens=9, stop_token_ids=())
    assert outs == [ref_generate(p, 9, stop=())[0] for p in PROMPTS]
    assert reasons == ["length"] * 3
    llm.reset_prefix_cache()
    assert llm.pool.free_pages == llm.pool.capacity  # every page came back


def test_interleaved_pages_give_the_same_tokens_as_each_alone(engine):
    llm = _llm(engine)
    llm.pool.allocate(1)  # shift the allocation so pages are not simply 1, 2, 3 ...
    tables: dict[int, list[int]] = {}
    real_decode = engine.decode

    def spy(tokens, positions, block_tables):
        for i, row in enumerate(block_tables):
            tables.setdefault(i, row.tolist())
            tables[i] = row.tolist()
        return real_decode(tokens, positions, block_tables)

    engine.decode = spy
    try:
        together, _ = _run(llm, PROMPTS[:2], max_tokens=12, stop_token_ids=())
    finally:
        del engine.decode
    # growth pages were handed out alternately, so the two block tables interleave
    used = sorted((p, i) for i, row in tables.items() for p in row if p)
    assert [i for _, i in used] != sorted(i for _, i in used)
    alone = [_run(_llm(engine), [p], max_tokens=12, stop_token_ids=())[0][0] for p in PROMPTS[:2]]
    assert together == alone == [ref_generate(p, 12, stop=())[0] for p in PROMPTS[:2]]


def test_stop_token_ends_a_sequence_and_frees_its_pages(engine):
    prompt = [3, 4, 5]
    full, _ = ref_generate(prompt, 10, stop=())
    stop = full[3]
    expected = full[: full.index(stop) + 1]
    llm = _llm(engine, enable_prefix_caching=False)
    outs, reasons = _run(llm, [prompt, [6, 7]], max_tokens=10, stop_token_ids=(stop,))
    assert outs[0] == expected and reasons[0] == "stop"
    assert outs[1] == ref_generate([6, 7], 10, stop=(stop,))[0]
    assert llm.pool.free_pages == llm.pool.capacity


def test_default_stop_is_the_manifest_eos(engine):
    prompt = next(p for p in ([a, b] for a in range(3, VOCAB) for b in range(3, VOCAB))
                  if ref_generate(p, 8)[1] == "stop")
    outs, reasons = _run(_llm(engine), [prompt], max_tokens=8)
    assert outs[0][-1] == EOS and reasons == ["stop"]


def test_generation_stops_at_max_seq_len(engine):
    prompt = list(range(3, 3 + MAX_SEQ_LEN - 2))
    outs, reasons = _run(_llm(engine), [prompt], max_tokens=10, stop_token_ids=())
    assert len(prompt) + len(outs[0]) == MAX_SEQ_LEN and reasons == ["length"]
    assert outs[0] == ref_generate(prompt, 10, stop=())[0]


def test_prompt_too_long(engine):
    with pytest.raises(PromptTooLongError, match=f"request '1' has {MAX_SEQ_LEN + 1} prompt tokens but the model's "
                                                 f"max length is {MAX_SEQ_LEN}"):
        _add(_llm(engine), [[3], [4] * (MAX_SEQ_LEN + 1)])


def test_bad_prompts_are_refused(engine):
    llm = _llm(engine)
    with pytest.raises(LlmircError, match="request '0' has an empty prompt"):
        _add(llm, [[]])
    with pytest.raises(LlmircError, match="token id 99 outside the vocabulary"):
        _add(llm, [[3, 99]])
    assert not llm.has_unfinished_requests()


def test_pool_too_small_for_one_prompt_is_a_clear_error(toy_artifact):
    small = Engine(toy_artifact, num_pages=4)  # 3 usable pages = 12 tokens
    assert small.pool_shape == (4, LAYERS, 2, PAGE, KV_HEADS, HEAD_DIM) and not small.read_pool().any()
    llm = _llm(small)
    with pytest.raises(PoolExhaustedError, match=r"request '0' needs up to 5 KV pages .* only 3; raise --num-pages"):
        _add(llm, [list(range(3, 13))], max_tokens=8)
    assert llm.pool.free_pages == 3 and not llm.has_unfinished_requests()


def test_prompts_that_do_not_fit_together_wait_for_pages(toy_artifact):
    small = Engine(toy_artifact, num_pages=4)  # each prompt needs 2-3 pages, not both at once
    llm = _llm(small, enable_prefix_caching=False)
    prompts = [[3, 4, 5, 6, 7], [8, 9, 10, 11]]
    outs, _ = _run(llm, prompts, max_tokens=6, stop_token_ids=())
    assert outs == [ref_generate(p, 6, stop=())[0] for p in prompts]
    assert llm.pool.free_pages == 3 and llm.stats.num_preemptions > 0  # admitted together, one preempted


def test_stopping_early_returns_the_pages(engine):
    llm = _llm(engine, enable_prefix_caching=False)
    _add(llm, PROMPTS, max_tokens=10)
    llm.step()
    assert llm.pool.free_pages < llm.pool.capacity
    for i in range(len(PROMPTS)):
        llm.abort(str(i))
    assert llm.pool.free_pages == llm.pool.capacity
    model = llmirc.load(engine.artifact_dir, num_pages=16)  # the API: a stream closed early
    events = model.generate(PROMPTS, max_tokens=10, stream=True)
    next(events)
    assert model.llm.stats.num_pages_used > 0
    events.close()
    assert model.llm.stats.num_pages_used == 0 and not model.llm.has_unfinished_requests()


def test_seeded_sampling_through_the_engine_is_reproducible(engine):
    run = lambda seed: _run(_llm(engine), PROMPTS, max_tokens=6, temperature=1.0, seed=seed)[0]  # noqa: E731
    assert run(5) == run(5)


# ----------------------------------------------------------------------------- loading errors

def test_corrupt_vmfb_with_a_matching_checksum_is_an_artifact_error(copy_of):
    vmfb = copy_of / "model.vmfb"
    vmfb.write_bytes(b"\x00garbage" * 100)
    data = json.loads((copy_of / "manifest.json").read_text())
    data["files"]["model.vmfb"] = sha256_file(vmfb)
    (copy_of / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"model.vmfb is not a loadable IREE module"):
        Engine(copy_of, num_pages=4)


def test_edited_vmfb_is_an_artifact_error(copy_of):
    data = bytearray((copy_of / "model.vmfb").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy_of / "model.vmfb").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        Engine(copy_of, num_pages=4)


def test_missing_irpa_is_an_artifact_error(copy_of):
    (copy_of / "model.irpa").unlink()
    with pytest.raises(ArtifactError, match="model.irpa is listed in manifest.json but missing"):
        Engine(copy_of, num_pages=4)


def test_artifact_for_an_absent_device(copy_of):
    data = json.loads((copy_of / "manifest.json").read_text())
    data["target"].update(name="cuda", device="cuda", driver="cuda")
    (copy_of / "manifest.json").write_text(json.dumps(data))
    # Without a GPU: "needs a cuda device ... not present"; with one, the CPU code cannot run on it.
    with pytest.raises(RuntimeDeviceError, match="cuda"):
        Engine(copy_of, num_pages=4)


def test_device_override_must_match_the_target(toy_artifact):
    with pytest.raises(RuntimeDeviceError, match="cannot run on driver 'vulkan'; use one of: local-task, local-sync"):
        Engine(toy_artifact, num_pages=4, device="vulkan")
    sync = Engine(toy_artifact, num_pages=8, device="local-sync")
    assert _run(_llm(sync), PROMPTS, max_tokens=4)[0] == [ref_generate(p, 4)[0] for p in PROMPTS]


# ----------------------------------------------------------------------------- python API

def test_load_and_generate_from_text(toy_artifact):
    model = llmirc.load(toy_artifact, num_pages=16)
    assert model.encode("w3 w4") == [BOS, 3, 4]  # tokenizer_config says add_bos_token
    [c] = model.generate(["w3 w4"], max_tokens=5, stop_token_ids=[])
    expected, _ = ref_generate([BOS, 3, 4], 5, stop=())
    assert c.token_ids == expected and c.finish_reason == "length"
    assert c.text == model.decode(expected) and c.text.split() == [f"w{t}" for t in expected if t > EOS]
    streamed = list(model.generate("w3 w4", max_tokens=5, stop_token_ids=[], stream=True))
    assert [e.token_id for e in streamed] == expected and streamed[-1].finish_reason == "length"
    assert "".join(e.text for e in streamed).split() == c.text.split()
    [by_ids] = model.generate([[BOS, 3, 4]], max_tokens=5, stop_token_ids=[])
    assert by_ids.token_ids == expected


# ----------------------------------------------------------------------------- stop strings, stats, notices

@pytest.mark.parametrize("stop,tokens,words", [
    ("w20", [14, 20], ["w14"]),  # one token's text
    ("w14 w2", [14, 20], []),  # spans two tokens: completes with "w20", and "w14" was held back
    ("w99", None, None),  # never matches: the same as no stop string
])
def test_stop_strings_end_the_sequence_and_are_not_in_the_text(toy_artifact, stop, tokens, words):
    model = llmirc.load(toy_artifact, num_pages=16)
    expected, reason = ref_generate([BOS, 6, 7], 6)  # 14, 20, 4, 4, ...
    if tokens is None:
        tokens, words, reason = expected, [f"w{t}" for t in expected], "length"
    else:
        assert expected[:len(tokens)] == tokens
        reason = "stop"
    [c] = model.generate("w6 w7", max_tokens=6, stop=[stop])
    assert (c.token_ids, c.finish_reason) == (tokens, reason)
    assert c.text.split() == words and stop not in c.text
    streamed = list(model.generate("w6 w7", max_tokens=6, stop=stop, stream=True))
    assert [e.token_id for e in streamed] == tokens and streamed[-1].finish_reason == reason
    assert "".join(e.text for e in streamed) == c.text


def test_stop_strings_per_sequence_in_a_batch(toy_artifact):
    model = llmirc.load(toy_artifact, num_pages=16)
    a, b = model.generate(["w6 w7", "w3 w4"], max_tokens=5, stop=["w20"])
    assert a.token_ids == [14, 20] and a.finish_reason == "stop"
    assert b.token_ids == ref_generate([BOS, 3, 4], 5)[0] and b.finish_reason == "length"
    assert [a.prompt_tokens, b.prompt_tokens] == [3, 3]


def test_run_reports_counts_and_the_context_limit(toy_artifact):
    from tests.cli import run_cli

    expected, reason = ref_generate([BOS, 6, 7], 50)
    assert reason == "length" and len(expected) < 50  # the toy's max_seq_len (24) ends it
    res = run_cli("run", toy_artifact, "--prompt", "w6 w7", "--max-tokens", "50")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("w6 w7")  # the prompt, then its continuation
    assert res.stdout.split()[2:] == [f"w{t}" for t in expected]
    notice, stats = res.stderr.splitlines()
    assert notice == (f"notice: prompt 0 stopped at the model's context limit ({MAX_SEQ_LEN} tokens) after "
                      f"{len(expected)} generated tokens (finish_reason \"length\"); shorten the prompt for more")
    assert stats.startswith(f"3 prompt tokens, {len(expected)} generated tokens, TTFT ") and "tok/s" in stats
    res = run_cli("run", toy_artifact, "--prompt-ids", "1,6,7", "--max-tokens", "50", "--json", "-q")
    [out] = json.loads(res.stdout)
    assert out["finish_reason"] == "length" and out["prompt_tokens"] == 3 and "notice:" in res.stderr
    short = run_cli("run", toy_artifact, "--prompt", "w6 w7", "--max-tokens", "3", "--stop", "w4", "--no-echo")
    assert short.stdout.split() == ["w14", "w20"] and len(short.stderr.splitlines()) == 1  # stats only
