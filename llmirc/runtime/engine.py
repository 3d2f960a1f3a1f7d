"""Engine: one loaded artifact on its device(s), with its KV page pool(s), exposing prefill/decode.

The engine owns the device pool pool[num_pages, L, 2, page_size, KVH, D] (allocated once)
and passes that same device array to every call; the module updates it in place through
its `iree.abi.output = 3` result (docs/abi.md). A tensor-parallel artifact (manifest
target.devices, docs/parallel.md) runs on N devices: one pool per device, all of the same
page count, so one block table (one PagePool's page numbers) addresses all of them. The engine checks its inputs (shapes, token
ids, page numbers) before each call, because a bad index would otherwise be an
out-of-bounds read on the device rather than an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmirc.artifacts.manifest import PARAMS_NAME, VMFB_NAME, Manifest, read_manifest
from llmirc.artifacts.params import SCOPE, load_params
from llmirc.errors import ArtifactError, LlmircError, PromptTooLongError, RuntimeDeviceError

# Which runtime drivers can run a module compiled for each `--iree-hal-target-device`.
DRIVERS_FOR_DEVICE: dict[str, tuple[str, ...]] = {
    "local": ("local-task", "local-sync"),
    "cuda": ("cuda",),
    "hip": ("hip",),
    "amdgpu": ("hip",),
    "vulkan": ("vulkan",),
    "metal": ("metal",),
}

KV_DTYPES: dict[str, str] = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

# Default pool when the user gives no --num-pages: room for this many full-length
# sequences, capped by a byte budget so a large model does not take all device memory.
DEFAULT_FULL_SEQUENCES = 8
DEFAULT_POOL_BYTES = 1 << 30


class Engine:
    """Load `artifact_dir` on its device; `prefill`/`decode` run the compiled entry points.

    `device` overrides the manifest's driver (e.g. "local-sync", "cuda://1"); it must be a
    driver that can run what the artifact was compiled for. A tensor-parallel artifact takes
    a comma list of one device per shard ("local-task,local-task", "cuda://0,cuda://1"); by
    default N devices of its driver (device_uris). `num_pages` sizes the pool
    (including the scratch page 0); None picks `default_num_pages`. Raises ArtifactError
    (bad or corrupt artifact), RuntimeDeviceError (device absent, wrong for the artifact, or
    out of memory for the pool) or LlmircError (num_pages < 2). A module this machine has not
    run or compiled before is first run in a child process (runtime/probe.py: a corrupt one
    would otherwise crash this process); `probe=False` or `verify_checksums=False` skips that.
    """

    def __new__(cls, artifact_dir: str | Path, *args, **kwargs):
        """A pipeline-parallel artifact (`--pp N`) gets a PipelineEngine (runtime/pipeline.py),
        which has this interface: the scheduler, llmirc run / serve / chat and llmirc.load
        use it unchanged."""
        if cls is Engine:
            try:
                import json

                data = json.loads((Path(artifact_dir) / "manifest.json").read_text(encoding="utf-8"))
                pipeline = data["target"]["devices"]["parallelism"] == "pipeline"
            except (OSError, ValueError, KeyError, TypeError):
                pipeline = False  # not a pipeline artifact, or broken: __init__ says what is wrong
            if pipeline:
                from .pipeline import PipelineEngine

                return super().__new__(PipelineEngine)
        return super().__new__(cls)

    def __init__(self, artifact_dir: str | Path, num_pages: int | None = None, device: str | None = None,
                 verify_checksums: bool = True, probe: bool = True) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.manifest: Manifest = read_manifest(self.artifact_dir, verify_checksums=verify_checksums)
        m, kv = self.manifest.model, self.manifest.kv
        self.page_size: int = kv.page_size
        self.max_seq_len: int = m.max_seq_len
        self.vocab_size: int = m.vocab_size
        target = self.manifest.target
        if target.extra.get("vnni") and target.device == "local":
            from llmirc.targets.cpu import host_flags, vnni_artifact_error

            why = vnni_artifact_error(self.artifact_dir, f"{target.name}:{target.variant}", host_flags())
            if why:
                raise LlmircError(why)
        # Static-shape targets (tpu-like): entry points per bucket, a pool size fixed at compile time.
        self.buckets: StaticBuckets | None = StaticBuckets.from_manifest(self.manifest)
        if self.buckets is not None:
            if num_pages is not None and num_pages != self.buckets.num_pages:
                raise LlmircError(f"this artifact (target {target.name}) was compiled for a page pool of exactly "
                                  f"{self.buckets.num_pages} pages; drop --num-pages or recompile with "
                                  f"--buckets pages={num_pages}")
            num_pages = self.buckets.num_pages
        # Longest prompt one prefill call takes (the largest compiled length bucket when static).
        self.max_prefill_len: int = self.buckets.prefill_len[-1] if self.buckets else m.max_seq_len
        self._index_dtype = np.dtype(np.int32 if target.extra.get("index_dtype") == "i32" else np.int64)
        self.num_pages: int = num_pages if num_pages is not None else default_num_pages(self.manifest)
        if self.num_pages < 2:
            raise LlmircError(f"--num-pages must be at least 2 (page 0 is the scratch page), got {self.num_pages}")
        self._open(device, probe and verify_checksums)
        eps = self.manifest.entry_points
        # ABI v2 (docs/abi.md): `extend` computes new tokens after a cached prefix (chunked
        # prefill, prefix-cache hits, re-prefill after preemption); v1 artifacts lack it.
        self.supports_extend: bool = "extend" in eps
        self.supports_all_logits: bool = "extend_all" in eps and self.buckets is None
        if self.buckets is None:
            self._prefill = self._function("prefill")
            self._decode = self._function("decode")
            self._extend = self._function("extend") if self.supports_extend else None
            self._extend_all = self._function("extend_all") if self.supports_all_logits else None
            # -O3 CPU artifacts: `decode` specialised to a static batch (faster matmuls there).
            self._decode_by_batch = {int(b): self._function(name) for b, name in
                                     self.manifest.entry_points["decode"].get("batch_functions", {}).items()}
            # -O3 CPU artifacts with f16/bf16 linears: prefill/extend for calls of at least R
            # token rows, with those linears' rows static (faster matmuls there).
            self._prefill_by_rows = self._row_functions("prefill")
            self._extend_by_rows = self._row_functions("extend") if self.supports_extend else {}
        else:
            self._prefill_fns = {(b, t): self._function(f"prefill_b{b}_t{t}")
                                 for b in self.buckets.batch for t in self.buckets.prefill_len}
            self._decode_fns = {b: self._function(f"decode_b{b}") for b in self.buckets.batch}
            self._extend_fns = {(b, t): self._function(f"extend_b{b}_t{t}") for b in self.buckets.batch
                                for t in self.buckets.prefill_len} if self.supports_extend else {}
        # All layers; one pool per device (tensor parallelism), each holding that device's KV heads.
        self.pool_shape = (self.num_pages, m.num_layers, 2, kv.page_size, pool_kv_heads(self.manifest), m.head_dim)
        self.pools = self._new_pools()
        self.pool = self.pools[0] if self.pools else None

    def _open(self, device: str | None, probe: bool) -> None:
        """Open the devices (probing the module first when `probe`), the weights and the modules."""
        import iree.runtime as rt

        self.device_uris: list[str] = device_uris(self.manifest, device)
        self.device_uri: str = ",".join(self.device_uris)
        self.devices = open_devices(self.manifest, self.device_uris)
        self.device = self.devices[0]  # the invoker's device: arguments and logits live there
        if probe:
            from .probe import ensure_module_runs

            ensure_module_runs(self.artifact_dir, self.manifest.files[VMFB_NAME], self.device_uri,
                               self.artifact_dir / VMFB_NAME)
        self._staging = self.device_uri.startswith("vulkan")  # device -> host copies: see to_host
        self._instance = rt.VmInstance()
        self._params = load_params(self.artifact_dir / PARAMS_NAME)  # keeps the weights' mapping alive
        self._open_modules()

    def _open_modules(self) -> None:
        """The one module in its context over every device."""
        import iree.runtime as rt

        params = self._params
        self._main = _load_module(self._instance, self.artifact_dir / VMFB_NAME)
        try:
            hal = rt.create_hal_module(self._instance, self.device) if len(self.devices) == 1 else \
                rt.create_hal_module(self._instance, devices=self.devices)
            self._context = rt.VmContext(self._instance, modules=[
                hal,
                rt.create_io_parameters_module(self._instance, params.create_provider(scope=SCOPE)),
                self._main,
            ])
        except (RuntimeError, ValueError) as e:
            raise RuntimeDeviceError(
                f"{self.artifact_dir / VMFB_NAME} could not be initialised on device {self.device_uri!r} "
                f"(compiled for target {self.manifest.target.name!r}): {_first_line(e)}") from None

    def _new_pools(self) -> list:
        """One zeroed pool of pool_shape per device."""
        dtype = kv_numpy_dtype(self.manifest.kv.dtype)
        return [device_zeros(d, self.pool_shape, dtype) for d in self.devices]

    def prefill(self, tokens: np.ndarray, seq_lens: np.ndarray, block_tables: np.ndarray) -> np.ndarray:
        """Write K/V of tokens[b, :seq_lens[b]] and return f32[B, V] logits of each last token."""
        tokens, seq_lens, block_tables = (_i64(x) for x in (tokens, seq_lens, block_tables))
        if tokens.ndim != 2 or seq_lens.shape != tokens.shape[:1] or block_tables.shape[:1] != tokens.shape[:1]:
            raise ValueError(f"prefill wants tokens[B,T], seq_lens[B], block_tables[B,P]; got "
                             f"{tokens.shape}, {seq_lens.shape}, {block_tables.shape}")
        if block_tables.shape[1] * self.page_size < tokens.shape[1]:
            raise ValueError(f"block tables of width {block_tables.shape[1]} cover "
                             f"{block_tables.shape[1] * self.page_size} tokens, fewer than T={tokens.shape[1]}")
        if np.any(seq_lens < 1) or np.any(seq_lens > tokens.shape[1]):
            raise ValueError(f"seq_lens must be in 1..{tokens.shape[1]}, got {seq_lens.tolist()}")
        self._check_ids(tokens, block_tables)
        if self.buckets is not None:
            return self._prefill_static(tokens, seq_lens, block_tables)
        return self._call(_by_rows(self._prefill, self._prefill_by_rows, tokens.size), tokens, seq_lens, block_tables)

    def extend(self, tokens: np.ndarray, start_pos: np.ndarray, new_lens: np.ndarray, block_tables: np.ndarray,
               all_logits: bool = False) -> np.ndarray:
        """Compute tokens[b, :new_lens[b]] at positions start_pos[b].. after the cached prefix
        (its K/V already in the row's pages), write their K/V, and return f32[B, V] logits of
        each row's last new token, or f32[B, T, V] of every new position with `all_logits`.

        Rows with new_lens 0 are padding (no write; their logits are meaningless).
        """
        tokens, start_pos, new_lens, block_tables = (_i64(x) for x in (tokens, start_pos, new_lens, block_tables))
        if not self.supports_extend:
            raise ArtifactError(f"{self.artifact_dir} was compiled with ABI v{self.manifest.abi_version}, which has "
                                "no 'extend' entry point (needed for serving, prefix caching and chunked "
                                "prefill); re-run `llmirc compile` to rebuild it with ABI v2")
        if all_logits and not self.supports_all_logits:
            raise ArtifactError(f"{self.artifact_dir} (target {self.manifest.target.name}) has no 'extend_all' "
                                "entry point: prompt logprobs are not compiled for static-shape targets")
        b = tokens.shape[:1]
        if tokens.ndim != 2 or start_pos.shape != b or new_lens.shape != b or block_tables.shape[:1] != b:
            raise ValueError(f"extend wants tokens[B,T], start_pos[B], new_lens[B], block_tables[B,P]; got "
                             f"{tokens.shape}, {start_pos.shape}, {new_lens.shape}, {block_tables.shape}")
        if np.any(new_lens < 0) or np.any(new_lens > tokens.shape[1]) or np.any(start_pos < 0):
            raise ValueError(f"new_lens must be in 0..{tokens.shape[1]} and start_pos >= 0, got "
                             f"{new_lens.tolist()} and {start_pos.tolist()}")
        if np.any(start_pos + new_lens > block_tables.shape[1] * self.page_size):
            raise ValueError(f"start_pos + new_lens {(start_pos + new_lens).tolist()} pass the end of the block "
                             f"tables ({block_tables.shape[1]} pages of {self.page_size})")
        self._check_ids(tokens, block_tables)
        if self.buckets is not None:
            return self._extend_static(tokens, start_pos, new_lens, block_tables)
        fn = self._extend_all if all_logits else _by_rows(self._extend, self._extend_by_rows, tokens.size)
        return self._call(fn, tokens, start_pos, new_lens, block_tables)

    def decode(self, tokens: np.ndarray, positions: np.ndarray, block_tables: np.ndarray) -> np.ndarray:
        """Write K/V of tokens[b] at positions[b] and return f32[B, V] next-token logits."""
        tokens, positions, block_tables = (_i64(x) for x in (tokens, positions, block_tables))
        if tokens.ndim != 1 or positions.shape != tokens.shape or block_tables.shape[:1] != tokens.shape:
            raise ValueError(f"decode wants tokens[B], positions[B], block_tables[B,P]; got "
                             f"{tokens.shape}, {positions.shape}, {block_tables.shape}")
        if np.any(positions < 0) or np.any(positions >= block_tables.shape[1] * self.page_size):
            raise ValueError(f"positions {positions.tolist()} fall outside the block tables "
                             f"({block_tables.shape[1]} pages of {self.page_size})")
        self._check_ids(tokens, block_tables)
        if self.buckets is not None:
            return self._decode_static(tokens, positions, block_tables)
        return self._decode_dynamic(tokens, positions, block_tables)

    def _decode_dynamic(self, tokens: np.ndarray, positions: np.ndarray, block_tables: np.ndarray) -> np.ndarray:
        """`decode`, or the smallest static-batch `decode_b{B}` with B >= the batch, padded.

        Padding rows decode at position -1 through scratch page 0: they write and attend
        nothing. A static batch is worth the padding: at batch 4 the padded call is about
        1.25x faster than the dynamic one (docs/performance.md), and decode is memory-bound.
        """
        n = len(tokens)
        b = min((b for b in self._decode_by_batch if b >= n), default=None)
        if b is None:
            return self._call(self._decode, tokens, positions, block_tables)
        tables = np.zeros((b, block_tables.shape[1]), np.int64)
        tables[:n] = block_tables
        return self._call(self._decode_by_batch[b], *_pad_decode_rows(tokens, positions, b), tables)[:n]

    # ---- static-shape targets: pad each call to a compiled bucket -----------------------

    def _prefill_static(self, tokens: np.ndarray, seq_lens: np.ndarray, block_tables: np.ndarray) -> np.ndarray:
        """Run in chunks of at most the largest batch bucket, each padded to the smallest bucket that holds it.

        Padding rows have seq_len 0 and a block table of scratch page 0: every position is
        padding (-1), so they write nothing but the scratch page and their logits are dropped.
        """
        t = self.buckets.fit_len(int(seq_lens.max()))
        return self._bucketed(self._prefill_fns, tokens, [seq_lens], block_tables, t)

    def _extend_static(self, tokens: np.ndarray, start_pos: np.ndarray, new_lens: np.ndarray,
                       block_tables: np.ndarray) -> np.ndarray:
        """As _prefill_static, through the extend buckets; padding rows have new_lens 0."""
        t = self.buckets.fit_len(max(1, int(new_lens.max())))
        return self._bucketed(self._extend_fns, tokens, [start_pos, new_lens], block_tables, t)

    def _bucketed(self, fns: dict, tokens: np.ndarray, rows: list[np.ndarray], block_tables: np.ndarray,
                  t: int) -> np.ndarray:
        """fns[(B, t)](tokens, *rows, tables) over chunks of the batch, each padded to a batch
        bucket B; padding rows are zeros (length 0) with scratch-page tables."""
        bk = self.buckets
        tokens = tokens[:, :t] if tokens.shape[1] > t else tokens  # columns past every length are padding
        outs = []
        for lo in range(0, tokens.shape[0], bk.batch[-1]):
            n = min(bk.batch[-1], tokens.shape[0] - lo)
            b = bk.fit_batch(n)
            tok = np.zeros((b, t), np.int64)
            tok[:n, :tokens.shape[1]] = tokens[lo:lo + n]
            padded = [np.zeros(b, np.int64) for _ in rows]
            for out, row in zip(padded, rows):
                out[:n] = row[lo:lo + n]
            logits = self._call(fns[(b, t)], tok, *padded, bk.pad_tables(block_tables[lo:lo + n], b))
            outs.append(logits[:n])
        return np.concatenate(outs)

    def _decode_static(self, tokens: np.ndarray, positions: np.ndarray, block_tables: np.ndarray) -> np.ndarray:
        """As _prefill_static; padding rows decode at position -1 (write and attend nothing)."""
        bk = self.buckets
        outs = []
        for lo in range(0, tokens.shape[0], bk.batch[-1]):
            n = min(bk.batch[-1], tokens.shape[0] - lo)
            b = bk.fit_batch(n)
            tok, pos = _pad_decode_rows(tokens[lo:lo + n], positions[lo:lo + n], b)
            logits = self._call(self._decode_fns[b], tok, pos, bk.pad_tables(block_tables[lo:lo + n], b))
            outs.append(logits[:n])
        return np.concatenate(outs)

    def read_pool(self, device: int = 0) -> np.ndarray:
        """A host copy of device `device`'s pool (for tests and debugging)."""
        return to_host(self.devices[device], self.pools[device], self._staging)

    def _call(self, fn, *args: np.ndarray) -> np.ndarray:
        args = tuple(a.astype(self._index_dtype, copy=False) for a in args)  # i32 where the module demotes i64
        try:
            logits, *_pools = fn(*args, *self.pools)  # _pools alias self.pools (tied results)
            return np.asarray(to_host(self.device, logits, self._staging), dtype=np.float32)
        except (RuntimeError, ValueError) as e:
            raise RuntimeDeviceError(f"running {self.artifact_dir / VMFB_NAME} on {self.device_uri!r} failed: "
                                     f"{_first_line(e)}") from None

    def _check_ids(self, tokens: np.ndarray, block_tables: np.ndarray) -> None:
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}, got {tokens.min()}..{tokens.max()}")
        if block_tables.size and (block_tables.min() < 0 or block_tables.max() >= self.num_pages):
            raise ValueError(f"block table entries must be pages 0..{self.num_pages - 1}, "
                             f"got {block_tables.min()}..{block_tables.max()}")

    def _row_functions(self, name: str) -> dict:
        """Least token rows -> invoker of `name`'s row-chunked variants (manifest row_functions)."""
        return {int(r): self._function(f) for r, f in self.manifest.entry_points[name].get("row_functions", {}).items()}

    def _function(self, name: str):
        import iree.runtime as rt

        fn = self._main.lookup_function(name)
        if fn is None:
            raise ArtifactError(f"{self.artifact_dir / VMFB_NAME} has no '{name}' entry point; "
                                "re-run `llmirc compile` to rebuild the artifact")
        return rt.FunctionInvoker(self._context, self.device, fn)


def open_engine(artifact_dir: str | Path, num_pages: int | None = None, device: str | None = None,
                ray: bool | str = False) -> Engine:
    """The Engine of an artifact; `ray` runs a pipeline-parallel artifact's stages as Ray actors
    (True: the RAY_ADDRESS cluster, else a new local one; a string: that cluster's address)."""
    if not ray:
        return Engine(artifact_dir, num_pages=num_pages, device=device)
    from .ray_stages import RayPipelineEngine

    return RayPipelineEngine(artifact_dir, num_pages=num_pages, device=device, address=None if ray is True else ray)


def _by_rows(plain, by_rows: dict, rows: int):
    """The row-chunked variant for the most token rows not above `rows`, else `plain`: a
    variant computes its chunks with the rows static and needs at least that many rows."""
    fit = [r for r in by_rows if r <= rows]
    return by_rows[max(fit)] if fit else plain


def _pad_decode_rows(tokens: np.ndarray, positions: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and positions padded to `b` rows; padding rows sit at position -1 (no write, no read)."""
    tok = np.zeros(b, np.int64)
    tok[:len(tokens)] = tokens
    pos = np.full(b, -1, np.int64)
    pos[:len(positions)] = positions
    return tok, pos


class StaticBuckets:
    """manifest target.buckets of a static-shape artifact: which shapes were compiled."""

    def __init__(self, batch, prefill_len, pages_per_seq: int, num_pages: int) -> None:
        self.batch = tuple(sorted(int(b) for b in batch))
        self.prefill_len = tuple(sorted(int(t) for t in prefill_len))
        self.pages_per_seq, self.num_pages = int(pages_per_seq), int(num_pages)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> StaticBuckets | None:
        data = manifest.target.extra.get("buckets")
        if not data:
            return None
        try:
            return cls(data["batch"], data["prefill_len"], data["pages_per_seq"], data["num_pages"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"manifest target.buckets {data!r} is not batch/prefill_len/pages_per_seq/num_pages; "
                                "re-run `llmirc compile` to rebuild the artifact") from None

    def fit_batch(self, n: int) -> int:
        return next(b for b in self.batch if b >= n)

    def fit_len(self, t: int) -> int:
        """The smallest compiled prefill length >= t, or a clear error when there is none."""
        for length in self.prefill_len:
            if length >= t:
                return length
        raise PromptTooLongError(
            f"a prompt of {t} tokens does not fit any compiled prefill bucket (lengths "
            f"{', '.join(map(str, self.prefill_len))}); shorten it or recompile with --buckets len=...,{t}")

    def pad_tables(self, tables: np.ndarray, b: int) -> np.ndarray:
        """[n, w] block tables -> [b, pages_per_seq], the rest scratch page 0."""
        if tables.shape[1] > self.pages_per_seq:
            if np.any(tables[:, self.pages_per_seq:]):
                raise ValueError(f"block tables use {tables.shape[1]} pages but the artifact was compiled for "
                                 f"{self.pages_per_seq} per sequence")
            tables = tables[:, :self.pages_per_seq]
        out = np.zeros((b, self.pages_per_seq), np.int64)
        out[:tables.shape[0], :tables.shape[1]] = tables
        return out


def to_host(device, array, staging: bool = False) -> np.ndarray:
    """A host copy of a device array; `staging` copies through a mapped staging buffer.

    Vulkan needs `staging`: iree.runtime's `to_host` imports a numpy allocation instead,
    which Mesa lavapipe refuses ("host allocation import pointer does not satisfy Vulkan
    minImportedHostPointerAlignment 4096"; IREE 3.13 Python bindings).
    """
    if not staging:
        return np.array(array.to_host(), copy=True)
    import iree.runtime as rt

    view = array._buffer_view
    source = view.get_buffer()
    staging = device.allocator.allocate_buffer(
        memory_type=int(rt.MemoryType.HOST_LOCAL | rt.MemoryType.DEVICE_VISIBLE),
        allowed_usage=int(rt.BufferUsage.TRANSFER_TARGET | rt.BufferUsage.MAPPING_SCOPED),
        allocation_size=source.byte_length())
    sem = device.create_semaphore(0)
    device.queue_copy(source, staging, wait_semaphores=rt.HalFence.create_at(sem, 0),
                      signal_semaphores=rt.HalFence.create_at(sem, 1))
    rt.HalFence.create_at(sem, 1).wait()
    dtype = rt.HalElementType.map_to_dtype(view.element_type)
    return np.array(staging.map().asarray(view.shape, dtype), copy=True)


def default_num_pages(manifest: Manifest) -> int:
    """Scratch page + room for DEFAULT_FULL_SEQUENCES max-length sequences, within DEFAULT_POOL_BYTES
    per device (but always at least one max-length sequence)."""
    m, kv = manifest.model, manifest.kv
    per_seq = -(-m.max_seq_len // kv.page_size)
    page_bytes = m.num_layers * 2 * kv.page_size * pool_kv_heads(manifest) * m.head_dim * \
        kv_numpy_dtype(kv.dtype).itemsize
    return 1 + max(per_seq, min(DEFAULT_FULL_SEQUENCES * per_seq, DEFAULT_POOL_BYTES // page_bytes))


def kv_numpy_dtype(name: str) -> np.dtype:
    if name not in KV_DTYPES:
        raise ArtifactError(f"manifest kv.dtype {name!r} is not one of {sorted(KV_DTYPES)}; "
                            "re-run `llmirc compile` to rebuild the artifact")
    if name == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(KV_DTYPES[name])


def device_zeros(device, shape: tuple[int, ...], dtype: np.dtype):
    """A zero-filled device array, filled on the device.

    `asdevicearray(np.zeros(...))` would copy the whole pool from the host: on an H100 that
    took 2.5 s for a 3.6 GiB pool. A device-side fill costs no host memory or transfer.
    """
    import iree.runtime as rt
    from iree.runtime.array_interop import map_dtype_to_element_type

    nbytes = int(np.prod(shape)) * dtype.itemsize
    try:
        buffer = device.allocator.allocate_buffer(memory_type=rt.MemoryType.DEVICE_LOCAL,
                                                  allowed_usage=rt.BufferUsage.DEFAULT, allocation_size=nbytes)
    except (RuntimeError, ValueError) as e:
        raise RuntimeDeviceError(f"cannot allocate the KV page pool ({nbytes / 2**30:.2f} GiB, shape {list(shape)}) "
                                 f"on the device: {_first_line(e)}; lower --num-pages") from None
    fill = rt.HalCommandBuffer(device)
    fill.fill(buffer, np.zeros(1, np.uint32), 0, nbytes, end=True)
    sem = device.create_semaphore(0)
    device.queue_execute(fill, rt.HalFence.create_at(sem, 0), rt.HalFence.create_at(sem, 1))
    rt.HalFence.create_at(sem, 1).wait()
    view = rt.HalBufferView(buffer, list(shape), map_dtype_to_element_type(dtype))
    return rt.DeviceArray(device, view)


def num_devices(manifest: Manifest) -> int:
    """How many devices the artifact runs on at once (manifest target.devices; 1 without)."""
    devices = manifest.target.extra.get("devices")
    if devices is None:
        return 1
    count = devices.get("count") if isinstance(devices, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ArtifactError(f"manifest target.devices {devices!r} has no positive 'count'; "
                            "re-run `llmirc compile` to rebuild the artifact")
    return count


def pool_kv_heads(manifest: Manifest) -> int:
    """KV heads in each device's pool: all of them on one device, the device's share with tensor parallelism."""
    return int(manifest.kv.extra.get("pool_kv_heads", manifest.model.num_kv_heads))


def device_uris(manifest: Manifest, device: str | None) -> list[str]:
    """One device URI per device of the artifact, from `device` (one URI, or a comma list for a
    tensor-parallel artifact) or, by default, the manifest's driver N times: on CPU N local-task
    devices (each its own device, created N times), on GPUs driver://0 .. driver://N-1."""
    n = num_devices(manifest)
    if device:
        uris = [u.strip() for u in device.split(",")]
        if any(not u for u in uris):
            raise RuntimeDeviceError(f"--device {device!r}: an empty entry in the device list")
    else:
        driver = manifest.target.driver
        uris = [driver] if n == 1 else [driver if driver.startswith("local") else f"{driver}://{i}"
                                        for i in range(n)]
    if len(uris) != n:
        raise RuntimeDeviceError(f"the artifact was compiled for {n} device{'s' if n > 1 else ''} "
                                 f"({_parallelism(manifest)} parallelism) but --device names {len(uris)}: {','.join(uris)}; give "
                                 f"{n} comma-separated devices" + (", e.g. " + ",".join(["local-task"] * n)
                                                                   if n > 1 else ""))
    return uris


def _parallelism(manifest: Manifest) -> str:
    devices = manifest.target.extra.get("devices")
    return devices.get("parallelism", "tensor") if isinstance(devices, dict) else "tensor"


def open_devices(manifest: Manifest, uris: list[str]) -> list:
    """The devices of `uris`. Several devices are each created on their own (a URI given twice,
    "local-task,local-task", is two devices; IREE's device cache would hand back one)."""
    if len(uris) == 1:
        return [open_device(manifest, uris[0])]
    return [open_device(manifest, u, cache=False) for u in uris]


def open_device(manifest: Manifest, device_uri: str, cache: bool = True):
    """Open `device_uri`, or say which device the artifact needs and that it is not here."""
    import iree.runtime as rt

    target = manifest.target
    driver = device_uri.split("://", 1)[0]
    allowed = DRIVERS_FOR_DEVICE.get(target.device, (target.driver,))
    if driver not in allowed:
        raise RuntimeDeviceError(
            f"the artifact was compiled for {target.device!r} devices (target {target.name!r}) and "
            f"cannot run on driver {driver!r}; use one of: {', '.join(allowed)}")
    need = f"a {target.device} device (target {target.name!r}, driver {driver!r})"
    if driver not in rt.query_available_drivers():
        raise RuntimeDeviceError(f"the artifact needs {need}, but this IREE runtime has no {driver!r} driver")
    try:
        return rt.get_device(device_uri, cache=cache)
    except (RuntimeError, ValueError) as e:
        raise RuntimeDeviceError(f"the artifact needs {need}, which is not present on this machine "
                                 f"({_first_line(e)})") from None


def _load_module(instance, path: Path):
    import iree.runtime as rt

    try:
        return rt.VmModule.mmap(instance, str(path))
    except Exception as e:  # IREE's verifier also raises IndexError (an out-of-range register ordinal)
        raise ArtifactError(f"{path} is not a loadable IREE module ({_first_line(e)}); "
                            "re-run `llmirc compile` to rebuild the artifact") from None


def _i64(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)


def _first_line(e: BaseException, limit: int = 240) -> str:
    """IREE's first error line, cut to `limit` characters (it can embed a whole target attribute)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
