"""A compiler pass that splits the model over N devices: tensor parallelism (Megatron-style).

Why: a model whose weights do not fit one device, or whose decode step is bound by one
device's memory bandwidth, runs each matmul on N devices over 1/N of its weight; the
activations between the split matmuls stay split, so one layer costs two all-reduces.

The pass is two pure steps over data (docs/parallel.md):
- `plan_tensor_parallel(module, n)` reads the module and returns a `ShardingPlan`: which
  weights are split along which dim and in which parts (q, k and v of a fused q/k/v weight
  are split each on its own), after which linears an all-reduce or an all-gather goes, how
  often the KV heads are replicated when there are fewer than N, and the devices each op
  runs on. Roles come from the op locations the frontend gives (`q_proj`, `o_proj`, ...;
  the fusion passes keep them: `qkv_proj`, `gate_up_proj`); everything else is replicated.
- `apply_plan(module, plan, weights)` rewrites every function into N per-device copies of
  its ops, each op carrying `llm.device = i`. Shard i of weight `name` is a new weight
  `name.shard{i}` that the WeightStore derives from the plan. A collective is one
  `device_all_reduce` / `device_all_gather` per receiving device whose operand j comes from
  device j. Each KV cache argument becomes N arguments, the cache of device i holding the KV
  heads of its query heads (one page pool per device; the block tables are shared).

`verify_placement(module)` checks what the rewrite promises: every llm op is placed and
reads only values of its own device (or replicated arguments), except the collectives,
which read operand j from device j.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from iree.compiler import ir

from ..dialect import Builder, VerificationError
from ..dialect.context import location_name
from ..dialect.ops import GATED_ACTIVATIONS
from ..dialect.spec import lookup
from ..dialect.types import KVCacheT, PagedKVCacheT, TensorT, from_mlir, to_mlir
from .pass_manager import PassError, register_pass
from .rewrite import attrs_of, functions, operands_of, producer, sync_function_type
from .sibling_linears import users

PLACEMENT = "llm.device"               # i64 on every op: the device it runs on
ARG_DEVICES = "llm.arg_devices"        # i64 array on a func: each argument's device, EVERY = a copy on each
RESULT_DEVICES = "llm.result_devices"  # i64 array on a func: the device each result is taken from
NUM_DEVICES = "llm.num_devices"        # i64 on the module
EVERY = -1
COLLECTIVES = ("llm.device_all_reduce", "llm.device_all_gather")

# Op roles by the last component of an op's location (the frontend's Llama naming).
COLUMN = ("q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj")  # split out-features
ROW = ("o_proj", "down_proj")  # split in-features, then all-reduce the partial sums
GATHER = ("lm_head",)          # split out-features (vocab), then all-gather on one device
LINEARS = ("llm.linear", "llm.fused_linear")
HEADS_AXIS = 2  # [batch, seq, heads, head_dim]
PER_DEVICE_OPS = ("rope", "rms_norm", "layer_norm", "append_kv", "paged_append_kv", "attention",
                  "paged_attention", "add", "mul", "silu", "gelu", "scale", "softcap", "convert")


# ---- the plan ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """A run of `size` rows (or columns) of a weight that is split on its own, made of `units`
    indivisible units: heads of size // units rows for attention projections, single features
    (units == size) otherwise."""

    size: int
    units: int

    def block(self, device: int, n: int) -> tuple[int, int]:
        """[start, stop) of this part on `device`: block `device` of n when there are at least n
        units; else (KV heads fewer than devices) unit device // (n // units), so each unit is
        replicated on n // units consecutive devices, the ones whose query heads read it."""
        if self.units >= n:
            step = self.size // n
            return device * step, (device + 1) * step
        step, unit = self.size // self.units, device // (n // self.units)
        return unit * step, (unit + 1) * step

    def local_size(self, n: int) -> int:
        start, stop = self.block(0, n)
        return stop - start

    def replication(self, n: int) -> int:
        return max(1, n // self.units)


@dataclass(frozen=True)
class WeightSplit:
    """Weight `name` split along `dim` (0: out-features, 1: in-features) part by part: shard i
    is the concatenation of each part's block i, never a contiguous slice of a fused weight."""

    name: str
    dim: int
    parts: tuple[Part, ...]

    def shard_name(self, device: int) -> str:
        return f"{self.name}.shard{device}"

    def shard(self, w: np.ndarray, device: int, n: int) -> np.ndarray:
        pieces, offset = [], 0
        for p in self.parts:
            start, stop = p.block(device, n)
            pieces.append(np.take(w, np.arange(offset + start, offset + stop), axis=self.dim))
            offset += p.size
        return np.ascontiguousarray(np.concatenate(pieces, axis=self.dim))

    def shard_shape(self, shape: tuple[int, ...], n: int) -> tuple[int, ...]:
        out = list(shape)
        out[self.dim] = sum(p.local_size(n) for p in self.parts)
        return tuple(out)


@dataclass(frozen=True)
class OpPlacement:
    """Where one op of the input module runs and how it is rewritten.

    action: "weight" (materialized on the devices that read it), "replicate" (one copy per
    device, attrs adapted to the per-device shapes), "column" / "row" / "gather" (split linear),
    "slice-part" (part `part` of a split result), "return"."""

    function: str
    index: int  # position in the function's entry block
    op: str
    action: str
    devices: tuple[int, ...]
    parts: tuple[Part, ...] = ()  # column/gather: the parts of the out-features; slice-part: its input's
    part: int = -1


@dataclass(frozen=True)
class ShardingPlan:
    num_devices: int
    weights: tuple[WeightSplit, ...]  # split weights; every other weight is replicated where it is read
    all_reduce_after: tuple[str, ...]  # locations of the linears followed by an all-reduce
    all_gather_after: tuple[str, ...]  # ... and by an all-gather
    kv_replication: int  # devices holding each KV head (n // kv_heads when kv_heads < n, else 1)
    placement: tuple[OpPlacement, ...]
    gather_device: int = 0  # the device an all-gathered result (the logits) is gathered on
    _by_name: dict = field(init=False, compare=False, repr=False)
    _by_op: dict = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {w.name: w for w in self.weights})
        object.__setattr__(self, "_by_op", {(p.function, p.index): p for p in self.placement})

    def split_of(self, name: str) -> WeightSplit | None:
        return self._by_name.get(name)

    def op(self, function: str, index: int) -> OpPlacement:
        return self._by_op[(function, index)]


@dataclass(frozen=True)
class Layout:
    """How a value of the input module exists on the devices.

    kind "replicated": a full copy on each of `devices`; "weight": a weight (or weight-only
    concat), materialized where it is read; "split": device i holds its block along `axis`
    (made of `parts`); "local": per-device values of their own (the KV caches)."""

    kind: str
    devices: tuple[int, ...]
    axis: int = -1
    parts: tuple[Part, ...] = ()


class _Planner:
    def __init__(self, n: int):
        self.n = n
        self.all = tuple(range(n))
        self.splits: dict[str, WeightSplit] = {}
        self.reduce_after: list[str] = []
        self.gather_after: list[str] = []
        self.replication = 1
        self.placement: list[OpPlacement] = []

    def fail(self, op: ir.Operation, why: str):
        raise PassError(f"shard-tp: '{op.name}' at {location_name(op.location)}: {why}")

    def add_split(self, op: ir.Operation, split: WeightSplit) -> None:
        old = self.splits.setdefault(split.name, split)
        if old != split:
            self.fail(op, f"weight '{split.name}' would be split two ways: {old} and {split}")
        for p in split.parts:
            self.replication = max(self.replication, p.replication(self.n))

    def check_part(self, op: ir.Operation, p: Part, may_replicate: bool, what: str = "") -> None:
        if p.units >= self.n and p.units % self.n == 0:
            return
        if may_replicate and p.units < self.n and self.n % p.units == 0 and p.units != p.size:
            return  # KV heads fewer than devices: replicated
        what = what or ("heads" if p.units != p.size else "features")
        self.fail(op, f"{p.units} {what} do not split over {self.n} devices")

    def function(self, fname: str, func: ir.Operation) -> None:
        block = func.regions[0].blocks[0]
        lay: dict[ir.Value, Layout] = {}
        for a in block.arguments:
            t = from_mlir(a.type)
            lay[a] = Layout("local", self.all) if isinstance(t, (KVCacheT, PagedKVCacheT)) else \
                Layout("replicated", self.all)
        for index, op in enumerate(o.operation for o in block.operations):
            action, devices, outs, extra = self.op(op, [None if v is None else lay[v] for v in _flat(op)])
            self.placement.append(OpPlacement(fname, index, op.name, action, devices, **extra))
            for r, layout in zip(op.results, outs):
                lay[r] = layout

    def op(self, op: ir.Operation, ins: list[Layout | None]):
        """(action, devices, result layouts, extra OpPlacement fields) of one op."""
        name = op.name
        if name == "func.return":
            if any(i.kind == "split" for i in ins):
                self.fail(op, "a split value is returned")
            return "return", self.all, [], {}
        if not name.startswith("llm."):
            self.fail(op, "only llm ops can be sharded")
        kind = name.removeprefix("llm.")
        role = location_name(op.location).rsplit(".", 1)[-1]
        present = [i for i in ins if i is not None]
        if kind == "weight" or kind == "concat" and present and all(i.kind == "weight" for i in present):
            return "weight", self.all, [Layout("weight", self.all)], {}
        if name in LINEARS and role in COLUMN + ROW + GATHER:
            return self.linear(op, role, ins)
        if role in COLUMN + ROW + GATHER and kind in ("quantized_matmul", "sharded_linear"):
            self.fail(op, f"{kind} is not split yet: run shard-tp before quantize-weights")
        split = [i for i in present if i.kind == "split"]
        local = [i for i in present if i.kind == "local"]
        rank = lambda: from_mlir(op.operands[0].type).rank  # noqa: E731
        if kind == "slice" and split:
            return self.slice(op, split[0])
        if kind == "reshape" and split:
            return self.reshape(op, split[0])
        if (split or local) and kind in PER_DEVICE_OPS:
            if kind in ("attention", "paged_attention"):
                q = ins[0]
                if q is None or q.kind != "split" or q.axis != HEADS_AXIS:
                    self.fail(op, "the query is not split by heads")
                for p in q.parts:
                    self.check_part(op, p, may_replicate=False, what="query heads")  # never replicated
            if len({(i.axis, i.parts) for i in split}) > 1:
                self.fail(op, "operands split differently")
            if kind in ("rms_norm", "layer_norm", "rope") and split and split[0].axis == rank() - 1:
                self.fail(op, "normalizes or rotates along the split axis")
            if kind in ("add", "mul") and any(i.kind != "split" for i in present):
                self.fail(op, "mixes a split and a replicated operand")
            out = Layout("local", self.all) if kind.endswith("append_kv") else split[0]
            return "replicate", self.all, [out] * len(op.results), {}
        if split or local:
            self.fail(op, "has no rule for split operands")
        devices = self.all
        for i in present:
            devices = tuple(d for d in devices if d in i.devices)
        return "replicate", devices, [Layout("replicated", devices)] * len(op.results), {}

    def linear(self, op: ir.Operation, role: str, ins: list[Layout | None]):
        x, w = ins[0], ins[1]
        args = operands_of(op)
        wv, bias = args[1], args[2] if len(args) > 2 else None
        y_t = from_mlir(op.results[0].type)
        axis = y_t.rank - 1
        loc = location_name(op.location)
        if w is None or w.kind != "weight":
            self.fail(op, "the weight is not a model weight")
        if role in ROW:
            if x is None or x.kind != "split" or x.axis != axis or len(x.parts) != 1:
                self.fail(op, "the input of a row-parallel linear must be split along its features")
            if op.name != "llm.linear":
                self.fail(op, "a row-parallel linear cannot have a fused activation")
            (p,) = x.parts
            self.check_part(op, p, may_replicate=False)
            for name, parts in _weight_parts(self, op, wv, (Part(p.size, p.units),)):
                self.add_split(op, WeightSplit(name, 1, parts))
            self.reduce_after.append(loc)
            return "row", self.all, [Layout("replicated", self.all)], {}
        if x is None or x.kind != "replicated" or x.devices != self.all:
            self.fail(op, "the input of a column-parallel linear must be replicated on every device")
        activation = attrs_of(op).get("activation") if op.name == "llm.fused_linear" else None
        width = from_mlir(wv.type).shape[0]
        if activation in GATED_ACTIVATIONS:  # swiglu, geglu: the gate and up halves
            parts: tuple[Part, ...] = (Part(width // 2, width // 2),) * 2
        else:
            parts = _output_parts(self, op) if activation is None else (Part(width, width),)
        for p in parts:
            self.check_part(op, p, may_replicate=role in COLUMN)
        for name, own in _weight_parts(self, op, wv, parts):
            self.add_split(op, WeightSplit(name, 0, own))
        if bias is not None:
            for name, own in _weight_parts(self, op, bias, parts):
                self.add_split(op, WeightSplit(name, 0, own))
        out_parts = parts[:1] if activation in GATED_ACTIVATIONS else parts
        if role in GATHER:
            self.gather_after.append(loc)
            return "gather", self.all, [Layout("replicated", (0,))], {"parts": parts}
        return "column", self.all, [Layout("split", self.all, axis, out_parts)], {"parts": parts}

    def slice(self, op: ir.Operation, x: Layout):
        a = attrs_of(op)
        rank = from_mlir(op.operands[0].type).rank
        if a["axis"] % rank != x.axis:  # a slice across the split axis is taken on each device
            return "replicate", self.all, [x], {}
        offset = 0
        for k, p in enumerate(x.parts):
            if (a["start"], a["size"]) == (offset, p.size):
                return "slice-part", self.all, [Layout("split", self.all, x.axis, (p,))], \
                    {"parts": x.parts, "part": k}
            offset += p.size
        self.fail(op, f"slice [{a['start']}, +{a['size']}) is not one part of {x.parts}")

    def reshape(self, op: ir.Operation, x: Layout):
        shape = list(attrs_of(op)["shape"])
        if len(x.parts) != 1 or any(d != 0 for d in shape[:x.axis]) or len(shape) <= x.axis:
            self.fail(op, f"reshape {shape} of a value split along axis {x.axis}")
        if shape[x.axis] == 0:
            self.fail(op, "reshape copies the split axis")
        (p,) = x.parts  # the split axis keeps its units (heads): [b, s, h * d] <-> [b, s, h, d]
        return "replicate", self.all, [Layout("split", self.all, x.axis, (Part(shape[x.axis], p.units),))], {}


def _flat(op: ir.Operation) -> list[ir.Value | None]:
    """Operands in spec order (a variadic op's values flattened); all operands for other ops."""
    if not op.name.startswith("llm."):
        return list(op.operands)
    out: list[ir.Value | None] = []
    for v in operands_of(op):
        out.extend(v if isinstance(v, list) else [v])
    return out


def _weight_name(planner: _Planner, op: ir.Operation, v: ir.Value) -> str:
    w = producer(v, "weight")
    if w is None:
        planner.fail(op, "the bias is not a model weight")
    return attrs_of(w)["name"]


def _weight_parts(planner: _Planner, op: ir.Operation, v: ir.Value, parts: tuple[Part, ...]):
    """(weight name, its parts) for a linear's weight or bias: one weight holding every part, or
    a weight-only concat (fuse-qkv without fold-weights) whose operands are the parts."""
    w = producer(v, "weight")
    if w is not None:
        return [(attrs_of(w)["name"], parts)]
    cat = producer(v, "concat")
    names = [_weight_name(planner, op, x) for x in operands_of(cat)[0]]
    sizes = [from_mlir(x.type).shape[0] for x in operands_of(cat)[0]]
    if attrs_of(cat)["axis"] % 2 != 0 or sizes != [p.size for p in parts]:
        planner.fail(op, f"the concatenated weight {names} does not match the parts {parts}")
    return [(name, (p,)) for name, p in zip(names, parts)]


def _heads(v: ir.Value, size: int) -> int:
    """Units of a column-parallel result: heads when it is reshaped to [b, s, heads, head_dim]."""
    heads = {from_mlir(u.results[0].type).shape[HEADS_AXIS] for u in users(v)
             if u.name == "llm.reshape" and from_mlir(u.results[0].type).rank == 4}
    return heads.pop() if len(heads) == 1 else size


def _output_parts(planner: _Planner, op: ir.Operation) -> tuple[Part, ...]:
    """The parts of a column-parallel linear's out-features: the slices that tile its result
    (fuse-qkv's q, k, v; fuse-gate-up's halves), or the whole result as one part."""
    y = op.results[0]
    width = from_mlir(y.type).shape[-1]
    last = from_mlir(y.type).rank - 1
    us = users(y)
    if not us or any(u.name != "llm.slice" or attrs_of(u)["axis"] % (last + 1) != last for u in us):
        return (Part(width, _heads(y, width)),)
    spans: dict[tuple[int, int], ir.Value] = {}
    for u in us:
        a = attrs_of(u)
        spans.setdefault((a["start"], a["size"]), u.results[0])
    offset, parts = 0, []
    for (start, size), v in sorted(spans.items()):
        if start != offset:
            planner.fail(op, f"the slices of its result do not tile it: {sorted(spans)}")
        parts.append(Part(size, _heads(v, size)))
        offset += size
    if offset != width:
        planner.fail(op, f"the slices of its result do not tile it: {sorted(spans)}")
    return tuple(parts)


def plan_tensor_parallel(module: ir.Module, n: int) -> ShardingPlan:
    """The sharding plan of `module` over `n` devices (pure: the module is not changed)."""
    if n < 1:
        raise PassError(f"shard-tp: tp must be >= 1, got {n}")
    planner = _Planner(n)
    for fname, func in functions(module).items():
        planner.function(fname, func)
    return ShardingPlan(n, tuple(planner.splits.values()), tuple(dict.fromkeys(planner.reduce_after)),
                        tuple(dict.fromkeys(planner.gather_after)), planner.replication, tuple(planner.placement))


# ---- the rewrite ---------------------------------------------------------------------------

def _i64(v: int) -> ir.IntegerAttr:
    return ir.IntegerAttr.get(ir.IntegerType.get_signless(64), v)


def _local_cache(t: KVCacheT | PagedKVCacheT, n: int) -> KVCacheT | PagedKVCacheT:
    """The cache type of one device: its KV heads (one when there are fewer heads than devices)."""
    kv = t.kv_heads // n if t.kv_heads >= n else 1
    if t.kv_heads >= n and t.kv_heads % n or t.kv_heads < n and n % t.kv_heads:
        raise PassError(f"shard-tp: {t.kv_heads} KV heads do not split over {n} devices")
    return type(t)(*((kv if f == "kv_heads" else getattr(t, f)) for f in t.__dataclass_fields__))


class _Rewriter:
    def __init__(self, plan: ShardingPlan, weights, fname: str, func: ir.Operation):
        self.plan, self.weights, self.fname, self.func = plan, weights, fname, func
        self.n = plan.num_devices
        self.vals: dict[ir.Value, dict[int, ir.Value]] = {}
        self.deferred: set[ir.Value] = set()
        self.materialized: dict[tuple[ir.Value, int], ir.Value] = {}

    def place(self, result: ir.Value | tuple, device: int):
        first = result[0] if isinstance(result, tuple) else result
        first.owner.attributes[PLACEMENT] = _i64(device)
        return result

    def value(self, v: ir.Value, d: int, b: Builder) -> ir.Value:
        """The copy of input-module value `v` on device `d` (a weight is materialized there)."""
        if v not in self.deferred:
            return self.vals[v][d]
        if (v, d) not in self.materialized:
            op = v.owner.operation
            if op.name == "llm.weight":
                new = b.weight(name=attrs_of(op)["name"], result_types=[from_mlir(v.type)], loc=op.location)
            else:
                new = b.concat([self.value(x, d, b) for x in operands_of(op)[0]], loc=op.location, **attrs_of(op))
            self.materialized[(v, d)] = self.place(new, d)
        return self.materialized[(v, d)]

    def shard(self, v: ir.Value, d: int, b: Builder) -> ir.Value:
        """Shard `d` of a weight (or of a weight-only concat: the concat of its operands' shards)."""
        op = v.owner.operation
        if op.name == "llm.concat":
            return self.place(b.concat([self.shard(x, d, b) for x in operands_of(op)[0]], loc=op.location,
                                       **attrs_of(op)), d)
        name = attrs_of(op)["name"]
        split = self.plan.split_of(name)
        t = from_mlir(v.type)
        if split.shard_name(d) not in self.weights:
            self.weights.derive(split.shard_name(d), lambda s=split, d=d: s.shard(self.weights[s.name], d, self.n))
        shard_t = TensorT(split.shard_shape(t.shape, self.n), t.dtype)
        return self.place(b.weight(name=split.shard_name(d), result_types=[shard_t], loc=op.location), d)

    def run(self) -> None:
        block = self.func.regions[0].blocks[0]
        old_ops = [o.operation for o in block.operations]
        caches = []
        for a in list(block.arguments):
            t = from_mlir(a.type)
            if isinstance(t, (KVCacheT, PagedKVCacheT)):
                local = to_mlir(_local_cache(t, self.n))
                self.vals[a] = {d: block.add_argument(local, a.location) for d in range(self.n)}
                caches.append(a)
            else:
                self.vals[a] = {d: a for d in range(self.n)}
        for index, op in enumerate(old_ops):
            self.rewrite(op, self.plan.op(self.fname, index))
        for op in reversed(old_ops):
            op.erase()
        n_args = len(block.arguments)
        for a in reversed(caches):
            block.erase_argument(a.arg_number)
        arg_devices = [EVERY] * (n_args - self.n * len(caches) - len(caches)) + \
            [d for _ in caches for d in range(self.n)]
        self.func.attributes[ARG_DEVICES] = ir.DenseI64ArrayAttr.get(arg_devices)
        sync_function_type(self.func)

    def rewrite(self, op: ir.Operation, p: OpPlacement) -> None:
        b = Builder(ir.InsertionPoint(op))
        if p.action == "weight":
            self.deferred.add(op.results[0])
            return
        if p.action == "return":
            outs, devices = [], []
            for v in op.operands:
                copies = self.vals[v]
                if isinstance(from_mlir(v.type), (KVCacheT, PagedKVCacheT)):  # one cache per device
                    outs += [copies[d] for d in range(self.n)]
                    devices += list(range(self.n))
                else:
                    d = min(copies)
                    outs.append(copies[d])
                    devices.append(d)
            from iree.compiler.dialects import func as func_d

            func_d.ReturnOp(outs, ip=ir.InsertionPoint(op))
            self.func.attributes[RESULT_DEVICES] = ir.DenseI64ArrayAttr.get(devices)
            return
        spec = lookup(op.name)
        attrs = attrs_of(op)
        args = operands_of(op)
        result = {}
        if p.action in ("column", "gather", "row"):
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else None
            partial = {}
            for d in range(self.n):
                ws = self.shard(w, d, b)
                bs = self.shard(bias, d, b) if bias is not None and p.action != "row" else None
                extra = {"activation": attrs["activation"]} if op.name == "llm.fused_linear" else {}
                partial[d] = self.place(b.create(spec, [self.vals[x][d], ws, bs], extra, loc=op.location).result, d)
            if p.action == "column":
                result = partial
            elif p.action == "gather":
                g = self.plan.gather_device
                dim = from_mlir(op.results[0].type).rank - 1
                result = {g: self.place(b.device_all_gather([partial[d] for d in range(self.n)], dim=dim,
                                                            loc=op.location), g)}
            else:
                for d in range(self.n):
                    r = self.place(b.device_all_reduce([partial[j] for j in range(self.n)], loc=op.location), d)
                    result[d] = r if bias is None else self.place(b.add(r, self.value(bias, d, b), loc=op.location), d)
            self.vals[op.results[0]] = result
            return
        per_result: list[dict[int, ir.Value]] = [{} for _ in op.results]
        for d in p.devices:
            local = [None if v is None else [self.value(x, d, b) for x in v] if isinstance(v, list)
                     else self.value(v, d, b) for v in args]
            a = dict(attrs)
            if p.action == "slice-part":
                a["start"] = sum(q.local_size(self.n) for q in p.parts[:p.part])
                a["size"] = p.parts[p.part].local_size(self.n)
            elif op.name == "llm.reshape":
                a["shape"] = _local_shape(list(a["shape"]), from_mlir(args[0].type), from_mlir(local[0].type))
            elif op.name in ("llm.attention", "llm.paged_attention"):
                a["num_heads"] = from_mlir(local[0].type).shape[HEADS_AXIS]
                a["num_kv_heads"] = from_mlir(local[1].type).kv_heads
            new = b.create(spec, local, a, loc=op.location)
            new.attributes[PLACEMENT] = _i64(d)
            for i, r in enumerate(new.results):
                per_result[i][d] = r
        for r, copies in zip(op.results, per_result):
            self.vals[r] = copies


def _local_shape(shape: list[int], full: TensorT, local: TensorT) -> list[int]:
    """A reshape's target on a device whose input is its block of `full` (one axis differs)."""
    diff = [i for i, (f, l) in enumerate(zip(full.shape, local.shape)) if f != l]
    if not diff:
        return shape
    (axis,) = diff
    out = list(shape)
    out[axis] = shape[axis] * local.shape[axis] // full.shape[axis]
    return out


def apply_plan(module: ir.Module, plan: ShardingPlan, weights) -> None:
    """Rewrite `module` as `plan` says; shard weights are registered in `weights` (a WeightStore)."""
    with module.context, ir.Location.unknown():
        for fname, func in functions(module).items():
            _Rewriter(plan, weights, fname, func).run()
        module.operation.attributes[NUM_DEVICES] = _i64(plan.num_devices)


@register_pass("shard-tp", "Tensor parallelism over tp devices: split linears, per-device ops and KV caches, "
               "collectives (tp=1: nothing).", needs_weights=True, tp=1)
def shard_tp(module: ir.Module, weights, tp: int = 1) -> None:
    if tp == 1:
        return
    if NUM_DEVICES in module.operation.attributes:
        raise PassError("shard-tp: the module is already sharded")
    apply_plan(module, plan_tensor_parallel(module, tp), weights)
    verify_placement(module)


# ---- the placement check ---------------------------------------------------------------------

def verify_placement(module: ir.Module) -> None:
    """Every llm op has a device in [0, n) and reads only its device's values or replicated
    arguments; a collective reads operand j from device j, one per device. Raises
    VerificationError with every violation."""
    errors: list[str] = []
    attrs = module.operation.attributes
    if NUM_DEVICES not in attrs:
        raise VerificationError([f"module has no '{NUM_DEVICES}': not sharded"])
    n = ir.IntegerAttr(attrs[NUM_DEVICES]).value
    for fname, func in functions(module).items():
        block = func.regions[0].blocks[0]
        arg_devices = list(ir.DenseI64ArrayAttr(func.attributes[ARG_DEVICES])) if ARG_DEVICES in func.attributes \
            else None
        if arg_devices is None or len(arg_devices) != len(block.arguments):
            errors.append(f"{fname}: '{ARG_DEVICES}' missing or of the wrong length")
            continue

        def device_of(v: ir.Value) -> int | None:
            if isinstance(v.owner, ir.Block):
                return arg_devices[v.arg_number]
            owner = v.owner.operation
            return ir.IntegerAttr(owner.attributes[PLACEMENT]).value if PLACEMENT in owner.attributes else None

        for op in (o.operation for o in block.operations):
            where = f"{fname}: '{op.name}' at {location_name(op.location)}"
            if op.name == "func.return":
                res = list(ir.DenseI64ArrayAttr(func.attributes[RESULT_DEVICES])) \
                    if RESULT_DEVICES in func.attributes else []
                got = [device_of(v) for v in op.operands]
                if res != got:
                    errors.append(f"{where}: results come from devices {got}, '{RESULT_DEVICES}' says {res}")
                continue
            if PLACEMENT not in op.attributes:
                errors.append(f"{where}: no '{PLACEMENT}'")
                continue
            d = ir.IntegerAttr(op.attributes[PLACEMENT]).value
            if not 0 <= d < n:
                errors.append(f"{where}: device {d} outside [0, {n})")
            sources = [device_of(v) for v in op.operands]
            if op.name in COLLECTIVES:
                if sources != list(range(n)):
                    errors.append(f"{where}: operands from devices {sources}, expected one from each of 0..{n - 1}")
                continue
            for j, s in enumerate(sources):
                if s not in (EVERY, d):
                    errors.append(f"{where}: on device {d}, operand {j} is on device {s}")
    if errors:
        raise VerificationError(errors)
