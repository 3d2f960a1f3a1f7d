"""Load an artifact into the step engine and serve it with uvicorn (`llmirc serve`).

The listening socket is bound here, before uvicorn starts, so a port in use or a bad host is
one `error:` line (uvicorn would log a traceback-like message and exit on its own).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmirc.errors import LlmircError

TOKENIZER_CONFIG = "tokenizer_config.json"


@dataclass
class ServeOptions:
    """`llmirc serve`'s flags, spelled as `vllm serve` spells them."""

    artifact: Path
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: tuple[str, ...] = ()
    chat_template: Path | None = None
    max_model_len: int | None = None
    num_pages: int | None = None
    device: str | None = None
    ray: bool = False  # a pipeline artifact's stages as Ray actors (runtime/ray_stages.py)
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    max_body_bytes: int | None = None
    log_level: str = "info"

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Only what the user gave, so the engine's own defaults stay its own."""
        kw: dict[str, Any] = {"enable_prefix_caching": self.enable_prefix_caching}
        if self.max_model_len is not None:
            kw["max_model_len"] = self.max_model_len
        if self.max_num_seqs is not None:
            kw["max_num_seqs"] = self.max_num_seqs
        if self.max_num_batched_tokens is not None:
            kw["max_num_batched_tokens"] = self.max_num_batched_tokens
        return kw


def require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise LlmircError(f"`llmirc serve` needs the serve extra ({e.name} is missing): "
                          "pip install 'llmirc[serve]'") from None


def load_engine(opts: ServeOptions):
    """The LLMEngine for the artifact (its errors are LlmircErrors: bad artifact, device)."""
    try:
        from llmirc.runtime.llm_engine import LLMEngine
    except ImportError as e:
        raise LlmircError(f"this llmirc has no step engine (llmirc.runtime.llm_engine: {e})") from None
    return LLMEngine.from_artifact(opts.artifact, num_pages=opts.num_pages, device=opts.device, ray=opts.ray,
                                   **opts.scheduler_kwargs())


def serving_model(artifact: Path, engine: Any, names: tuple[str, ...] = (), chat_template: Path | None = None):
    """What the routes need to know about the model: names, context, tokenizer, BOS rule, template."""
    from llmirc.api import _read_json, should_add_bos
    from llmirc.artifacts.manifest import read_manifest

    from .app import ServingModel
    from .chat_template import load_chat_template, no_template_message

    manifest = read_manifest(artifact, verify_checksums=False)
    # The engine's: the artifact's max_seq_len capped by --max-model-len (it refuses a larger one).
    limit = engine.max_model_len
    return ServingModel(names=names or (str(artifact),), root=str(artifact), max_model_len=limit,
                        tokenizer=engine.tokenizer,
                        add_bos=should_add_bos(manifest, _read_json(artifact / TOKENIZER_CONFIG)),
                        bos_token_id=manifest.model.bos_token_id,
                        eos_token_ids=tuple(getattr(engine, "eos_token_ids", ())),
                        chat_template=load_chat_template(artifact, chat_template),
                        no_template_message=no_template_message(artifact))


def build_server_app(opts: ServeOptions, engine: Any):
    from .app import ServerConfig, build_app
    from .async_engine import AsyncEngine
    from .metrics import ServerMetrics

    model = serving_model(opts.artifact, engine, opts.served_model_name, opts.chat_template)
    config = ServerConfig(api_key=opts.api_key)
    if opts.max_body_bytes is not None:
        config.max_body_bytes = opts.max_body_bytes
    return build_app(AsyncEngine(engine, ServerMetrics()), model, config)


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (port 0: any free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LlmircError(f"cannot resolve --host {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP,
    # and without it Nagle + delayed ACKs hold streamed tokens back for ~40 ms.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise LlmircError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None
    sock.set_inheritable(True)
    return sock


def serve(opts: ServeOptions, announce=print) -> None:
    """Load, bind, serve until SIGINT/SIGTERM."""
    import uvicorn

    require_serve_extra()
    sock = listen(opts.host, opts.port)
    engine = load_engine(opts)
    app = build_server_app(opts, engine)
    host, port = sock.getsockname()[:2]
    announce(f"serving {opts.artifact} as {app.state.model.names[0]!r} on http://{host}:{port} "
             f"(max_model_len {app.state.model.max_model_len}; OpenAI API under /v1)")
    server = uvicorn.Server(uvicorn.Config(app, log_level=opts.log_level, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: a normal stop
        pass


@dataclass
class ServerThread:
    """A uvicorn server for `app` in a background thread on 127.0.0.1 (tests, benchmarks):
    `with ServerThread(app) as url: ...`; leaving the block stops it and its engine."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0
    start_timeout_s: float = 60.0
    url: str = ""
    _server: Any = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __enter__(self) -> str:
        import uvicorn

        sock = listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="llmirc-uvicorn")
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the test server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
