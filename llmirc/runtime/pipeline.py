"""PipelineEngine: a pipeline-parallel artifact (`llmirc compile --pp N`, docs/parallel.md).

Stage i is its own IREE module (manifest target.devices.stages[i].vmfb) on its own device,
with its own KV pool holding only its layers; all pools have the same page count, so the one
PagePool / block table the scheduler keeps addresses every stage. A step runs the stages in
order; every stage takes the step's tokens, lengths / positions and block tables, and stages
after the first also the hidden state the stage before returned (a host numpy array between
devices). The last stage returns the logits.

With `micro_batches` M > 1 a call's rows are split into M contiguous micro-batches and
pipelined: one thread per stage, queues between them, so stage 0 runs micro-batch k + 1 while
stage 1 runs micro-batch k; the outputs are put back in row order. Rows are independent (each
writes only its own pages), so the result equals the one-batch call.

The Engine's checks, static-batch padding and the scheduler above it are unchanged: this
class replaces only how an entry point is looked up (_function) and called (_call). Stages on
other hosts, as Ray actors, are runtime/ray_stages.py.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmirc.artifacts.manifest import PARAMS_NAME, Manifest, read_manifest
from llmirc.artifacts.params import SCOPE, load_params
from llmirc.errors import ArtifactError, LlmircError, RuntimeDeviceError

from .engine import (Engine, _first_line, _load_module, default_num_pages, device_uris, device_zeros,
                     kv_numpy_dtype, open_devices, pool_kv_heads, to_host)


def pipeline_stages(manifest: Manifest) -> list[dict] | None:
    """manifest target.devices.stages of a pipeline-parallel artifact, or None for any other."""
    devices = manifest.target.extra.get("devices")
    if not isinstance(devices, dict) or devices.get("parallelism") != "pipeline":
        return None
    stages = devices.get("stages")
    layers = manifest.model.num_layers
    ok = isinstance(stages, list) and len(stages) == devices.get("count") and all(
        isinstance(s, dict) and isinstance(s.get("vmfb"), str) and isinstance(s.get("layers"), list)
        and len(s["layers"]) == 2 for s in stages)
    if ok:
        bounds = [tuple(s["layers"]) for s in stages]
        ok = bounds[0][0] == 0 and bounds[-1][1] == layers and all(
            a < b for a, b in bounds) and all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))
    if not ok:
        raise ArtifactError(f"manifest target.devices.stages {stages!r} is not {devices.get('count')} contiguous "
                            f"layer ranges covering 0..{layers}; re-run `llmirc compile` to rebuild the artifact")
    return stages


def stage_pool_shape(manifest: Manifest, stage: dict, num_pages: int) -> tuple[int, ...]:
    """The KV pool of one stage: its layers only, [pages, layers, 2, page, kv heads, head dim]."""
    a, b = stage["layers"]
    m = manifest.model
    return (num_pages, b - a, 2, manifest.kv.page_size, pool_kv_heads(manifest), m.head_dim)


class Stage:
    """One pipeline stage on one device: its module in its own context, its KV pool, and one
    invoker per entry point (looked up on first use)."""

    def __init__(self, artifact_dir: Path, manifest: Manifest, index: int, device, params, instance,
                 num_pages: int) -> None:
        import iree.runtime as rt

        self.index, self.device = index, device
        spec = pipeline_stages(manifest)[index]
        self.first = index == 0
        path = artifact_dir / spec["vmfb"]
        if spec["vmfb"] not in manifest.files or not path.is_file():
            raise ArtifactError(f"{path}: the manifest's stage module is missing; re-run `llmirc compile`")
        self.path = path
        self.module = _load_module(instance, path)
        try:
            self.context = rt.VmContext(instance, modules=[
                rt.create_hal_module(instance, device),
                rt.create_io_parameters_module(instance, params.create_provider(scope=SCOPE)),
                self.module])
        except (RuntimeError, ValueError) as e:
            raise RuntimeDeviceError(f"{path} could not be initialised on device {device!r}: {_first_line(e)}") \
                from None
        self.pool = device_zeros(device, stage_pool_shape(manifest, spec, num_pages), kv_numpy_dtype(manifest.kv.dtype))
        self._invokers: dict[str, object] = {}

    def check(self, name: str) -> None:
        """Raise ArtifactError unless this stage's module has entry point `name`."""
        self._invoker(name)

    def _invoker(self, name: str):
        import iree.runtime as rt

        if name not in self._invokers:
            fn = self.module.lookup_function(name)
            if fn is None:
                raise ArtifactError(f"{self.path} has no '{name}' entry point; "
                                    "re-run `llmirc compile` to rebuild the artifact")
            self._invokers[name] = rt.FunctionInvoker(self.context, self.device, fn)
        return self._invokers[name]

    def run(self, name: str, args: tuple, hidden: np.ndarray | None) -> np.ndarray:
        """Entry point `name` on this stage's device and pool: its output (hidden state or logits) on the host."""
        extra = () if self.first else (hidden,)
        out, *_pool = self._invoker(name)(*args, *extra, self.pool)  # the pool result aliases self.pool
        return np.array(to_host(self.device, out), dtype=np.float32)

    def read_pool(self) -> np.ndarray:
        return to_host(self.device, self.pool)


@dataclass(frozen=True)
class StageFunction:
    """One entry point of every stage; `batch` is set for a static-batch decode_b{B}."""
    name: str
    batch: int | None = None


class PipelineEngine(Engine):
    """Engine over the stages of a pipeline-parallel artifact (same interface as Engine).

    `device`: one URI per stage, comma-separated (default: N local-task devices on CPU,
    driver://0 .. driver://N-1 on GPUs). `micro_batches`: how many micro-batches a call's rows
    are split into and pipelined over the stages (1: the stages run one after the other on the
    whole batch).
    """

    def __init__(self, artifact_dir: str | Path, num_pages: int | None = None, device: str | None = None,
                 verify_checksums: bool = True, probe: bool = True, micro_batches: int = 1) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir, verify_checksums=verify_checksums)
        self.stages = pipeline_stages(self.manifest)
        if self.stages is None:
            raise ArtifactError(f"{self.artifact_dir} is not a pipeline-parallel artifact (compile one with --pp N)")
        if micro_batches < 1:
            raise LlmircError(f"micro_batches must be at least 1, got {micro_batches}")
        self.micro_batches = micro_batches
        m, kv = self.manifest.model, self.manifest.kv
        self.page_size, self.max_seq_len, self.vocab_size = kv.page_size, m.max_seq_len, m.vocab_size
        self.buckets = None  # static-shape targets are refused with --pp
        self.max_prefill_len = m.max_seq_len
        self._index_dtype = np.dtype(np.int32 if self.manifest.target.extra.get("index_dtype") == "i32"
                                     else np.int64)
        self.num_pages = num_pages if num_pages is not None else default_num_pages(self.manifest)
        if self.num_pages < 2:
            raise LlmircError(f"--num-pages must be at least 2 (page 0 is the scratch page), got {self.num_pages}")
        self.pool_shape = (self.num_pages, m.num_layers, 2, kv.page_size, pool_kv_heads(self.manifest),
                           m.head_dim)  # all stages together
        self._staging = False
        self._open_stages(device, probe and verify_checksums)
        eps = self.manifest.entry_points
        self.supports_extend = "extend" in eps
        self.supports_all_logits = "extend_all" in eps
        self._prefill = self._function("prefill")
        self._decode = self._function("decode")
        self._extend = self._function("extend") if self.supports_extend else None
        self._extend_all = self._function("extend_all") if self.supports_all_logits else None
        self._decode_by_batch = {int(b): self._function(name, batch=int(b)) for b, name in
                                 eps["decode"].get("batch_functions", {}).items()}

    def _open_stages(self, device: str | None, probe: bool) -> None:
        """Every stage in this process, each on its own device."""
        import iree.runtime as rt

        self.device_uris = device_uris(self.manifest, device)
        self.device_uri = ",".join(self.device_uris)
        self.devices = open_devices(self.manifest, self.device_uris)
        self.device = self.devices[0]
        if probe:
            from .probe import ensure_module_runs

            vmfb = self.stages[0]["vmfb"]
            ensure_module_runs(self.artifact_dir, self.manifest.files[vmfb], self.device_uri,
                               self.artifact_dir / vmfb)
        self._instance = rt.VmInstance()
        self._params = params = load_params(self.artifact_dir / PARAMS_NAME)  # keeps the weights' mapping alive
        self._stage_runners = [Stage(self.artifact_dir, self.manifest, i, dev, params, self._instance,
                                     self.num_pages) for i, dev in enumerate(self.devices)]
        self.pools = [s.pool for s in self._stage_runners]
        self.pool = self.pools[0]

    def _function(self, name: str, batch: int | None = None) -> StageFunction:
        for s in self._stage_runners:
            s.check(name)
        return StageFunction(name, batch)

    def _call(self, fn: StageFunction, *args: np.ndarray) -> np.ndarray:
        args = tuple(a.astype(self._index_dtype, copy=False) for a in args)
        m = 1 if fn.batch is not None else min(self.micro_batches, len(args[0]))  # decode_b{B} takes its batch whole
        bounds = np.linspace(0, len(args[0]), m + 1).astype(int)
        chunks = [tuple(a[lo:hi] for a in args) for lo, hi in zip(bounds[:-1], bounds[1:])]
        try:
            return np.concatenate(self._run_chunks(fn, chunks))
        except (RuntimeError, ValueError) as e:
            raise RuntimeDeviceError(f"running {self.artifact_dir} (pipeline stage of '{fn.name}') on "
                                     f"{self.device_uri!r} failed: {_first_line(e)}") from None

    def _run_chunks(self, fn: StageFunction, chunks: list[tuple]) -> list[np.ndarray]:
        """Each chunk through every stage in order; several chunks pipelined, one thread per stage."""
        stages = self._stage_runners
        if len(chunks) == 1:
            h = None
            for s in stages:
                h = s.run(fn.name, chunks[0], h)
            return [h]
        n = len(stages)
        queues: list[queue.Queue] = [queue.Queue() for _ in range(n + 1)]
        for k, chunk in enumerate(chunks):
            queues[0].put((k, chunk, None))
        queues[0].put(None)
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            while (item := queues[i].get()) is not None:
                k, chunk, h = item
                if not errors:
                    try:
                        h = stages[i].run(fn.name, chunk, h)
                    except BaseException as e:  # handed to the caller's thread
                        errors.append(e)
                queues[i + 1].put((k, chunk, h))
            queues[i + 1].put(None)

        threads = [threading.Thread(target=worker, args=(i,), name=f"llmirc-stage{i}", daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        out: list = [None] * len(chunks)
        while (item := queues[n].get()) is not None:
            out[item[0]] = item[2]
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    def read_pool(self, device: int = 0) -> np.ndarray:
        """A host copy of stage `device`'s pool (its layers only)."""
        return self._stage_runners[device].read_pool()
