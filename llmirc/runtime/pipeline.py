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
class replaces only what is opened (_open_modules: the stages), the pools, and how an entry
point is looked up (_function) and called (_call). Stages on
other hosts, as Ray actors, are runtime/ray_stages.py.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

from llmirc.artifacts.manifest import Manifest
from llmirc.artifacts.params import SCOPE
from llmirc.errors import ArtifactError, LlmircError, RuntimeDeviceError

from .engine import Engine, _first_line, _load_module, device_zeros, kv_numpy_dtype, pool_kv_heads, to_host


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


class PipelineEngine(Engine):
    """Engine over the stages of a pipeline-parallel artifact (same interface as Engine).

    `device`: one URI per stage, comma-separated (default: N local-task devices on CPU,
    driver://0 .. driver://N-1 on GPUs). `micro_batches`: how many micro-batches a call's rows
    are split into and pipelined over the stages (1: the stages run one after the other on the
    whole batch). Engine.__init__ does everything but what the hooks below change: a Stage per
    stage instead of one module, their pools, and the calls.
    """

    def __init__(self, artifact_dir: str | Path, num_pages: int | None = None, device: str | None = None,
                 verify_checksums: bool = True, probe: bool = True, micro_batches: int = 1) -> None:
        if micro_batches < 1:
            raise LlmircError(f"micro_batches must be at least 1, got {micro_batches}")
        self.micro_batches = micro_batches
        super().__init__(artifact_dir, num_pages, device, verify_checksums, probe)
        # decode_b{B} takes its static batch whole: never split into micro-batches
        self._static_batch = set(self.manifest.entry_points["decode"].get("batch_functions", {}).values())

    def _open(self, device: str | None, probe: bool) -> None:
        self.stages = self._checked_stages()
        super()._open(device, probe)

    def _checked_stages(self) -> list[dict]:
        stages = pipeline_stages(self.manifest)
        if stages is None:
            raise ArtifactError(f"{self.artifact_dir} is not a pipeline-parallel artifact (compile one with --pp N)")
        return stages

    def _open_modules(self) -> None:
        """One Stage (module, context, pool) per stage on its own device."""
        self._stage_runners = [Stage(self.artifact_dir, self.manifest, i, dev, self._params, self._instance,
                                     self.num_pages) for i, dev in enumerate(self.devices)]

    def _new_pools(self) -> list:
        return [s.pool for s in self._stage_runners]

    def _function(self, name: str) -> str:
        for s in self._stage_runners:
            s.check(name)
        return name

    def _call(self, name: str, *args: np.ndarray) -> np.ndarray:
        args = tuple(a.astype(self._index_dtype, copy=False) for a in args)
        m = 1 if name in self._static_batch else min(self.micro_batches, len(args[0]))
        bounds = np.linspace(0, len(args[0]), m + 1).astype(int)
        chunks = [tuple(a[lo:hi] for a in args) for lo, hi in zip(bounds[:-1], bounds[1:])]
        try:
            return np.concatenate(self._run_chunks(name, chunks))
        except (RuntimeError, ValueError) as e:
            raise RuntimeDeviceError(f"running {self.artifact_dir} (pipeline stage of '{name}') on "
                                     f"{self.device_uri!r} failed: {_first_line(e)}") from None

    def _run_chunks(self, name: str, chunks: list[tuple]) -> list[np.ndarray]:
        """Each chunk through every stage in order; several chunks pipelined, one thread per stage."""
        stages = self._stage_runners
        if len(chunks) == 1:
            h = None
            for s in stages:
                h = s.run(name, chunks[0], h)
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
                        h = stages[i].run(name, chunk, h)
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
