"""Paged llm IR -> IREE input MLIR (func + util + linalg/tensor/arith/math + iree_linalg_ext).

The module-level driver: function signatures in the ABI of docs/abi.md, one `util.global`
parameter per distinct `llm.weight` name, and a walk over each function's ops that calls
the per-op lowerings in ops.py, kv.py (paged KV cache) and fused.py (ops of the fusion passes).

    prefill(tokens i64[?,?], seq_lens i64[?], block_tables i64[?,?],
            pool f32[?,L,2,BS,KH,D] {iree.abi.output = 1 : index}) -> (logits f32[?,V], pool)
    extend(tokens i64[?,?], start_pos i64[?], new_lens i64[?], block_tables i64[?,?], pool {...})
        -> (logits f32[?,V], pool);  extend_all: the same with logits f32[?,?,V]
    decode(tokens i64[?], positions i64[?], block_tables i64[?,?], pool {...}) -> (same)

The pool result is tied to the pool argument (argument 3 is the storage of result 1), so
IREE writes the caller's device buffer in place (the KV writes are
`iree_linalg_ext.scatter`s into it).

A module that shard-tp split over N devices (`llm.num_devices = N`) becomes one IREE module
for N devices (lowering/devices.py, docs/parallel.md): the same functions with one pool
argument per device, each `{iree.abi.affinity = <device i>, iree.abi.output = R}`, weights
pinned to the device that reads them, and the tokens, lengths and block tables one argument
each (on device 0), copied to every other device once per call.
"""

from __future__ import annotations

import re
from typing import Callable

from iree.compiler import ir

from ..dialect import ops as _ops  # noqa: F401  (registers the op specs)
from ..dialect.attrs import op_attrs, op_operands
from ..dialect.context import functions, location_name
from ..dialect.spec import SpecError, lookup
from ..dialect.types import KVCacheT, PagedKVCacheT, TensorT, from_mlir
from . import fused as _fused  # noqa: F401  (registers the lowerings of fusion ops)
from . import kv as _kv  # noqa: F401  (registers the paged-KV lowerings)
from . import moe as _moe  # noqa: F401  (registers the mixture-of-experts lowerings)
from .devices import DEVICE_PREFIX, affinity, transfer
from .quantized import stored_dims, stored_transposed, stored_vnni
from .emitter import TV, Emitter, string_literal, symbol_ref, tensor_type
from ..pipelines.shard_tp import ARG_DEVICES, EVERY, NUM_DEVICES, PLACEMENT
from .kv import STRATEGIES
from .ops import LOWERINGS, LOp, LoweringError, cuts_rows

PARAMETER_SCOPE = "model"

_HINTS = {
    "attention": "run the blockify-kv-cache pass first (the IREE lowering takes the paged KV cache)",
    "append_kv": "run the blockify-kv-cache pass first (the IREE lowering takes the paged KV cache)",
    "quantize": "quantize weights ahead of time (the quantization pass stores the quantized tensors)",
}


def lower_to_iree(module: ir.Module, *, attention: str = "decomposed", buckets: dict | None = None,
                  tile: int | None = None, backend: str | None = None, decode_batches: tuple[int, ...] = (),
                  prefill_rows: int | None = None, vnni: bool = False) -> str:
    """IREE input MLIR text for a paged llm module (see the module docstring for the ABI).

    attention: "decomposed" (Q.K^T batch matmul + linalg.softmax + P.V batch matmul; the
    CPU/Vulkan choice) or "fused" (iree_linalg_ext.attention; faster on CUDA, does not
    compile for Vulkan). See docs/attention-strategy.md.
    buckets: static-shape targets (manifest target.buckets: batch, prefill_len,
    pages_per_seq, num_pages): instead of dynamic `prefill`/`decode`, one fully static
    `prefill_b{B}_t{T}` per (batch, length) and `decode_b{B}` per batch (llmirc/targets/tpu_like.py).
    backend: the IREE codegen backend ("llvm-cpu" selects the CPU tiles of lowering/quantized.py).
    tile: pad the K and N dims of every linear's matmul to a multiple of `tile` and M to 8
    (systolic-array targets; llmirc/lowering/systolic.py).
    decode_batches: dynamic-shape targets also export `decode_b{B}` for each B here: `decode`
    with the batch static and everything else dynamic. A static M lets IREE pick narrow
    matmul tiles; with a dynamic batch, data tiling pads M to a full tile (8-16 rows) and
    batch-1 decode wastes that much compute (docs/performance.md).
    prefill_rows: when the module has f16/bf16 linears, also export `prefill_r{R}` and
    `extend_r{R}` (row_chunk_functions): the same functions with those linears computed R rows
    at a time with the rows static (ops.in_row_chunks), for calls of at least R token rows
    (B x T); IREE's CPU data tiling is 1.5-1.7x faster on f16 weights with a static M.
    vnni: the target CPU has AVX512-VNNI: every w8a8 and w4a8 product whose weights `stored_vnni`
    picks (the archive stores it packed) uses the hand-written dispatch of lowering/vnni.py.
    A module with `llm.num_devices = N` (shard-tp) lowers to one module for the N devices
    `@__device_0..N-1` (see the module docstring); iree-compile must then get N target
    devices (TargetProfile.compile_flags(num_devices=N)).
    Raises LoweringError naming the op and its location for anything that cannot be lowered.
    """
    if attention not in STRATEGIES:
        raise LoweringError(f"unknown attention strategy {attention!r} (choose from {', '.join(STRATEGIES)})")
    return _ModuleLowering(module, {"attention": attention, "buckets": buckets, "tile": tile,
                                    "backend": backend, "decode_batches": decode_batches,
                                    "prefill_rows": prefill_rows, "vnni": vnni}).run()


def static_entry_points(buckets: dict) -> dict[str, list[tuple[str, dict[str, int]]]]:
    """function -> [(exported name, {"B": .., "T": .., "P": .., "N": ..})] for static buckets."""
    p, n = buckets["pages_per_seq"], buckets["num_pages"]
    return {
        "prefill": [(f"prefill_b{b}_t{t}", {"B": b, "T": t, "P": p, "N": n})
                    for b in buckets["batch"] for t in buckets["prefill_len"]],
        "extend": [(f"extend_b{b}_t{t}", {"B": b, "T": t, "P": p, "N": n})
                   for b in buckets["batch"] for t in buckets["prefill_len"]],
        # Every position's logits (prompt logprobs) are [B, T, V]: not worth a bucket set of
        # their own on a static-shape target; the runtime says so when they are asked for.
        "extend_all": [],
        "decode": [(f"decode_b{b}", {"B": b, "P": p, "N": n}) for b in buckets["batch"]],
    }


def row_chunk_functions(module: ir.Module, rows: int | None) -> dict[str, str]:
    """{function: exported name} of the row-chunked variants `lower_to_iree(prefill_rows=rows)`
    adds: prefill and extend, when some linear of the one-device module runs in row chunks
    there (ops.cuts_rows; without one the variant would be the function again)."""
    if not rows or num_devices(module) > 1:
        return {}
    narrow = False

    def visit(op: ir.Operation) -> ir.WalkResult:
        nonlocal narrow
        op = op.operation if hasattr(op, "operation") else op
        if op.name in ("llm.linear", "llm.fused_linear") and cuts_rows(*(from_mlir(v.type) for v in op.operands[:2])):
            narrow = True
            return ir.WalkResult.INTERRUPT
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    fns = functions(module)
    return {name: f"{name}_r{rows}" for name in ("prefill", "extend") if narrow and name in fns}


def batch_decode_entry_points(decode_batches: tuple[int, ...]) -> list[tuple[str, dict[str, int]]]:
    """[(exported name, {"B": b})] of the static-batch decode functions of a dynamic-shape target."""
    return [(f"decode_b{b}", {"B": b}) for b in decode_batches]


# Static shapes of the ABI arguments (docs/abi.md), by function and argument index.
_STATIC_ARGS = {"prefill": (("B", "T"), ("B",), ("B", "P")), "decode": (("B",), ("B",), ("B", "P")),
                "extend": (("B", "T"), ("B",), ("B",), ("B", "P")),
                "extend_all": (("B", "T"), ("B",), ("B",), ("B", "P"))}


class _ModuleLowering:
    def __init__(self, module: ir.Module, options: dict) -> None:
        self.module = module
        self.options = options
        self.fns = functions(module)
        self.num_devices = num_devices(module)
        # weight name (one device) or (name, device) -> (symbol, tensor type, device or None)
        self.globals: dict[str | tuple[str, int], tuple[str, str, int | None]] = {}
        self.device: int | None = None  # multi-device: the device of the op being lowered
        self._shared: set[ir.Value] = set()  # per function: arguments every device reads
        self._copies: dict[tuple[str, int], TV] = {}  # per function: (argument, device) -> its copy there
        self.counter = [0]
        self._loads: dict = {}  # per function: globals key (weight name, or (name, device)) -> loaded value
        # weight name -> the CPU kernel layout the archive holds it in (vnni.py, gemv.py)
        self.stored_vnni: dict[str, str] = stored_vnni(module) if options.get("vnni") else {}
        # weights the archive holds [in, out] (a kernel layout takes precedence)
        self.stored_transposed = stored_transposed(module) - set(self.stored_vnni)
        self.transposed: set[str] = set()  # SSA names of loads of those (quantized.py reads them as such)
        self.vnni_loads: dict[str, str] = {}  # SSA names of loads of kernel-layout weights -> weight name
        # module-level ops a lowering adds (vnni.py: executables, initialized globals): key -> (symbol, lines)
        self.module_ops: dict[object, tuple[str, list[str]]] = {}

    def run(self) -> str:
        if not self.fns:
            raise LoweringError("the module has no functions to lower")
        buckets = self.options.get("buckets")
        if buckets:
            specs = static_entry_points(buckets)
            unknown = [name for name in self.fns if name not in specs]
            if unknown:
                raise LoweringError(f"static-shape lowering knows prefill and decode, not @{unknown[0]}")
            bodies = [self._function(name, op, export, dims)
                      for name, op in self.fns.items() for export, dims in specs[name]]
        else:
            bodies = [self._function(name, op) for name, op in self.fns.items()]
            if "decode" in self.fns:
                bodies += [self._function("decode", self.fns["decode"], export, dims)
                           for export, dims in batch_decode_entry_points(self.options.get("decode_batches", ()))]
            rows = self.options.get("prefill_rows")
            bodies += [self._function(name, self.fns[name], export, row_chunk=rows)
                       for name, export in row_chunk_functions(self.module, rows).items()]
        lines = ["module {"]
        for key, (sym, t, device) in self.globals.items():
            name = key if isinstance(key, str) else key[0]
            pinned = "" if device is None else f" {{stream.affinity = {affinity(device)}}}"
            lines.append(f"  util.global private {sym}{pinned} = #stream.parameter.named<"
                         f"{string_literal(PARAMETER_SCOPE)}::{string_literal(name)}> : {t}")
        for _, text in self.module_ops.values():
            lines.extend("  " + line for line in text)
        for body in bodies:
            lines.extend("  " + line for line in body)
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ---- weights ------------------------------------------------------------------------

    def load_weight(self, e: Emitter, name: str, t: TensorT) -> TV:
        if name in self.stored_transposed:
            t = TensorT(tuple(reversed(t.shape)), t.dtype)
        kind = self.stored_vnni.get(name)
        dims, dtype = stored_dims(t.shape, t.dtype, kind) if kind else (tuple(t.shape), t.dtype)
        ttext = tensor_type(dims, dtype)
        # Several devices: one global per (weight, device that reads it), pinned there.
        key = name if self.num_devices == 1 else (name, self.device)
        if key not in self.globals:
            self.globals[key] = (self._symbol(name if self.num_devices == 1 else f"{name}.on{self.device}"),
                                 ttext, None if self.num_devices == 1 else self.device)
        sym, known, _ = self.globals[key]
        if known != ttext:
            raise LoweringError(f"weight '{name}' is used as {known} and as {ttext}")
        if key not in self._loads:
            self._loads[key] = TV(e.v(f"util.global.load {sym} : {ttext}", "w"), dims, dtype)
            if name in self.stored_vnni:
                self.vnni_loads[self._loads[key].name] = name
            if name in self.stored_transposed:
                self.transposed.add(self._loads[key].name)
        return self._loads[key]

    def define(self, key: object, base: str, make: Callable[[str, Emitter], list[str]]) -> str:
        """The symbol of module-level op `key`, made once by make(symbol, emitter of its own)."""
        if key not in self.module_ops:
            sym = self._symbol(base)
            self.module_ops[key] = (sym, make(sym, Emitter(self.counter)))
        return self.module_ops[key][0]

    def load_global(self, e: Emitter, sym: str, ttext: str) -> str:
        """util.global.load of a global made by define(), once per function."""
        key = ("global", sym)
        if key not in self._loads:
            self._loads[key] = e.v(f"util.global.load {sym} : {ttext}", "w")
        return self._loads[key]

    def _symbol(self, name: str) -> str:
        """@<checkpoint name> when that is a bare MLIR identifier, else a sanitized unique one.

        Derived weights (e.g. "concat(a,b,c)" from fold-weights) keep their exact name as the
        parameter key; only the global's symbol is sanitized.
        """
        base = re.sub(r"[^A-Za-z0-9_$.]", "_", name)
        if not re.match(r"[A-Za-z_]", base):
            base = "_" + base
        taken = {sym for sym, *_ in self.globals.values()} | {symbol_ref(f) for f in self.fns}
        taken |= {sym for sym, _ in self.module_ops.values()}
        taken |= {symbol_ref(f"{DEVICE_PREFIX}{i}") for i in range(self.num_devices)}
        sym, n = symbol_ref(base), 1
        while sym in taken:
            sym, n = symbol_ref(f"{base}.{n}"), n + 1
        return sym

    # ---- functions ----------------------------------------------------------------------

    def _function(self, fname: str, func: ir.Operation, export: str | None = None,
                  static: dict[str, int] | None = None, row_chunk: int | None = None) -> list[str]:
        """One func.func; `static` (bucket dims B, T, P, N) makes those argument dims static
        (all of them for a static-shape bucket; only B for a decode_batches function);
        `row_chunk` cuts its f16/bf16 linears' rows into static chunks (row_chunk_functions)."""
        self._loads, self._copies = {}, {}
        e = Emitter(self.counter)
        e.tile = self.options.get("tile")
        e.function = export or fname
        e.row_chunk = row_chunk
        block = func.regions[0].blocks[0]
        env: dict[ir.Value, TV] = {}
        origin: dict[str, int] = {}  # pool value name -> index of the pool argument it updates
        arg_decls = []
        arg_attrs: list[list[str]] = [[] for _ in block.arguments]
        devices = self._arg_devices(fname, func, len(block.arguments))
        self._shared = {a for a, d in zip(block.arguments, devices) if d == EVERY}
        for i, arg in enumerate(block.arguments):
            t = from_mlir(arg.type)
            name = f"%arg{i}"
            if isinstance(t, PagedKVCacheT):
                shape = ((static or {}).get("N"),) + t.pool_shape(1)[1:]
                origin[name] = i
            elif isinstance(t, TensorT):
                shape = t.shape
                if static:
                    shape = _static_shape(fname, i, shape, static)
            else:
                hint = _HINTS["attention"] if isinstance(t, KVCacheT) else "expected a tensor or a page pool"
                raise LoweringError(f"function @{fname}: argument {i} has type {t}; {hint}")
            ttext = tensor_type(["?" if d is None else d for d in shape], _dtype(t))
            arg_decls.append(f"{name}: {ttext}")
            env[arg] = TV(name, e.dims_of(name, ttext, shape), _dtype(t))
            if devices:  # a shared argument arrives on device 0 and is copied to the others
                arg_attrs[i].append(f"iree.abi.affinity = {affinity(max(devices[i], 0))}")

        results: list[TV] = []
        result_types = []
        for op in block.operations:
            op = op.operation
            if op.name == "func.return":
                results = [env[v] for v in op.operands]
                result_types = [from_mlir(v.type) for v in op.operands]
                break
            outs = self._op(e, op, env)
            for r, tv in zip(op.results, outs):
                env[r] = tv
                if isinstance(from_mlir(r.type), PagedKVCacheT):
                    src = next((origin[env[v].name] for v in op.operands
                                if isinstance(from_mlir(v.type), PagedKVCacheT) and env[v].name in origin), None)
                    if src is not None:
                        origin[tv.name] = src

        # The pool argument is the storage of the pool result: `{iree.abi.output = R : index}`
        # on argument A tells IREE to export result R into A's buffer (IREE's convention puts
        # the attribute on the argument; on a result it is ignored).
        for ri, (r, t) in enumerate(zip(results, result_types)):
            if isinstance(t, PagedKVCacheT):
                if r.name not in origin:
                    raise LoweringError(f"function @{fname}: returns a page pool that is not its pool argument")
                arg_attrs[origin[r.name]].append(f"iree.abi.output = {ri} : index")
        for i, attrs in enumerate(arg_attrs):
            if attrs:
                arg_decls[i] += f" {{{', '.join(attrs)}}}"
        res_decls = [r.type for r in results]
        head = f"func.func @{export or fname}({', '.join(arg_decls)}) -> ({', '.join(res_decls)}) {{"
        ret = f"    return {', '.join(r.name for r in results)} : {', '.join(r.type for r in results)}"
        return [head] + e.lines + [ret, "}"]

    def _op(self, e: Emitter, op: ir.Operation, env: dict) -> list[TV]:
        where = location_name(op.location)
        if not op.name.startswith("llm."):
            raise LoweringError(f"'{op.name}' at {where}: only llm ops can be lowered to IREE input")
        short = op.name.removeprefix("llm.")
        fn = LOWERINGS.get(short)
        if fn is None:
            hint = _HINTS.get(short, "no IREE lowering is implemented for it")
            raise LoweringError(f"cannot lower '{op.name}' at {where}: {hint}")
        if self.num_devices > 1:
            if PLACEMENT not in op.attributes:
                raise LoweringError(f"'{op.name}' at {where}: a module for {self.num_devices} devices needs "
                                    f"'{PLACEMENT}' on every op (run shard-tp)")
            self.device = ir.IntegerAttr(op.attributes[PLACEMENT]).value
        try:
            spec = lookup(op.name)
            attrs = op_attrs(spec, op)
            operands = [None if v is None else [self._local(e, x, env) for x in v] if isinstance(v, list)
                        else self._local(e, v, env) for v in op_operands(spec, op)]
            result_types = [from_mlir(r.type) for r in op.results]
            lop = LOp(short, where, attrs, operands, result_types, self, self.options)
            outs = fn(e, lop)
        except (LoweringError, SpecError, KeyError, ValueError) as err:
            msg = str(err)
            if isinstance(err, LoweringError) and msg.startswith("cannot lower"):
                raise
            raise LoweringError(f"cannot lower '{op.name}' at {where}: {msg}") from None
        if len(outs) != len(op.results):
            raise LoweringError(f"cannot lower '{op.name}' at {where}: lowering gave {len(outs)} results, "
                                f"the op has {len(op.results)}")
        return outs

    # ---- several devices ----------------------------------------------------------------

    def _arg_devices(self, fname: str, func: ir.Operation, n_args: int) -> list[int]:
        """Each argument's device (EVERY: read by all), or [] for a one-device module."""
        if self.num_devices == 1:
            return []
        if ARG_DEVICES not in func.attributes:
            raise LoweringError(f"function @{fname}: a module for {self.num_devices} devices needs "
                                f"'{ARG_DEVICES}' (run shard-tp)")
        devices = list(ir.DenseI64ArrayAttr(func.attributes[ARG_DEVICES]))
        if len(devices) != n_args:
            raise LoweringError(f"function @{fname}: '{ARG_DEVICES}' has {len(devices)} entries for {n_args} "
                                "arguments")
        return devices

    def _local(self, e: Emitter, v: ir.Value, env: dict) -> TV:
        """`v` as the current op's device sees it: a shared argument read on device d > 0 is its
        copy there (transferred once per call); everything else is already on that device."""
        tv = env[v]
        if not self.device or v not in self._shared:
            return tv
        key = (tv.name, self.device)
        if key not in self._copies:
            self._copies[key] = transfer(e, tv, self.device)
        return self._copies[key]


def num_devices(module: ir.Module) -> int:
    """N for a module shard-tp split over N devices, else 1."""
    attrs = module.operation.attributes
    return ir.IntegerAttr(attrs[NUM_DEVICES]).value if NUM_DEVICES in attrs else 1


def _dtype(t) -> str:
    return t.dtype


def _static_shape(fname: str, i: int, shape: tuple, dims: dict[str, int]) -> tuple[int, ...]:
    names = _STATIC_ARGS.get(fname, ())
    if i == len(names) and names and len(shape) == len(names[0]) + 1:
        names = names + (names[0] + ("H",),)  # a pipeline stage's hidden-state input: the tokens' dims, then H
    if i >= len(names) or len(names[i]) != len(shape):
        raise LoweringError(f"function @{fname}: argument {i} has no static shape in the paged-KV ABI")
    out = tuple(dims.get(n, have) for n, have in zip(names[i], shape))  # a dim not in `dims` stays as it is
    for have, want in zip(shape, out):
        if have is not None and have != want:
            raise LoweringError(f"function @{fname}: argument {i} has static size {have}, bucket needs {want}")
    return out
