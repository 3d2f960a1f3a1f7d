"""GGUF import: files written by `gguf`'s own GGUFWriter as llama.cpp's converter writes them
(names, metadata, q/k permutation) import to the same IR and weights as the safetensors
checkpoint; Q8_0/Q4_0 linears are the dialect's quantized weights with exactly gguf's values;
damaged files are one error line. No compiles here (tests/e2e/test_gguf_e2e.py compiles)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from gguf import GGUFReader  # noqa: E402
from gguf.constants import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from llmirc.dialect import print_module  # noqa: E402
from llmirc.dialect.interpreter import IMPLS  # noqa: E402
from llmirc.frontend import import_checkpoint  # noqa: E402
from llmirc.frontend.gguf import unpermute  # noqa: E402
from llmirc.frontend.gguf_format import read_gguf  # noqa: E402
from llmirc.testing.checkpoints import CheckpointSpec, make_checkpoint, random_weights  # noqa: E402
from llmirc.testing.gguf import gguf_name, permute, write_gguf  # noqa: E402
from tests.cli import assert_one_error, run_cli  # noqa: E402

SPEC = CheckpointSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=300, max_seq_len=128, seed=5)
QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}


def _ir(model) -> str:
    return print_module(model.module, debug_info=False)


@pytest.fixture(scope="module")
def safetensors_f32(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("st") / "ckpt", SPEC)


@pytest.fixture(scope="module")
def gguf_f32(safetensors_f32, tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gg") / "m.gguf", SPEC, tokenizer=safetensors_f32 / "tokenizer.json")


def test_f32_gguf_is_the_safetensors_model(safetensors_f32, gguf_f32):
    ref, got = import_checkpoint(safetensors_f32), import_checkpoint(gguf_f32)
    assert got.config == ref.config and not got.config.warnings
    assert _ir(got) == _ir(ref)
    want, have = ref.weights(), got.weights()
    assert set(have) == set(want)
    for name in want:
        np.testing.assert_array_equal(have[name], want[name], err_msg=name)


def test_q_and_k_were_permuted_in_the_file_and_are_unpermuted(gguf_f32):
    """The file holds llama.cpp's row order (so the comparison above can fail without unpermute)."""
    weights = random_weights(SPEC)
    tensors = {t.name: t for t in GGUFReader(gguf_f32).tensors}
    for hf, heads in (("model.layers.0.self_attn.q_proj.weight", SPEC.heads),
                      ("model.layers.1.self_attn.k_proj.weight", SPEC.kv_heads)):
        stored = np.asarray(tensors[gguf_name(hf)].data)
        assert not np.array_equal(stored, weights[hf])
        np.testing.assert_array_equal(stored, permute(weights[hf], heads))
        np.testing.assert_array_equal(unpermute(stored, heads), weights[hf])


def test_f16_gguf_is_the_f16_safetensors_model(tmp_path):
    """llama.cpp keeps norms in F32: the weights are rounded to f16 first, so both files hold the same values."""
    spec = CheckpointSpec(**{**SPEC.__dict__, "dtype": "float16"})
    weights = {n: w.astype(np.float16).astype(np.float32) for n, w in random_weights(spec).items()}
    ckpt = make_checkpoint(tmp_path / "ckpt", spec, weights)
    ref = import_checkpoint(ckpt)
    got = import_checkpoint(write_gguf(tmp_path / "m.gguf", spec, weights, qtype="F16",
                                       tokenizer=ckpt / "tokenizer.json"))
    assert got.config == ref.config and got.config.torch_dtype == "float16"
    assert _ir(got) == _ir(ref)
    want, have = ref.weights(), got.weights()
    for name in want:
        np.testing.assert_array_equal(have[name], want[name], err_msg=name)


def test_qwen2_gguf_with_biases_is_not_permuted(tmp_path):
    spec = CheckpointSpec(**{**SPEC.__dict__, "attention_bias": True, "tie_embeddings": True,
                             "extra_config": QWEN2})
    weights = {n: w for n, w in random_weights(spec).items() if "o_proj.bias" not in n}
    ckpt = make_checkpoint(tmp_path / "ckpt", spec, weights)
    ref = import_checkpoint(ckpt)
    got = import_checkpoint(write_gguf(tmp_path / "m.gguf", spec, weights, arch="qwen2",
                                       tokenizer=ckpt / "tokenizer.json"))
    assert got.config.architecture == "Qwen2ForCausalLM" and got.config.tie_word_embeddings
    assert _ir(got) == _ir(ref)
    want, have = ref.weights(), got.weights()
    for name in want:
        np.testing.assert_array_equal(have[name], want[name], err_msg=name)


def test_our_reader_agrees_with_gguf_reader(gguf_f32):
    ours, theirs = read_gguf(gguf_f32), GGUFReader(gguf_f32)
    assert ours.metadata["general.architecture"] == "llama"
    assert ours.metadata["tokenizer.ggml.tokens"] == theirs.fields["tokenizer.ggml.tokens"].contents()
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert (mine.offset, mine.nbytes, mine.type_name) == (t.data_offset, t.n_bytes, t.tensor_type.name)
        assert mine.shape == tuple(reversed(t.shape.tolist()))


@pytest.mark.parametrize("qtype,bits,zero", [("Q8_0", 8, 0), ("Q4_0", 4, 8)])
def test_q8_0_and_q4_0_are_quantized_weights_with_ggufs_values(tmp_path, qtype, bits, zero):
    path = write_gguf(tmp_path / "m.gguf", SPEC, qtype=qtype)
    m = import_checkpoint(path)
    text = _ir(m)
    assert text.count("llm.quantized_matmul") == 4 * 7 * SPEC.layers  # every linear of the 4 entry functions
    assert f"bits = {bits}" in text and "group_size = 32" in text
    store = m.weight_store()
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    assert set(m.source.quantized) == {n for n in m.shapes if any(
        k in n for k in ("_proj.weight",))}
    for name, q in m.source.quantized.items():
        values, scales, zeros = (store[n] for n in q.names)
        assert (q.bits, q.group_size) == (bits, 32) and np.all(zeros == zero)
        ours = IMPLS["dequantize"]({"group_size": 32}, values, scales, zeros)
        t = tensors[gguf_name(name)]
        theirs = dequantize(t.data, t.tensor_type)
        if ".q_proj." in name or ".k_proj." in name:
            theirs = unpermute(theirs, SPEC.heads if ".q_proj." in name else SPEC.kv_heads)
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    # the embeddings are float in the IR: dequantized, with a notice
    np.testing.assert_array_equal(store["model.embed_tokens.weight"],
                                  dequantize(tensors["token_embd.weight"].data, tensors["token_embd.weight"].tensor_type))
    assert any("dequantized to float (token_embd.weight, output.weight)" in w for w in m.config.warnings)


def test_q4_0_nibble_order_low_then_high():
    """Element j of a block is byte j's low nibble, element j + 16 its high nibble."""
    from llmirc.frontend.gguf import unpack_q4_0

    block = np.zeros((1, 32), np.float32)
    block[0, 3], block[0, 19] = -8.0, 7.0  # scale 1: q = value + 8
    values, scales, _ = unpack_q4_0(quantize(block, GGMLQuantizationType.Q4_0).reshape(-1), (1, 32))
    assert scales[0, 0] == 1.0 and values[0, 3] == 0 and values[0, 19] == 15 and values[0, 0] == 8


def test_other_types_are_dequantized_with_a_notice(tmp_path):
    """Q5_0 (and the K-quants) load as float through gguf.quants.dequantize; the notice says so."""
    path = write_gguf(tmp_path / "m.gguf", SPEC, types={"model.layers.0.mlp.down_proj.weight": "Q5_0",
                                                        "model.layers.1.mlp.up_proj.weight": "Q8_0"})
    m = import_checkpoint(path)
    assert set(m.source.quantized) == {"model.layers.1.mlp.up_proj.weight"}
    (notice,) = [w for w in m.config.warnings if "dequantized" in w]
    assert "1 Q5_0 tensor(s) are dequantized to float (blk.0.ffn_down.weight)" in notice
    t = {t.name: t for t in GGUFReader(path).tensors}["blk.0.ffn_down.weight"]
    np.testing.assert_array_equal(m.weights()["model.layers.0.mlp.down_proj.weight"],
                                  dequantize(t.data, t.tensor_type))


def test_k_quant_is_dequantized(tmp_path):
    """Q6_K (block 256): gguf cannot quantize to it, so the block bytes are made here."""
    spec = CheckpointSpec(**{**SPEC.__dict__, "intermediate": 256})
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (64, 210), dtype=np.uint8)  # Q6_K: 210 bytes per 256 values
    raw[:, -2:] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # a finite super-block scale
    path = tmp_path / "m.gguf"
    weights = random_weights(spec)
    write_gguf(path, spec, weights, types={"model.layers.0.mlp.down_proj.weight": "F32"})
    _replace_tensor(path, "blk.0.ffn_down.weight", raw, GGMLQuantizationType.Q6_K, spec, weights)
    m = import_checkpoint(path)
    assert any("Q6_K tensor(s) are dequantized" in w for w in m.config.warnings)
    np.testing.assert_array_equal(m.weights()["model.layers.0.mlp.down_proj.weight"],
                                  dequantize(raw, GGMLQuantizationType.Q6_K))


def _replace_tensor(path: Path, name: str, raw: np.ndarray, qtype, spec, weights) -> None:
    """Rewrite the GGUF with one tensor's bytes given directly (a type gguf cannot quantize to)."""
    from gguf import GGUFWriter

    r = GGUFReader(path)
    w = GGUFWriter(path.with_suffix(".tmp"), "llama")
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype.name == "ARRAY":
            w.add_array(field.name, value)
        else:
            w.add_key_value(field.name, value, vtype)
    for t in r.tensors:
        if t.name == name:
            w.add_tensor(name, raw, raw_dtype=qtype)
        else:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    path.with_suffix(".tmp").replace(path)


def test_tokenizer_from_the_vocabulary_encodes_like_the_original(safetensors_f32, gguf_f32):
    import json

    from tokenizers import Tokenizer

    model = import_checkpoint(gguf_f32)  # the files live as long as the model
    files = model.tokenizer_files()
    assert [f.name for f in files] == ["tokenizer.json", "tokenizer_config.json"]
    ours, original = Tokenizer.from_file(str(files[0])), Tokenizer.from_file(str(safetensors_f32 / "tokenizer.json"))
    for text in ["In the beginning the compiler read", "tokens: 12345, <s> and </s>!", "  two  spaces\n\nnewlines"]:
        want = original.encode(text, add_special_tokens=False).ids
        assert ours.encode(text, add_special_tokens=False).ids == want
        assert ours.decode(want) == original.decode(want)
    cfg = json.loads(files[1].read_text())
    assert (cfg["bos_token"], cfg["eos_token"], cfg["add_bos_token"]) == ("<s>", "</s>", True)


def test_sentencepiece_vocabulary_merges_by_score():
    from tokenizers import Tokenizer

    from llmirc.frontend.gguf_tokenizer import tokenizer_json

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + \
        ["\u2581", "a", "b", "c", "ab", "bc", "\u2581a", "\u2581ab", "abc", "\u2581abc"]
    scores = [0.0] * 259 + [-1.0, -2.0, -2.0, -2.0, -3.0, -1.5, -4.0, -5.0, -6.0, -7.0]
    types = [2, 3, 3] + [6] * 256 + [1] * 10
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}
    text, cfg, warnings = tokenizer_json(meta, Path("x.gguf"))
    tok = Tokenizer.from_str(text)
    ids = tok.encode("abc", add_special_tokens=False).ids
    assert [tokens[i] for i in ids] == ["\u2581abc"]
    # "bc" (score -1.5) merges before "ab" (-3): "xbc" is byte x, then "bc"
    assert [tokens[i] for i in tok.encode("bc!", add_special_tokens=False).ids] == ["\u2581", "bc", "<0x21>"]
    assert tok.decode(tok.encode("abc cab", add_special_tokens=False).ids) == "abc cab"
    assert cfg["add_bos_token"] is True and not warnings


# --- metadata mapping ---------------------------------------------------------------------------

def test_sliding_window_makes_a_mistral_and_rope_scaling_is_read(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", SPEC, extra_metadata={
        "llama.attention.sliding_window": 16, "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0})
    c = import_checkpoint(path).config
    assert c.architecture == "MistralForCausalLM" and c.layer_windows == (16, 16)
    assert (c.rope.kind, c.rope.params["factor"]) == ("linear", 2.0)


def test_unknown_arch_key_warns(tmp_path):
    c = import_checkpoint(write_gguf(tmp_path / "m.gguf", SPEC, extra_metadata={"llama.frobnication": 3})).config
    assert [w for w in c.warnings if "'llama.frobnication' = 3 is not known to llmirc" in w]


# --- damaged and unsupported files: one error line, exit 1, nothing written --------------------

def _tensor_record(data: bytes, name: str) -> int:
    """Byte offset of the type field of tensor `name`'s record (after name, n_dims, dims)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at + 4 + 8 * n_dims


def _patch(path: Path, fn) -> None:
    path.write_bytes(fn(bytearray(path.read_bytes())))


def _set_type(data: bytearray, name: str, type_id: int) -> bytearray:
    struct.pack_into("<I", data, _tensor_record(data, name), type_id)
    return data


def _set_offset(data: bytearray, name: str, offset: int) -> bytearray:
    struct.pack_into("<Q", data, _tensor_record(data, name) + 4, offset)
    return data


BROKEN = {
    "truncated-data": (lambda d: d[: len(d) // 2], "past the end of the file"),
    "truncated-header": (lambda d: d[:200], "truncated GGUF file"),
    "bad-offset": (lambda d: _set_offset(d, "blk.1.ffn_up.weight", 1 << 40), "tensor 'blk.1.ffn_up.weight' (F32"),
    "unknown-type": (lambda d: _set_type(d, "blk.0.attn_q.weight", 99), "tensor 'blk.0.attn_q.weight' has unknown "
                                                                        "GGML type 99"),
    "missing-key": (lambda d: d.replace(b"llama.block_count", b"llama.block_cnt__"),
                    "missing GGUF metadata key 'llama.block_count'"),
    "bad-magic": (lambda d: b"GGUX" + d[4:], "not a GGUF file"),
    "unsupported-arch": (lambda d: d.replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00"
                                             b"\x00gpt2x", 1),
                         "GGUF architecture 'gpt2x' is not supported"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_damaged_gguf_is_one_error_line(gguf_f32, tmp_path, case):
    breakage, needle = BROKEN[case]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(gguf_f32.read_bytes())
    _patch(bad, breakage)
    out = tmp_path / "out"
    res = run_cli("compile", bad, "-o", out, "-q")
    assert "Traceback" not in res.output
    assert_one_error(res, needle, str(bad))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_tensor_of_another_shape_names_the_gguf_tensor(tmp_path):
    weights = random_weights(SPEC)
    weights["model.norm.weight"] = weights["model.norm.weight"][:32]
    res = run_cli("compile", write_gguf(tmp_path / "m.gguf", SPEC, weights), "--emit", "llm", "-o", tmp_path / "x", "-q")
    assert_one_error(res, "tensor 'output_norm.weight' has shape [32], expected [64]")


def test_integer_tensor_type_is_refused(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", SPEC)
    _patch(path, lambda d: _set_type(d, "blk.0.ffn_norm.weight", int(GGMLQuantizationType.I32)))
    res = run_cli("compile", path, "--emit", "llm", "-o", tmp_path / "x", "-q")
    assert_one_error(res, "tensor 'blk.0.ffn_norm.weight' has GGML type I32, which is not a weight type")


def test_missing_gguf_file(tmp_path):
    assert_one_error(run_cli("compile", tmp_path / "nope.gguf", "-o", tmp_path / "x", "-q"),
                     "nope.gguf: GGUF file does not exist")
