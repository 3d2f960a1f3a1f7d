"""RayPipelineEngine: the stages of a pipeline-parallel artifact as Ray actors (docs/parallel.md).

Ray is the control plane, as in vLLM's multi-node mode: each actor opens the artifact (the same
path on every host), its one stage module, its device and its KV pool, and runs that stage's
entry points. A step submits stage 0's call and hands its result's object reference to stage
1's call, and so on, so the hidden state goes from actor to actor through Ray's object store
without a trip through this process; only the last stage's logits come back. Several
micro-batches are submitted at once and each actor runs its calls in submission order, which
is the pipeline: stage 0 runs micro-batch k + 1 while stage 1 runs micro-batch k.

Ray is an optional extra (`pip install 'llmirc[multihost]'`). `address` is handed to
`ray.init` (None: the RAY_ADDRESS cluster if set, else a local one). An actor that dies (an
IREE crash) is a RayActorError here, not a crash of this process, so no probe runs first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmirc.errors import LlmircError, RuntimeDeviceError

from .engine import _first_line
from .pipeline import PipelineEngine, Stage


class StageWorker:
    """What each Ray actor holds: one Stage of the artifact, opened in the actor's process."""

    def __init__(self, artifact_dir: str, index: int, device_uri: str, num_pages: int,
                 verify_checksums: bool) -> None:
        import iree.runtime as rt

        from llmirc.artifacts.manifest import PARAMS_NAME, read_manifest
        from llmirc.artifacts.params import load_params

        from .engine import open_device

        root = Path(artifact_dir)
        manifest = read_manifest(root, verify_checksums=verify_checksums)
        self._instance = rt.VmInstance()
        self._params = load_params(root / PARAMS_NAME)
        device = open_device(manifest, device_uri, cache=False)
        self.stage = Stage(root, manifest, index, device, self._params, self._instance, num_pages)

    def check(self, name: str) -> None:
        self.stage.check(name)

    def run(self, name: str, args: tuple, hidden: np.ndarray | None) -> np.ndarray:
        return self.stage.run(name, args, hidden)

    def read_pool(self) -> np.ndarray:
        return np.array(self.stage.read_pool())


class RayPipelineEngine(PipelineEngine):
    """PipelineEngine whose stages are Ray actors. `device`: one URI per stage as each actor
    sees it (default: local-task on CPU, driver://0 on GPUs, where Ray gives each actor one GPU
    through CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES)."""

    def __init__(self, artifact_dir: str | Path, num_pages: int | None = None, device: str | None = None,
                 verify_checksums: bool = True, micro_batches: int = 1, address: str | None = None) -> None:
        self._address, self._verify = address, verify_checksums
        super().__init__(artifact_dir, num_pages, device, verify_checksums, probe=False, micro_batches=micro_batches)

    def _open(self, device: str | None, probe: bool) -> None:
        """One actor per stage (no probe: an actor's crash is an error here, not a crash)."""
        self.stages = self._checked_stages()
        try:
            import ray
        except ImportError:
            raise LlmircError("stages as Ray actors need Ray: pip install 'llmirc[multihost]'") from None
        if not ray.is_initialized():
            ray.init(address=self._address, include_dashboard=False, log_to_driver=False)
        target = self.manifest.target
        n = len(self.stages)
        if device:
            from .engine import device_uris

            uris = device_uris(self.manifest, device)
        else:
            uris = [target.driver if target.driver.startswith("local") else f"{target.driver}://0"] * n
        resources = {"num_cpus": 1} if target.device == "local" else {"num_cpus": 0, "num_gpus": 1}
        actor = ray.remote(**resources)(StageWorker)
        self.device_uris, self.device_uri = uris, ",".join(uris)
        self.devices, self.device = [], None  # on the actors, with the pools; read_pool(i) copies one here
        self._staging = False
        self._actors = [actor.remote(str(self.artifact_dir.resolve()), i, uri, self.num_pages, self._verify)
                        for i, uri in enumerate(uris)]
        self._ray = ray
        self._get([a.check.remote("prefill") for a in self._actors])  # every actor came up

    def _get(self, refs):
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) or e
            if isinstance(cause, LlmircError):
                raise cause from None
            raise RuntimeDeviceError(f"a Ray stage of {self.artifact_dir} failed: {_first_line(cause)}") from None

    def _new_pools(self) -> list:
        return []

    def _function(self, name: str) -> str:
        self._get([a.check.remote(name) for a in self._actors])
        return name

    def _run_chunks(self, name: str, chunks: list[tuple]) -> list[np.ndarray]:
        outs = []
        for chunk in chunks:  # all submitted before any is waited on: the actors pipeline them
            h = None
            for a in self._actors:
                h = a.run.remote(name, chunk, h)
            outs.append(h)
        return self._get(outs)

    def read_pool(self, device: int = 0) -> np.ndarray:
        return self._get(self._actors[device].read_pool.remote())

    def shutdown(self) -> None:
        """Stop the stage actors (the Ray cluster stays up)."""
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []
