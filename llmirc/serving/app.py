"""The HTTP routes: OpenAI's /v1 API as vLLM serves it, /health, /metrics and /tokenize.

Every failure a client can cause is an OpenAI error object with a 4xx status, never a 500:
`{"error": {"message", "type", "param", "code"}}`. Validation errors, which FastAPI answers
with 422 and its own layout, are reshaped into that object with 400, as OpenAI answers.
Request bodies are bounded (ServerConfig.max_body_bytes), prompts by the model's context,
prompts per request and choices per prompt by protocol.MAX_PROMPTS / MAX_N.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmirc.errors import LlmircError
from llmirc.runtime.sampling import SamplingError, SamplingParams
from llmirc.runtime.structured import Constraint

from . import protocol as P
from .async_engine import AsyncEngine, EngineDeadError, RequestStream, merge
from .chat_template import ChatTemplate, ChatTemplateError
from .metrics import ServerMetrics
from .structured_fields import ConstraintFieldError, constraint_from_fields

DEFAULT_MAX_BODY_BYTES = 4 << 20


@dataclass
class ServingModel:
    """What the routes know about the model besides its engine."""

    names: tuple[str, ...]         # served model names; the first is the one reported
    root: str                      # the artifact path
    max_model_len: int
    tokenizer: Any | None = None   # tokenizers.Tokenizer
    add_bos: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    chat_template: ChatTemplate | None = None
    no_template_message: str = "this model has no chat template; start the server with --chat-template FILE"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Prompt text -> ids; BOS is prepended when the model expects it (not for chat
        prompts, whose template writes it as text)."""
        if self.tokenizer is None:
            raise APIError(400, "this model has no tokenizer; send the prompt as token ids", param="prompt")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id] + ids
        return ids

    def token_text(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"  # vLLM's form when tokens are returned as ids
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class APIError(Exception):
    """An error answered to the client as OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: int | str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return P.ErrorResponse(error=P.ErrorInfo(message=self.message, type=self.type, param=self.param,
                                                 code=self.code)).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def build_app(engine: AsyncEngine, model: ServingModel, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app; it starts the engine thread on start-up and stops it on shut-down."""
    config = config or ServerConfig()
    metrics = engine.metrics if engine.metrics is not None else ServerMetrics()
    engine.metrics = metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="llmirc", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.model, app.state.metrics = engine, model, metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    _install_error_handlers(app)
    handlers = _Handlers(engine, model, config)
    from .sglang import install_sglang_routes  # SGLang's native protocol (its module imports this one)

    install_sglang_routes(app, handlers)

    @app.get("/health")
    async def health() -> Response:
        if not engine.alive:
            return APIError(503, "the engine is not running", "service_unavailable").response()
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> JSONResponse:
        from importlib.metadata import PackageNotFoundError, version as package_version

        try:
            return JSONResponse({"version": package_version("llmirc")})
        except PackageNotFoundError:  # run from a source tree that was never installed
            return JSONResponse({"version": "unknown"})

    @app.get("/metrics")
    async def get_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        handlers.authorize(request)
        cards = [P.ModelCard(id=n, root=model.root, max_model_len=model.max_model_len) for n in model.names]
        return JSONResponse(P.ModelList(data=cards).model_dump())

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request) -> Response:
        handlers.authorize(request)
        return await handlers.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatCompletionRequest, request: Request) -> Response:
        handlers.authorize(request)
        return await handlers.chat(body, request)

    @app.post("/tokenize")
    async def tokenize(body: P.TokenizeRequest, request: Request) -> JSONResponse:
        handlers.authorize(request)
        handlers.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt and messages", param="prompt")
        if body.messages is not None:
            text = await off_loop(handlers.render_chat, body.messages, body.add_generation_prompt,
                                  size=_chars(body.messages))
            ids = await off_loop(model.encode, text, False, size=len(text))
        else:
            ids = await off_loop(model.encode, body.prompt, body.add_special_tokens, size=len(body.prompt))
        return JSONResponse({"count": len(ids), "max_model_len": model.max_model_len, "tokens": ids})

    return app


# ---- errors and limits --------------------------------------------------------------------

def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return validation_to_api_error(e.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), kind).response()

    @app.exception_handler(LlmircError)
    async def llmirc_error(request: Request, e: LlmircError) -> JSONResponse:
        return _from_llmirc_error(e).response()


def validation_to_api_error(errors: list[dict]) -> APIError:
    """The first pydantic error as one message naming the field (`messages.0.role: ...`)."""
    if not errors:
        return APIError(400, "invalid request body")
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid value")
    if err.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {msg}")
    extra = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return APIError(400, f"{param or 'body'}: {msg}{extra}", param=param)


def _from_llmirc_error(e: LlmircError) -> APIError:
    if isinstance(e, EngineDeadError):
        return APIError(503, str(e), "service_unavailable")
    return APIError(400, str(e))


class BodyLimit:
    """Pure ASGI middleware: a body longer than `max_bytes` is refused with 413 before the
    route parses it: by Content-Length when given, else by counting what arrives (chunked
    uploads); then the app is told the client left, and whatever it answers is dropped."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = APIError(413, f"the request body is larger than {self.max_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_big.response()(scope, receive, send)
        seen, refused = 0, False

        async def counting_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    await too_big.response()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


# ---- the handlers -----------------------------------------------------------------------

@dataclass
class _Prompt:
    ids: list[int]
    max_tokens: int
    text: str | None = None  # as the client gave it (for echo); None for token ids


@dataclass
class _Handlers:
    engine: AsyncEngine
    model: ServingModel
    config: ServerConfig

    def authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise APIError(401, "invalid or missing API key: send `Authorization: Bearer <key>`",
                           "authentication_error", code="invalid_api_key")

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.model.names:
            raise APIError(404, f"the model '{name}' does not exist; this server serves "
                                f"{', '.join(repr(n) for n in self.model.names)}", "not_found_error",
                           param="model", code="model_not_found")

    # ---- /v1/completions --------------------------------------------------------------

    async def completions(self, req: P.CompletionRequest, request: Request) -> Response:
        self.check_model(req.model)
        for name, value, default in (("suffix", req.suffix, None), ("logit_bias", req.logit_bias, None)):
            if value not in (default, {}):
                raise APIError(400, f"{name} is not supported by this server", param=name)
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of is not supported (only best_of == n)", param="best_of")
        prompts = [self._fit(ids, req.max_tokens, text) for ids, text in await self._completion_prompts(req.prompt)]
        logprobs = req.logprobs
        rid = f"cmpl-{uuid.uuid4().hex}"
        # echo + logprobs: the prompt's tokens get logprobs too (lm-eval's loglikelihood requests)
        params = [self._params(req, p.max_tokens, logprobs, prompt_logprobs=logprobs if req.echo else None)
                  for p in prompts]
        if req.stream:
            streams = await self._start(rid, prompts, params, constraint_param(req.constraint_fields()))
            return _sse(self._stream_completion(rid, req, prompts, streams), streams)
        outs = await _unless_disconnected(request, self._collect(rid, prompts, params,
                                                                 constraint_param(req.constraint_fields())))
        choices = []
        for i, out in enumerate(outs):
            for c in out.outputs:
                head, lp = self._echo(req, prompts[i], out)
                if logprobs is not None:
                    lp = self._completion_logprobs(c.token_ids, c.logprobs, into=lp)
                choices.append(P.CompletionChoice(
                    index=i * req.n + c.index, text=head + c.text, finish_reason=c.finish_reason,
                    stop_reason=self._stop_reason(c), logprobs=lp))
        choices.sort(key=lambda c: c.index)
        return JSONResponse(P.CompletionResponse(id=rid, model=self.model.names[0], choices=choices,
                                                 usage=_usage(prompts, outs)).model_dump())

    async def _completion_prompts(self, prompt) -> list[tuple[list[int], str | None]]:
        if isinstance(prompt, str):
            texts_or_ids: list = [prompt]
        elif prompt and all(isinstance(t, int) for t in prompt):
            texts_or_ids = [list(prompt)]
        else:
            texts_or_ids = list(prompt)
        if not texts_or_ids:
            raise APIError(400, "prompt is empty", param="prompt")
        if len(texts_or_ids) > P.MAX_PROMPTS:
            raise APIError(400, f"at most {P.MAX_PROMPTS} prompts per request, got {len(texts_or_ids)}",
                           param="prompt")
        ids = [await off_loop(self.model.encode, p, size=len(p)) if isinstance(p, str) else p for p in texts_or_ids]
        if any(not p for p in ids):
            raise APIError(400, "a prompt has no tokens; give at least one", param="prompt")
        return [(p, t if isinstance(t, str) else None) for p, t in zip(ids, texts_or_ids)]

    def _echo(self, req: P.CompletionRequest, prompt: _Prompt, out) -> tuple[str, P.CompletionLogprobs | None]:
        """With echo: the prompt's text (as given, or its ids decoded) and, with logprobs, its
        tokens' logprobs (the first token has none); else nothing."""
        lp = P.CompletionLogprobs() if req.logprobs is not None else None
        if not req.echo:
            return "", lp
        text = prompt.text if prompt.text is not None else (
            self.model.tokenizer.decode(prompt.ids, skip_special_tokens=True) if self.model.tokenizer else "")
        if lp is not None:
            tops = out.prompt_logprobs or [None] * len(prompt.ids)
            for tok, top in zip(prompt.ids, tops):
                token = self.model.token_text(tok)
                lp.text_offset.append(lp.text_offset[-1] + len(lp.tokens[-1]) if lp.tokens else 0)
                lp.tokens.append(token)
                lp.token_logprobs.append(None if top is None else _finite(top.get(tok)))
                lp.top_logprobs.append(None if top is None else
                                       {self.model.token_text(t): _finite(v) for t, v in _ranked(top)})
        return text, lp

    async def _stream_completion(self, rid: str, req: P.CompletionRequest, prompts: list[_Prompt],
                                 streams: list[RequestStream]) -> AsyncIterator[str]:
        created, name = int(time.time()), self.model.names[0]
        done_tokens: dict[int, int] = {}
        offsets: dict[int, int] = {}
        finished: set[int] = set()
        async with aclosing(merge(streams)) as events:
            async for i, out in events:
                choices = []
                for c in out.outputs:
                    idx = i * req.n + c.index
                    if idx in finished:
                        continue
                    head, lp = ("", None)
                    if idx not in done_tokens:  # this choice's first chunk: the echoed prompt first
                        head, lp = self._echo(req, prompts[i], out)
                    new = c.token_ids[done_tokens.get(idx, 0):]
                    done_tokens[idx] = len(c.token_ids)
                    if not (head or c.new_text or c.finish_reason or (req.logprobs is not None and new)):
                        continue
                    if req.logprobs is not None:
                        start = len(c.token_ids) - len(new)
                        lp = self._completion_logprobs(new, (c.logprobs or [])[start:start + len(new)],
                                                       offset=offsets.get(idx, 0), into=lp)
                        if lp.tokens:
                            offsets[idx] = lp.text_offset[-1] + len(lp.tokens[-1])
                    if c.finish_reason is not None:
                        finished.add(idx)
                    choices.append(P.CompletionChoice(index=idx, text=head + c.new_text, logprobs=lp,
                                                      finish_reason=c.finish_reason, stop_reason=self._stop_reason(c)))
                if choices:
                    yield _data(P.CompletionResponse(id=rid, created=created, model=name, choices=choices))
        if req.include_usage:
            usage = _usage_counts(sum(len(p.ids) for p in prompts), sum(done_tokens.values()))
            yield _data(P.CompletionResponse(id=rid, created=created, model=name, choices=[], usage=usage))

    def _completion_logprobs(self, token_ids: list[int], logprobs: list[dict[int, float]] | None,
                             offset: int = 0, into: P.CompletionLogprobs | None = None) -> P.CompletionLogprobs:
        """OpenAI's legacy layout, appended to `into` (the echoed prompt's). text_offset adds up
        the tokens' texts, each decoded alone, from the start of the text returned (a stream's
        chunk continues where the previous one ended)."""
        out = into if into is not None else P.CompletionLogprobs()
        if out.tokens:
            offset = out.text_offset[-1] + len(out.tokens[-1])
        for tok, top in zip(token_ids, logprobs or []):
            text = self.model.token_text(tok)
            out.tokens.append(text)
            out.token_logprobs.append(_finite(top.get(tok)))
            out.top_logprobs.append({self.model.token_text(t): _finite(v) for t, v in _ranked(top)})
            out.text_offset.append(offset)
            offset += len(text)
        return out

    # ---- /v1/chat/completions --------------------------------------------------------

    async def chat(self, req: P.ChatCompletionRequest, request: Request) -> Response:
        self.check_model(req.model)
        if req.tools:
            raise APIError(400, "tools are not supported by this server", param="tools")
        if req.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        text = await off_loop(self.render_chat, req.messages, req.add_generation_prompt, size=_chars(req.messages))
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        prompt = self._fit(await off_loop(self.model.encode, text, False, size=len(text)), max_tokens)
        k = (req.top_logprobs or 0) if req.logprobs else None
        params = [self._params(req, prompt.max_tokens, k)]
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            streams = await self._start(rid, [prompt], params, constraint_param(req.constraint_fields()))
            return _sse(self._stream_chat(rid, req, prompt, streams, k), streams)
        (out,) = await _unless_disconnected(request, self._collect(rid, [prompt], params,
                                                                   constraint_param(req.constraint_fields())))
        choices = [P.ChatChoice(index=c.index, message=P.AssistantMessage(content=c.text),
                                finish_reason=c.finish_reason, stop_reason=self._stop_reason(c),
                                logprobs=self._chat_logprobs(c.token_ids, c.logprobs, k) if k is not None else None)
                   for c in sorted(out.outputs, key=lambda c: c.index)]
        return JSONResponse(P.ChatCompletionResponse(id=rid, model=self.model.names[0], choices=choices,
                                                     usage=_usage([prompt], [out])).model_dump())

    def render_chat(self, messages: list[P.ChatMessage], add_generation_prompt: bool) -> str:
        if self.model.chat_template is None:
            raise APIError(400, self.model.no_template_message, param="messages")
        try:
            return self.model.chat_template.render([_message_dict(m, i) for i, m in enumerate(messages)],
                                                   add_generation_prompt=add_generation_prompt)
        except ChatTemplateError as e:
            raise APIError(400, str(e), param="messages") from None

    async def _stream_chat(self, rid: str, req: P.ChatCompletionRequest, prompt: _Prompt,
                           streams: list[RequestStream], k: int | None) -> AsyncIterator[str]:
        created, name = int(time.time()), self.model.names[0]

        def chunk(choices) -> str:
            return _data(P.ChatCompletionChunk(id=rid, created=created, model=name, choices=choices))

        yield chunk([P.ChatChunkChoice(index=i, delta=P.Delta(role="assistant", content=""))
                     for i in range(req.n)])
        done_tokens: dict[int, int] = {}
        finished: set[int] = set()
        async with aclosing(merge(streams)) as events:
            async for _, out in events:
                choices = []
                for c in out.outputs:
                    if c.index in finished:
                        continue
                    new = c.token_ids[done_tokens.get(c.index, 0):]
                    done_tokens[c.index] = len(c.token_ids)
                    if not (c.new_text or c.finish_reason or (k is not None and new)):
                        continue
                    lp = None
                    if k is not None:
                        start = len(c.token_ids) - len(new)
                        lp = self._chat_logprobs(new, (c.logprobs or [])[start:start + len(new)], k)
                    if c.finish_reason is not None:
                        finished.add(c.index)
                    choices.append(P.ChatChunkChoice(index=c.index, delta=P.Delta(content=c.new_text), logprobs=lp,
                                                     finish_reason=c.finish_reason, stop_reason=self._stop_reason(c)))
                if choices:
                    yield chunk(choices)
        if req.include_usage:
            usage = _usage_counts(len(prompt.ids), sum(done_tokens.values()))
            yield _data(P.ChatCompletionChunk(id=rid, created=created, model=name, choices=[], usage=usage))

    def _chat_logprobs(self, token_ids: list[int], logprobs: list[dict[int, float]] | None, k: int
                       ) -> P.ChatLogprobs:
        content = []
        for tok, top in zip(token_ids, logprobs or []):
            text = self.model.token_text(tok)
            tops = [P.TopLogprob(token=self.model.token_text(t), logprob=_finite(v),
                                 bytes=list(self.model.token_text(t).encode()))
                    for t, v in _ranked(top)[:k]]
            content.append(P.TokenLogprob(token=text, logprob=_finite(top.get(tok)), bytes=list(text.encode()),
                                          top_logprobs=tops))
        return P.ChatLogprobs(content=content)

    # ---- shared -----------------------------------------------------------------------

    def _fit(self, ids: list[int], max_tokens: int | None, text: str | None = None) -> _Prompt:
        """The prompt and its max_tokens (default: the rest of the context), or a 400 when
        they do not fit the model's context, in vLLM's words."""
        limit = self.model.max_model_len
        want = max_tokens if max_tokens is not None else limit - len(ids)
        if len(ids) + max(want, 1) > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                f"{len(ids) + max(want, 1)} tokens ({len(ids)} in the prompt, {max(want, 1)} in the "
                                "completion). Please reduce the length of the prompt or max_tokens.",
                           param="max_tokens" if max_tokens is not None else "prompt",
                           code="context_length_exceeded")
        return _Prompt(list(ids), want, text)

    def _params(self, req: P._SamplingRequest, max_tokens: int, logprobs: int | None,
                prompt_logprobs: int | None = None) -> SamplingParams:
        stops = req.stop_strings()
        if len(stops) > P.MAX_STOP_STRINGS or any(len(s) > P.MAX_STOP_STRING_CHARS for s in stops):
            raise APIError(400, f"at most {P.MAX_STOP_STRINGS} stop strings of at most {P.MAX_STOP_STRING_CHARS} "
                                "characters", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "stop strings must not be empty", param="stop")
        # OpenAI takes any int64 seed; numpy's generators take non-negative ones: the same bits.
        seed = None if req.seed is None else req.seed % 2**64
        wanted = dict(temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k or 0, 0), seed=seed,
                      max_tokens=max_tokens, stop=stops, repetition_penalty=req.repetition_penalty,
                      stop_token_ids=self._stop_token_ids(req),
                      n=req.n, min_p=req.min_p, presence_penalty=req.presence_penalty,
                      frequency_penalty=req.frequency_penalty, logprobs=logprobs, ignore_eos=req.ignore_eos,
                      prompt_logprobs=prompt_logprobs, structured=request_constraint(req.constraint_fields()))
        return make_sampling_params(wanted)

    def _stop_token_ids(self, req: P._SamplingRequest) -> tuple[int, ...] | None:
        """vLLM's meaning: stop_token_ids stop *as well as* eos (unless ignore_eos); the runtime's
        stop_token_ids replace eos, so eos is added here."""
        if not req.stop_token_ids:
            return None
        eos = () if req.ignore_eos else tuple(t for t in self.model.eos_token_ids if t not in req.stop_token_ids)
        return tuple(req.stop_token_ids) + eos

    def _stop_reason(self, c) -> int | str | None:
        """As vLLM reports it: the stop string or stop token id, None for eos."""
        if isinstance(c.stop_reason, int) and c.stop_reason in self.model.eos_token_ids:
            return None
        return c.stop_reason

    async def _start(self, rid: str, prompts: list[_Prompt], params: list[SamplingParams],
                     param: str | None = None) -> list[RequestStream]:
        """Hand every prompt to the engine; all are taken or none (bad input: 400 here, before a
        stream's 200 and headers go out)."""
        arrival, streams = time.monotonic(), []
        try:
            for i, (p, sp) in enumerate(zip(prompts, params)):
                streams.append(await self.engine.add(f"{rid}-{i}" if len(prompts) > 1 else rid, p.ids, sp, arrival))
        except BaseException as e:
            for s in streams:
                await s.aclose()
            if isinstance(e, SamplingError) and params[len(streams)].structured is not None:
                # llguidance refused the schema / regex / grammar: say so, naming the constraint
                raise APIError(400, f"{param}: {e}" if param else str(e), param=param) from None
            if isinstance(e, ValueError) and not isinstance(e, LlmircError):  # the engine's input checks
                raise APIError(400, f"the engine refused the request: {e}") from None
            raise
        return streams

    async def _collect(self, rid: str, prompts: list[_Prompt], params: list[SamplingParams],
                       param: str | None = None) -> list[Any]:
        finals: list[Any] = [None] * len(prompts)
        async with aclosing(merge(await self._start(rid, prompts, params, param))) as events:
            async for i, out in events:
                finals[i] = out
        return finals


# Texts longer than this are tokenized (and templates rendered) in a worker thread: a 4 MiB
# prompt takes the tokenizer most of a second, which would stall every other stream.
OFF_LOOP_CHARS = 16_384


async def off_loop(fn, *args, size: int):
    """fn(*args), in a worker thread when the input is large, else right here (cheaper)."""
    if size > OFF_LOOP_CHARS:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _chars(messages: list[P.ChatMessage]) -> int:
    return sum(len(m.content) if isinstance(m.content, str) else sum(len(t.text or "") for t in m.content or [])
               for m in messages)


def request_constraint(fields: dict[str, Any]) -> Constraint | None:
    """The structured-output constraint the request's fields ask for (None: free text); a
    malformed field, or two constraints in one request, is a 400 naming the field."""
    try:
        found = constraint_from_fields(fields)
    except ConstraintFieldError as e:
        raise APIError(400, str(e), param=e.param) from None
    return found[0] if found is not None else None


def constraint_param(fields: dict[str, Any]) -> str | None:
    """The field that gave the request's constraint (an engine-side refusal names it)."""
    try:
        found = constraint_from_fields(fields)
    except ConstraintFieldError:
        return None
    return found[1] if found is not None else None


def make_sampling_params(kwargs: dict[str, Any]) -> SamplingParams:
    """SamplingParams from the request's values; its own range checks become 400s."""
    try:
        return SamplingParams(**kwargs)
    except LlmircError as e:  # SamplingError: a value out of range
        raise APIError(400, str(e)) from None


def _message_dict(m: P.ChatMessage, i: int) -> dict[str, Any]:
    content = m.content
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise APIError(400, f"messages.{i}.content: only text parts are supported, got {part.type!r}",
                               param=f"messages.{i}.content")
            parts.append(part.text)
        content = "".join(parts)
    return {**(m.model_extra or {}), "role": m.role, "content": content if content is not None else ""}


def _ranked(top: dict[int, float]) -> list[tuple[int, float]]:
    return sorted(top.items(), key=lambda kv: (-kv[1], kv[0]))


def _finite(v: float | None) -> float | None:
    """JSON has no -inf: a zero-probability token's logprob is reported as -9999.0, as vLLM does."""
    if v is None:
        return None
    return max(float(v), -9999.0)


def _usage(prompts: list[_Prompt], outs: list[Any]) -> P.Usage:
    return _usage_counts(sum(len(p.ids) for p in prompts),
                         sum(len(c.token_ids) for o in outs for c in o.outputs))


def _usage_counts(prompt_tokens: int, completion_tokens: int) -> P.Usage:
    return P.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


def _data(chunk) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def _sse(events: AsyncIterator[str], streams: list[RequestStream]) -> Response:
    """A streaming response of SSE events, then `data: [DONE]`. An error during the stream, after
    the 200 went out, is sent as a `data: {"error": ...}` event, then [DONE], as vLLM does."""

    async def body() -> AsyncIterator[str]:
        async with aclosing(events):
            try:
                async for event in events:
                    yield event
            except Exception as e:
                yield f"data: {json.dumps(_as_api_error(e).body())}\n\n"
        yield "data: [DONE]\n\n"

    return _EventStream(streams, body(), media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _EventStream(StreamingResponse):
    """A StreamingResponse that aborts its requests however it ends: starlette cancels the
    body when the client disconnects, and if that happens before the body started, the
    body's own cleanup never runs."""

    def __init__(self, streams: list[RequestStream], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.streams = streams

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for s in self.streams:
                s.close()


def _as_api_error(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, LlmircError):
        return _from_llmirc_error(e)
    return APIError(500, f"internal error: {type(e).__name__}: {e}", "internal_server_error")


async def _unless_disconnected(request: Request, coro):
    """Await `coro`, cancelling it when the client goes away first (its requests are then
    aborted and their pages freed); a gone client gets no answer."""
    task = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task in done:
        try:
            return task.result()
        except Exception as e:
            raise _as_api_error(e) from None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise APIError(499, "the client closed the connection", "client_closed_request")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
