"""A compiler pass that stores linear weights as group-quantized integers (int8 or int4).

Match: `llm.linear` / `llm.fused_linear` whose weight is an `llm.weight` (run after
fold-weights, so the fused q/k/v and gate/up weights are quantized whole) unless the weight's
name or the op's location contains one of the `keep` substrings (default: embeddings and
lm_head stay in float), and, when `only` is given, just those it names (`--lm-head int8`:
lm_head in its own bits, a pass of its own before the one for the other linears). Rewrite:
`llm.quantized_matmul` on derived weights `<name>.<scheme>.qweight` (i8, or i4 for int4), `.scales` (f32 [out, in / group]) and, when
asymmetric, `.qzeros` (i8); a bias becomes an `llm.add` and a fused activation its own ops
after the matmul (the lowering's elementwise epilogues, which IREE fuses back into the matmul's
dispatch). Why: decode reads every weight once per token; int8 reads 1/4 and int4 1/8 of f32's
bytes. The integers come from the interpreter's `llm.quantize` (one definition of the math).

The experts of a mixture-of-experts FFN (`llm.moe_ffn` on stacked [experts, out, in] weights)
become `llm.quantized_moe_ffn` on the same derived tensors, one [out, in] matrix per expert
quantized as a linear's weight; the router (`llm.moe_router`) stays float, since a routing
decision is discontinuous in its logits.

w8a8 (`act_bits=8`): the values are int8 with one scale per output channel and the op carries
`act_bits = 8`: each row of its input is quantized to int8 when it runs, so the lowering's
product is an integer matmul (int8 x int8 -> int32). Linears matching `wide_act` (default
W8A8_TWO_PLANES) get `act_bits = 16`: two int8 planes of their input (its int8 form and that of
the residual), one integer product of twice the rows.

w4a8 (`act_bits=8` on int4 weights): symmetric int4 weights in groups, and each group of a row
of the input is quantized to int8 when it runs (one scale per row and group, as llama.cpp's
Q4_0 x Q8_0 dot products): on a CPU with AVX512-VNNI an integer product per group
(lowering/vnni.py); elsewhere the same numbers from the int8 grid in float.

w4a16 (`act_bits=16` on int4 weights): symmetric int4 weights in groups, as int4, and each row
of the input is quantized to int16 when it runs (one scale per row). The static-batch decode
functions then take an integer product (int16 x uint4 -> int32 per group, IREE's s16u4s32
tiles); every other function computes the same numbers from the int16 grid in float.

Group size: `group_size` when it divides the in-features, else the largest divisor of the
in-features below it, if at least MIN_GROUP; otherwise the layer keeps its float weight, as does
an int4 layer with odd in-features or out-features not a multiple of 8 (docs/quantization.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from iree.compiler import ir

from ..dialect import Builder
from ..dialect.context import location_name
from ..dialect.interpreter import IMPLS
from ..dialect.ops import GATED_ACTIVATIONS
from ..dialect.types import TensorT, from_mlir
from .pass_manager import PassError, PassSpec, register_pass
from .rewrite import apply_patterns, attrs_of, operands_of, producer

# w8a8: int8 weights per output channel, int8 activations per row; w4a8: int4 groups, int8 groups
# of each row; w4a16: int4 groups, int16 rows
SCHEMES = {"int8": 8, "int4": 4, "w8a8": 8, "w4a8": 4, "w4a16": 4}
ACT_BITS = {"w8a8": 8, "w4a8": 8, "w4a16": 16}
DEFAULT_KEEP = "embed|lm_head"  # "|"-separated: a pipeline text splits options at ","
LM_HEAD = "lm_head"  # the output projection's weight name / location substring
# --lm-head: lm_head's weight-only bits whatever --quantize is (llama.cpp's quantizer does the
# same: Q4_0 models get a Q6_K output matrix). On the shipped model int8 costs next to nothing;
# int4 (groups of --group-size) takes it below docs/quantization.md's int4 bar (87.8 % top-1).
LM_HEAD_SCHEMES = {"float": 0, "int8": 8, "int4": 4}
# An int8 lm_head has one scale per output channel (a group larger than any in-features: the whole
# row): with one group IREE fuses the scales into the product, no second dispatch reduces groups.
# 1.1B int4 decode, lm_head f32 / int8 g128 / int8 per channel: 44.3 / 48.2 / 50.9 tok/s; the
# shipped model's top-1 agreement 92.64 % (f32 lm_head) and 92.37 % (int8 per channel).
LM_HEAD_INT8_GROUP = 1 << 30
MIN_GROUP = 8
# w8a8 gives these linears two int8 planes of their input: down_proj reads the gated MLP's
# product, whose outlier channels one int8 scale per token flattens. On the shipped model
# (Genesis 1, 1114 predictions) top-1 agreement with f32 is 98.3 % with one plane everywhere,
# 99.1 % with two planes on down_proj (99.6 % with down_proj weight-only, which in a static-batch
# decode ran at 6 G weights/s; int8 g128 alone: 99.4 %) (docs/quantization.md).
W8A8_TWO_PLANES = "down_proj"
INT4_OUT_MULTIPLE = 8  # IREE 3.13 llvm-cpu cannot compile masked i4 vector loads (a ragged last vector)
# w4a16's int32 sums per group: |int16| * 15 * group < 2**31 needs group <= 4369
W4A16_MAX_GROUP = 4096


@dataclass(frozen=True)
class QuantConfig:
    """What `llmirc compile --quantize` asks for; `pass_spec()` is its pipeline entry."""

    bits: int = 8
    group_size: int = 128
    symmetric: bool = True
    keep: str = DEFAULT_KEEP
    act_bits: int = 0  # 8: activations to int8 too, integer matmuls (w8a8 per row, w4a8 per group); 16 on int4: w4a16
    wide_act: str = ""  # with act_bits: linears (name / location substrings) with two activation planes
    lm_head_bits: int = 0  # 8 or 4: lm_head weight-only in these bits (a pass of its own before the rest); 0: `keep` decides

    @classmethod
    def parse(cls, scheme: str, group_size: int = 128, symmetric: bool = True,
              keep: str = DEFAULT_KEEP, lm_head: str = "float") -> "QuantConfig":
        if scheme not in SCHEMES:
            raise PassError(f"--quantize must be one of {', '.join(SCHEMES)}, got '{scheme}'")
        if lm_head not in LM_HEAD_SCHEMES:
            raise PassError(f"--lm-head must be one of {', '.join(LM_HEAD_SCHEMES)}, got '{lm_head}'")
        act_bits, wide_act = ACT_BITS.get(scheme, 0), W8A8_TWO_PLANES if scheme == "w8a8" else ""
        config = cls(SCHEMES[scheme], group_size, symmetric, "|".join(keep_patterns(keep)), act_bits, wide_act,
                     LM_HEAD_SCHEMES[lm_head])
        config.check()
        return config

    def check(self) -> None:
        if self.bits not in (8, 4):
            raise PassError(f"quantize-weights: bits must be 8 or 4, got {self.bits}")
        if self.group_size < 1:
            raise PassError(f"quantize-weights: group size must be a positive integer, got {self.group_size}")
        if self.lm_head_bits not in (0, 8, 4):
            raise PassError(f"quantize-weights: lm_head bits must be 8 or 4, got {self.lm_head_bits}")
        if self.act_bits not in (0, 8, 16):
            raise PassError(f"quantize-weights: act_bits must be 0, 8 or 16, got {self.act_bits}")
        if self.act_bits == 8 and not self.symmetric:
            raise PassError(f"quantize-weights: {self.scheme} (act_bits 8) takes symmetric weights; drop --asymmetric")
        if self.wide_act and (self.act_bits != 8 or self.bits != 8):
            raise PassError("quantize-weights: wide_act (two activation planes) is for w8a8 (int8 weights, act_bits 8)")
        if self.act_bits == 16 and (self.bits != 4 or not self.symmetric):
            raise PassError("quantize-weights: w4a16 (act_bits 16) takes symmetric int4 weights; drop --asymmetric")
        if self.act_bits == 16 and self.group_size > W4A16_MAX_GROUP:
            raise PassError(f"quantize-weights: w4a16 takes --group-size at most {W4A16_MAX_GROUP} (its int32 "
                            f"sums per group would overflow), got {self.group_size}")

    @property
    def scheme(self) -> str:
        return {8: f"w{self.bits}a8", 16: "w4a16"}.get(self.act_bits, f"int{self.bits}")

    @property
    def lm_head(self) -> str:
        """--lm-head's value: "float" or "int8" / "int4" (LM_HEAD_SCHEMES)."""
        return f"int{self.lm_head_bits}" if self.lm_head_bits else "float"

    def pass_spec(self) -> PassSpec:
        """The pass for every linear but lm_head's when `lm_head_bits` gives it its own."""
        spec = {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric, "keep": self.keep}
        act = {"act_bits": self.act_bits, "wide_act": self.wide_act} if self.act_bits else {}
        return ("quantize-weights", spec | act)

    def pass_specs(self) -> list[PassSpec]:
        """The pipeline entries: lm_head's own pass first (weight-only, `lm_head_bits`), when
        asked for, then `pass_spec()`, which finds lm_head already quantized."""
        group = LM_HEAD_INT8_GROUP if self.lm_head_bits == 8 else self.group_size
        head: list[PassSpec] = [("quantize-weights", {"bits": self.lm_head_bits, "group_size": group,
                                                      "symmetric": self.symmetric, "keep": "",
                                                      "only": LM_HEAD})] if self.lm_head_bits else []
        return head + [self.pass_spec()]


def keep_patterns(keep: str) -> list[str]:
    """'embed|lm_head' (or 'embed,lm_head') -> ['embed', 'lm_head']."""
    return [k.strip() for k in re.split(r"[|,]", keep) if k.strip()]


def choose_group_size(in_features: int, group_size: int, bits: int) -> int | None:
    """The group size a layer gets (see the module docstring), or None: keep it in float."""
    if bits == 4 and in_features % 2:
        return None  # int4 rows are packed two values per byte
    for g in range(min(group_size, in_features), MIN_GROUP - 1, -1):
        if in_features % g == 0:
            return g
    return None


def tensor_names(name: str, bits: int, group_size: int, symmetric: bool) -> tuple[str, str, str]:
    """Derived weight names; the scheme is part of them, so one store can hold several."""
    base = f"{name}.int{bits}_g{group_size}_{'sym' if symmetric else 'asym'}"
    return base + ".qweight", base + ".scales", base + ".qzeros"


def _derive(weights, name: str, attrs: dict, names: tuple[str, str, str]) -> None:
    """Register the three outputs of `llm.quantize` on weight `name`, computed once."""
    parts: dict[int, object] = {}

    def part(i: int):
        if i not in parts:
            parts.update(enumerate(IMPLS["quantize"](attrs, weights[name])))
        return parts.pop(i)  # the store caches what it asked for; keep nothing twice

    for i, n in enumerate(names):
        weights.derive(n, lambda i=i: part(i))


def _named(op: ir.Operation, name: str, patterns: list[str]) -> bool:
    """`name` (a weight's) or the op's location contains one of `patterns` (keep, wide_act)."""
    return any(p in name or p in location_name(op.location) for p in patterns)


def _activation(b: Builder, y: ir.Value, activation: str, loc) -> ir.Value:
    """The epilogue of a fused_linear as separate ops (the interpreter's own formula)."""
    if activation in GATED_ACTIVATIONS:
        n = from_mlir(y.type).shape[-1] // 2
        gate = b.slice(y, axis=-1, start=0, size=n, loc=loc)
        up = b.slice(y, axis=-1, start=n, size=n, loc=loc)
        return b.mul(_activation(b, gate, GATED_ACTIVATIONS[activation], loc), up, loc=loc)
    if activation == "silu":
        return b.silu(y, loc=loc)
    return b.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none", loc=loc)


@register_pass("quantize-weights", "Store linear weights as group-quantized int8/int4 (llm.quantized_matmul).",
               needs_weights=True, bits=8, group_size=128, symmetric=True, keep=DEFAULT_KEEP, act_bits=0,
               wide_act="", only="")
def quantize_weights(module: ir.Module, weights, bits: int, group_size: int, symmetric: bool, keep: str,
                     act_bits: int = 0, wide_act: str = "", only: str = "") -> None:
    """`only` (substrings as `keep`): quantize just the linears it names (QuantConfig.pass_specs:
    lm_head in its own bits); empty: every linear `keep` does not name."""
    QuantConfig(bits, group_size, symmetric, keep, act_bits, wide_act).check()
    kept, wide_patterns, chosen = keep_patterns(keep), keep_patterns(wide_act), keep_patterns(only)

    def rewrite(op: ir.Operation) -> ir.Value | None:
        x, w, bias = (operands_of(op) + [None])[:3]
        source = producer(w, "weight")
        name = attrs_of(source)["name"] if source is not None else None
        if name is None or _named(op, name, kept) or (chosen and not _named(op, name, chosen)):
            return None
        n, k = from_mlir(w.type).shape
        act = 2 * act_bits if act_bits and _named(op, name, wide_patterns) else act_bits
        g = k if act and bits == 8 else choose_group_size(k, group_size, bits)  # w8a8: one scale per output channel
        if g is None or (bits == 4 and n % INT4_OUT_MULTIPLE):
            return None
        names = tensor_names(name, bits, g, symmetric)
        if names[0] not in weights:  # prefill and decode share the weight
            _derive(weights, name, {"bits": bits, "group_size": g, "symmetric": symmetric}, names)
        b = Builder(ir.InsertionPoint(op))
        q = b.weight(name=names[0], result_types=[TensorT((n, k), f"i{bits}")], loc=op.location)
        s = b.weight(name=names[1], result_types=[TensorT((n, k // g), "f32")], loc=op.location)
        z = None if symmetric else b.weight(name=names[2], result_types=[TensorT((n, k // g), "i8")],
                                            loc=op.location)
        y = b.quantized_matmul(x, q, s, z, bits=bits, group_size=g, act_bits=act, loc=op.location)
        if bias is not None:
            y = b.add(y, bias, loc=op.location)
        if op.name == "llm.fused_linear":
            y = _activation(b, y, attrs_of(op)["activation"], op.location)
        return y

    def rewrite_experts(op: ir.Operation) -> ir.Value | None:
        return None if chosen else _quantize_experts(op, weights, bits, group_size, symmetric, kept)

    apply_patterns(module, {"linear": [rewrite], "fused_linear": [rewrite], "moe_ffn": [rewrite_experts]})


def _derive_experts(weights, name: str, attrs: dict, names: tuple[str, str, str]) -> None:
    """`_derive` for stacked expert weights [E, N, K]: each expert's [N, K] matrix quantized as a
    linear's weight is (llm.quantize on the [E x N, K] rows), the results shaped [E, N, ...]."""
    parts: dict[int, object] = {}

    def part(i: int):
        if i not in parts:
            w = weights[name]
            e, n, k = w.shape
            out = IMPLS["quantize"](attrs, w.reshape(e * n, k))
            parts.update((j, a.reshape(e, n, -1)) for j, a in enumerate(out))
        return parts.pop(i)

    for i, n in enumerate(names):
        weights.derive(n, lambda i=i: part(i))


def _quantize_experts(op: ir.Operation, weights, bits: int, group_size: int, symmetric: bool,
                      kept: list[str]) -> ir.Value | None:
    """moe_ffn on stacked expert weights -> quantized_moe_ffn (both weights, or neither: the op
    takes one scheme), with the group-size rule of linears applied to each weight's in-features."""
    x, routing, indices, gate_up, down = operands_of(op)
    sources = [producer(v, "weight") for v in (gate_up, down)]
    if any(s is None for s in sources):
        return None
    names = [attrs_of(s)["name"] for s in sources]
    if any(_named(op, n, kept) for n in names):
        return None
    shapes = [from_mlir(v.type).shape for v in (gate_up, down)]
    groups = [choose_group_size(shape[2], group_size, bits) for shape in shapes]
    if None in groups or (bits == 4 and any(shape[1] % INT4_OUT_MULTIPLE for shape in shapes)):
        return None
    b = Builder(ir.InsertionPoint(op))
    values: list[ir.Value] = []
    zeros: list[ir.Value | None] = []
    for name, (e, n, k), g in zip(names, shapes, groups):
        derived = tensor_names(name, bits, g, symmetric)
        if derived[0] not in weights:
            _derive_experts(weights, name, {"bits": bits, "group_size": g, "symmetric": symmetric}, derived)
        values += [b.weight(name=derived[0], result_types=[TensorT((e, n, k), f"i{bits}")], loc=op.location),
                   b.weight(name=derived[1], result_types=[TensorT((e, n, k // g), "f32")], loc=op.location)]
        zeros.append(None if symmetric else b.weight(name=derived[2], result_types=[TensorT((e, n, k // g), "i8")],
                                                     loc=op.location))
    return b.quantized_moe_ffn(x, routing, indices, *values, *zeros, bits=bits, gate_up_group_size=groups[0],
                               down_group_size=groups[1], activation=attrs_of(op)["activation"], loc=op.location)
