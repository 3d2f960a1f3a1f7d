"""What a target is: one small declarative record per target family and variant."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import LlmircError


class TargetError(LlmircError):
    """An unknown target or variant, or an option the target does not support."""


TARGET_DEVICE_FLAG = "--iree-hal-target-device="
# IREE device kinds a tensor-parallel module can be compiled for: N of them, by ordinal (docs/parallel.md).
MULTI_DEVICE_KINDS = ("local", "cuda", "hip")


@dataclass(frozen=True)
class Buckets:
    """Compile-time shapes of a static-shape target (docs/targets.md, tpu-like).

    One `prefill_b{B}_t{T}` entry point per (batch, prefill_len) pair and one `decode_b{B}`
    per batch size; every dim static: block tables are [B, pages_per_seq] with
    pages_per_seq = ceil(max_seq_len / page_size), and the page pool has `num_pages` pages
    (scratch page 0 included), fixed at compile time.
    """

    batch: tuple[int, ...] = (1, 4)
    # Prefill lengths; None: DEFAULT_LENGTHS below max_seq_len, plus max_seq_len itself.
    prefill_len: tuple[int, ...] | None = None
    num_pages: int | None = None  # None: 1 + max(batch) * pages_per_seq (the largest batch at full length)

    DEFAULT_LENGTHS = (32, 128, 512, 2048)

    def resolve(self, max_seq_len: int, page_size: int) -> dict:
        """The concrete buckets for one model, as recorded in manifest target.buckets."""
        batch = tuple(sorted(set(self.batch)))
        if not batch or batch[0] < 1:
            raise TargetError(f"batch buckets must be positive integers, got {list(self.batch)}")
        if self.prefill_len is None:
            lens = tuple(t for t in self.DEFAULT_LENGTHS if t < max_seq_len) + (max_seq_len,)
        else:
            lens = tuple(sorted(set(self.prefill_len)))
            if not lens or lens[0] < 1 or lens[-1] > max_seq_len:
                raise TargetError(f"prefill length buckets must be in 1..{max_seq_len} (the model's max_seq_len), "
                                  f"got {list(self.prefill_len)}")
        pages_per_seq = -(-max_seq_len // page_size)
        num_pages = self.num_pages if self.num_pages is not None else 1 + batch[-1] * pages_per_seq
        if num_pages < 1 + pages_per_seq:
            raise TargetError(f"a static page pool of {num_pages} pages cannot hold one max-length sequence "
                              f"({pages_per_seq} pages of {page_size} tokens + the scratch page); use at least "
                              f"{1 + pages_per_seq}")
        return {"batch": list(batch), "prefill_len": list(lens), "pages_per_seq": pages_per_seq,
                "num_pages": num_pages}

    @classmethod
    def parse(cls, spec: str, base: Buckets | None = None) -> Buckets:
        """'batch=1,4;len=32,128;pages=65' (any subset, the rest from `base`; ';' or spaces between)."""
        keys = {"batch": "batch", "b": "batch", "len": "prefill_len", "t": "prefill_len", "pages": "num_pages"}
        values: dict = {}
        for part in spec.replace(";", " ").split():
            key, sep, val = part.partition("=")
            if not sep or key not in keys:
                raise TargetError(f"--buckets: cannot read {part!r}; expected e.g. 'batch=1,4;len=32,128;pages=65'")
            try:
                nums = tuple(int(v) for v in val.split(",") if v.strip())
            except ValueError:
                raise TargetError(f"--buckets: {key} takes comma-separated integers, got {val!r}") from None
            if not nums or min(nums) < 1:
                raise TargetError(f"--buckets: {key} needs positive integers, got {val!r}")
            if keys[key] == "num_pages":
                if len(nums) != 1:
                    raise TargetError(f"--buckets: pages takes one integer, got {val!r}")
                values["num_pages"] = nums[0]
            else:
                values[keys[key]] = nums
        return replace(base or cls(), **values)


@dataclass(frozen=True)
class TargetProfile:
    name: str  # family: cpu, cuda, rocm, vulkan, tpu-like, metal
    variant: str  # host, znver3, sm_80, gfx942, rdna3, ...
    device: str  # IREE HAL target device name
    driver: str  # iree.runtime driver that runs the artifact
    flags: tuple[str, ...]  # iree-compile flags
    dtypes: tuple[str, ...] = ("f32",)  # weight/activation dtypes supported (--dtype)
    quantize: tuple[str, ...] = ()  # weight quantization schemes supported (--quantize)
    attention: str = "decomposed"  # "decomposed" (linalg) or "fused" (iree_linalg_ext.attention)
    page_size: int = 16
    static_shapes: bool = False
    notes: str = ""
    o3_flags: tuple[str, ...] = field(default=())  # extra iree-compile flags that measured faster
    integer_matmul_flags: tuple[str, ...] = field(default=())  # more flags for w8a8's i8 x i8 matmuls
    vnni: bool = False  # x86 with AVX512-VNNI: w8a8 and w4a8 products through lowering/vnni.py
    # `#hal.device.target<...>` text put on the module (hal.device.targets) when IREE's own
    # target table lacks the variant (CUDA sm_90 in IREE 3.13: "missing GPU target").
    device_target_attr: str | None = None
    index_dtype: str = "i64"  # element type of tokens/positions/block tables at the module ABI
    buckets: Buckets | None = None  # static-shape targets: the default compile-time buckets
    systolic_tile: int | None = None  # pad matmul K and N to this, M to 8 (systolic-array targets)
    # -O3 on dynamic-shape targets: batch sizes that also get a static-batch `decode_b{B}`.
    o3_decode_batches: tuple[int, ...] = ()
    # -O3 on dynamic-shape targets: rows per static chunk of the f16/bf16 linears of the
    # row-chunked prefill/extend (lower_to_iree prefill_rows); None exports none of those.
    o3_prefill_rows: int | None = None

    def decode_batches(self, opt_level: int, quantized: bool = False) -> tuple[int, ...]:
        """The static-batch decode functions to export. None for `quantized` weights: the tuned
        quantized-matmul kernel (lowering/quantized.py) is faster with a dynamic batch (int8
        decode 5.3 vs 2.6 tok/s on the 1.1B model; docs/quantization.md). The compiler passes
        quantized=False where lowering/gemv.py's kernel takes the products instead."""
        if opt_level < 3 or self.static_shapes or quantized:
            return ()
        return self.o3_decode_batches

    def prefill_rows(self, opt_level: int) -> int | None:
        """Row chunk of prefill's f16/bf16 linears at this level (lower_to_iree prefill_rows)."""
        return self.o3_prefill_rows if opt_level >= 3 and not self.static_shapes else None

    @property
    def full_name(self) -> str:
        return f"{self.name}:{self.variant}"

    def compile_flags(self, opt_level: int, integer_matmuls: bool = False, num_devices: int = 1) -> list[str]:
        """iree-compile flags; `integer_matmuls` (w8a8) adds `integer_matmul_flags`; `num_devices`
        > 1 (tensor parallelism) declares that many devices of this kind (device_flags)."""
        flags = list(self.flags) + (list(self.o3_flags) if opt_level >= 3 else [])
        flags += [f for f in (self.integer_matmul_flags if integer_matmuls else ()) if f not in flags]
        if num_devices == 1:
            return flags
        return [g for f in flags for g in (self.device_flags(num_devices) if f.startswith(TARGET_DEVICE_FLAG) else [f])]

    def device_flags(self, num_devices: int) -> list[str]:
        """`--iree-hal-target-device=__device_i=<kind>[i]` for i < num_devices: the devices a
        tensor-parallel module names (lowering/devices.py). Always with the ordinal: without
        it IREE 3.13 merges identical devices, and iree-compile crashes once a weight is
        pinned to the merged one (TOOLCHAIN.md)."""
        from ..lowering.devices import device_symbol

        self.check_devices(num_devices)
        return [f"{TARGET_DEVICE_FLAG}{device_symbol(i)}={self.device}[{i}]" for i in range(num_devices)]

    def check_devices(self, num_devices: int) -> None:
        """One clear error when this target cannot be compiled for `num_devices` devices."""
        if num_devices < 1:
            raise TargetError(f"--tp must be at least 1, got {num_devices}")
        if num_devices == 1:
            return
        if self.device not in MULTI_DEVICE_KINDS or self.static_shapes:
            raise TargetError(f"--tp {num_devices}: tensor parallelism compiles for cpu, cuda and rocm targets, "
                              f"not {self.full_name}" + (" (static-shape buckets)" if self.static_shapes else ""))

    def check_precision(self, dtype: str = "f32", quantize: str | None = None) -> None:
        """One clear error when the target cannot run `--dtype dtype` / `--quantize quantize`."""
        if dtype not in self.dtypes:
            raise TargetError(f"unsupported dtype '{dtype}' for target {self.full_name} "
                              f"(supported: {', '.join(self.dtypes)})")
        if quantize and quantize not in self.quantize:
            supported = ", ".join(self.quantize) if self.quantize else "none"
            raise TargetError(f"unsupported quantization '{quantize}' for target {self.full_name} "
                              f"(supported: {supported})")

    def module_text(self, iree_input: str, num_devices: int = 1) -> str:
        """The lowered module with this target's hal.device.targets attribute (when it has one);
        for `num_devices` > 1 the description once per device, with ordinal i: IREE names the
        devices of that list `@__device_i`, the names the module's affinities promise."""
        if not self.device_target_attr:
            return iree_input
        head = "module {"
        if not iree_input.startswith(head):
            raise TargetError(f"target {self.full_name}: expected the lowered module to start with '{head}'")
        targets = [self.device_target_attr] if num_devices == 1 else \
            [self._with_ordinal(i) for i in range(num_devices)]
        attr = f"module attributes {{hal.device.targets = [{', '.join(t + ' : !hal.device' for t in targets)}]}} {{"
        return attr + iree_input[len(head):]

    def _with_ordinal(self, ordinal: int) -> str:
        kind = f'#hal.device.target<"{self.device}", '
        if not self.device_target_attr.startswith(kind):
            raise TargetError(f"target {self.full_name}: its device description does not start with {kind!r}")
        return f"{kind}{{ordinal = {ordinal} : index}}, {self.device_target_attr[len(kind):]}"
