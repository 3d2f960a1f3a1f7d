"""Server fixtures: an app over the fake engine (or a real artifact), run by uvicorn in a
background thread on a free 127.0.0.1 port, always stopped when the test ends."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from llmirc.serving.app import ServerConfig, ServingModel, build_app  # noqa: E402
from llmirc.serving.async_engine import AsyncEngine  # noqa: E402
from llmirc.serving.chat_template import ChatTemplate  # noqa: E402
from llmirc.serving.metrics import ServerMetrics  # noqa: E402
from llmirc.serving.server import ServerThread  # noqa: E402

from .fake_engine import FakeEngine  # noqa: E402

# A ChatML-like template, as many checkpoints ship (tokenizer_config.json's chat_template).
CHATML = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>{% endif %}")

@pytest.fixture(scope="session")
def tokenizer(tiny_checkpoint):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tiny_checkpoint) / "tokenizer.json"))


def fake_model(tokenizer, max_model_len: int = 128, template: str | None = CHATML, **kw) -> ServingModel:
    return ServingModel(names=("fake",), root="/fake", max_model_len=max_model_len, tokenizer=tokenizer,
                        add_bos=True, bos_token_id=1, eos_token_ids=(2,),
                        chat_template=ChatTemplate(template, "<s>", "</s>", "test") if template else None, **kw)


@dataclasses.dataclass
class Running:
    url: str
    engine: FakeEngine
    async_engine: AsyncEngine
    metrics: ServerMetrics

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 60, **kw})


@pytest.fixture
def serve_fake(tokenizer):
    """serve_fake(**FakeEngine kwargs, api_key=..., template=..., max_body_bytes=...) -> Running."""
    stack = []

    def start(api_key=None, template=CHATML, max_body_bytes=None, max_model_len=128, **engine_kw) -> Running:
        engine = FakeEngine(tokenizer, max_model_len=max_model_len, **engine_kw)
        metrics = ServerMetrics()
        aengine = AsyncEngine(engine, metrics, idle_poll_s=0.05)
        config = ServerConfig(api_key=api_key)
        if max_body_bytes:
            config.max_body_bytes = max_body_bytes
        server = ServerThread(build_app(aengine, fake_model(tokenizer, max_model_len, template), config))
        url = server.__enter__()
        stack.append(server)
        return Running(url, engine, aengine, metrics)

    yield start
    for s in stack:
        s.__exit__()


# ---- the real engine on a compiled artifact ----------------------------------------------

@pytest.fixture(scope="session")
def serve_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint compiled here at -O3 (ABI v2: extend), 8-token pages."""
    from tests.e2e.conftest import compile_artifact

    return compile_artifact(tiny_checkpoint, tmp_path_factory.mktemp("serve") / "tiny-o3", opt_level=3, page_size=8)


@pytest.fixture(scope="session")
def template_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tmpl") / "chatml.jinja"
    path.write_text(CHATML)
    return path


def real_app(artifact: Path, template: Path | None = None, **opts):
    """(app, LLMEngine) for the artifact, built as `llmirc serve` builds them."""
    from llmirc.serving.server import ServeOptions, build_server_app, load_engine

    o = ServeOptions(artifact, chat_template=template, **opts)
    engine = load_engine(o)
    return build_server_app(o, engine), engine


def run_alone(engine, ids: list[int], params) -> tuple[list[int], str, str]:
    """(token ids, text, finish reason) of one request with nothing else in the engine."""
    engine.add_request("alone", ids, params)
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out
    c = final.outputs[0]
    return c.token_ids, c.text, c.finish_reason
