"""SGLang's native protocol on the same server: /generate, /get_model_info, /server_info,
/flush_cache, /concate_and_append_request.

This is what SGLang's frontend language (`sgl.function` programs on `RuntimeEndpoint`) sends:
`gen` is one /generate, `select` is a prefill-only /generate of the shared prefix (cached)
and then one /generate of every `prefix + choice` with the prompt's logprobs, `fork` and
`run_batch` resend whole prefixes, which the prefix cache makes cheap. Shapes follow SGLang's
server (python/sglang/srt/entrypoints/http_server.py and managers/tokenizer_manager.py):

- one text (or one list of ids) with n == 1 answers one object `{"text", "output_ids",
  "meta_info"}`; a list of them, or n > 1, answers a list (prompt-major, as SGLang orders it);
- `meta_info`: `id`, `finish_reason` (`{"type": "stop", "matched": id | str | null}`,
  `{"type": "length", "length": n}`, `{"type": "abort", "message"}`, null while running),
  `prompt_tokens`, `completion_tokens`, `cached_tokens`, `e2e_latency`, and with
  `return_logprob` `input_token_logprobs` / `output_token_logprobs` as `[logprob, token_id,
  text]` (text null unless `return_text_in_logprobs`), plus `input_top_logprobs` /
  `output_top_logprobs` with `top_logprobs_num` > 0;
- `input_token_logprobs` covers prompt positions `logprob_start_len`..end (default: the last
  prompt token only) and its first entry's logprob is always null, as SGLang pads it;
- `max_new_tokens: 0` computes the prompt only (the request runs one token, which is dropped);
  a larger one is cut to the context left, as SGLang does;
- `stream: true`: SSE chunks whose `text` is the whole text so far (SGLang's frontend slices
  it), `output_ids` the ids new in the chunk, `index` in batches, then `data: [DONE]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from llmirc.errors import LlmircError
from llmirc.runtime.sampling import SamplingError, SamplingParams
from llmirc.runtime.structured import Constraint

from . import protocol as P
from .app import APIError, _finite, _Handlers, _Prompt, _sse, _unless_disconnected, make_sampling_params, off_loop
from .async_engine import RequestStream, merge

SGLANG_DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default when max_new_tokens is not given
# sampling_params SGLang has and this server does not implement: refused when set to anything
# but their default, so a program never silently gets what it did not ask for.
UNSUPPORTED = {"min_new_tokens": 0, "structural_tag": None, "custom_params": None, "logit_bias": None}


class SGLangSamplingParams(BaseModel):
    """`sampling_params` of /generate as SGLang spells them (nulls mean the default: the
    frontend sends every field)."""

    model_config = ConfigDict(extra="ignore")  # skip_special_tokens, spaces_between_special_tokens, no_stop_trim

    max_new_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)  # -1 (SGLang's default) or 0: off
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = Field(None, max_length=P.MAX_STOP_STRINGS)
    ignore_eos: bool | None = None
    n: int | None = Field(None, ge=1, le=P.MAX_N)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    sampling_seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    ebnf: str | None = None
    min_new_tokens: int | None = None
    structural_tag: Any = None
    custom_params: Any = None
    logit_bias: Any = None


class GenerateRequest(BaseModel):
    """POST /generate."""

    model_config = ConfigDict(extra="ignore")

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: SGLangSamplingParams | None = None  # one for every prompt
    return_logprob: bool | list[bool] | None = None
    logprob_start_len: int | list[int] | None = None
    top_logprobs_num: int | list[int] | None = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    rid: str | list[str] | None = None
    image_data: Any = None
    lora_path: Any = None


@dataclass
class _Item:
    """One prompt of a /generate request and what it asked for."""

    prompt: _Prompt
    params: SamplingParams
    sp: SGLangSamplingParams
    prefill_only: bool
    return_logprob: bool
    logprob_start: int  # first prompt position reported in input_token_logprobs
    top_k: int
    with_text: bool  # return_text_in_logprobs
    rid: str
    arrival: float = field(default_factory=time.monotonic)


def install_sglang_routes(app: FastAPI, handlers: _Handlers) -> None:
    """Add SGLang's native routes to the OpenAI app (same engine, same auth, same errors)."""
    model, engine = handlers.model, handlers.engine

    @app.get("/get_model_info")
    async def get_model_info(request: Request) -> JSONResponse:
        handlers.authorize(request)
        return JSONResponse({"model_path": model.root, "tokenizer_path": model.root, "is_generation": True,
                             "served_model_name": model.names[0], "preferred_sampling_params": None,
                             "weight_version": "default"})

    async def server_info(request: Request) -> JSONResponse:
        handlers.authorize(request)
        return JSONResponse(_server_info(handlers))

    app.get("/server_info")(server_info)
    app.get("/get_server_info")(server_info)

    async def flush_cache(request: Request) -> Response:
        handlers.authorize(request)
        pages = await engine.call(lambda e: e.reset_prefix_cache() if hasattr(e, "reset_prefix_cache") else 0)
        return Response(f"Cache flushed ({pages} pages).\n", media_type="text/plain")

    app.api_route("/flush_cache", methods=["GET", "POST"])(flush_cache)

    @app.post("/concate_and_append_request")
    async def concate_and_append_request(request: Request) -> JSONResponse:
        """SGLang's frontend calls this after a fork to splice KV caches; the prefix cache
        already shares the pages of the resent prefix, so there is nothing to do."""
        handlers.authorize(request)
        return JSONResponse({"success": True})

    async def generate(body: GenerateRequest, request: Request) -> Response:
        handlers.authorize(request)
        return await _generate(handlers, body, request)

    app.api_route("/generate", methods=["POST", "PUT"])(generate)


def _server_info(handlers: _Handlers) -> dict[str, Any]:
    """SGLang's server_args-like fields that mean something here (read-only config only: the
    engine's live counters belong to its thread; /metrics has them)."""
    from importlib.metadata import PackageNotFoundError, version

    eng = handlers.engine.engine
    config = getattr(eng, "config", None)
    pool = getattr(eng, "pool", None)
    try:
        ours = version("llmirc")
    except PackageNotFoundError:
        ours = "unknown"
    return {
        "model_path": handlers.model.root, "tokenizer_path": handlers.model.root,
        "served_model_name": handlers.model.names[0], "context_length": handlers.model.max_model_len,
        "max_running_requests": getattr(config, "max_num_seqs", None),
        "chunked_prefill_size": getattr(config, "max_num_batched_tokens", None),
        "disable_radix_cache": not getattr(config, "enable_prefix_caching", True),
        "page_size": getattr(pool, "page_size", None),
        "max_total_num_tokens": (pool.capacity * pool.page_size) if pool is not None else None,
        "version": ours, "backend": "llmirc", "internal_states": [{}],
    }


# ---- /generate ----------------------------------------------------------------------------

async def _generate(handlers: _Handlers, req: GenerateRequest, request: Request) -> Response:
    if req.image_data is not None or req.lora_path is not None:
        raise APIError(400, "image_data and lora_path are not supported by this server",
                       param="image_data" if req.image_data is not None else "lora_path")
    prompts, single = await _prompts(handlers, req)
    items = [_item(handlers, req, i, ids, text) for i, (ids, text) in enumerate(prompts)]
    single = single and items[0].params.n == 1
    # All items are taken by the engine or none (the 400 comes before a stream's 200).
    streams: list[RequestStream] = []
    try:
        for it in items:
            streams.append(await handlers.engine.add(it.rid, it.prompt.ids, it.params, it.arrival))
    except BaseException as e:
        for s in streams:
            await s.aclose()
        if isinstance(e, SamplingError) and items[len(streams)].params.structured is not None:
            name = _constraint_field(items[len(streams)].sp)  # llguidance refused the regex / schema / grammar
            raise APIError(400, f"sampling_params.{name}: {e}", param=f"sampling_params.{name}") from None
        if isinstance(e, ValueError) and not isinstance(e, LlmircError):  # the engine's input checks
            raise APIError(400, f"the engine refused the request: {e}") from None
        raise
    if req.stream:
        return _sse(_stream(handlers, items, streams, single), streams)
    finals = await _unless_disconnected(request, _collect(streams))
    results = [_result(handlers, it, out, c, it.rid if it.params.n == 1 else f"{it.rid}-{c.index}")
               for it, out in zip(items, finals) for c in sorted(out.outputs, key=lambda c: c.index)]
    return JSONResponse(results[0] if single else results)


async def _prompts(handlers: _Handlers, req: GenerateRequest) -> tuple[list[tuple[list[int], str | None]], bool]:
    """(ids, text) per prompt, and whether the request gave one prompt (not a list)."""
    if (req.text is None) == (req.input_ids is None):
        raise APIError(400, "give exactly one of text and input_ids", param="text")
    if req.text is not None:
        texts = [req.text] if isinstance(req.text, str) else list(req.text)
        single = isinstance(req.text, str)
        ids = [await off_loop(handlers.model.encode, t, size=len(t)) for t in texts]
        prompts = list(zip(ids, texts))
    else:
        single = not req.input_ids or isinstance(req.input_ids[0], int)
        lists = [req.input_ids] if single else list(req.input_ids)
        prompts = [(list(p), None) for p in lists]
    if not prompts:
        raise APIError(400, "text is an empty list", param="text")
    if len(prompts) > P.MAX_PROMPTS:
        raise APIError(400, f"at most {P.MAX_PROMPTS} prompts per request, got {len(prompts)}", param="text")
    if any(not ids for ids, _ in prompts):
        raise APIError(400, "a prompt has no tokens; give at least one", param="text")
    return prompts, single


def _pick(value, i: int, default):
    """SGLang's per-item fields: one value for all, or a list with one per prompt."""
    if isinstance(value, list):
        if i >= len(value):
            raise APIError(400, f"a per-prompt list has {len(value)} entries, fewer than the prompts")
        value = value[i]
    return default if value is None else value


def _item(handlers: _Handlers, req: GenerateRequest, i: int, ids: list[int], text: str | None) -> _Item:
    sp = req.sampling_params or SGLangSamplingParams()
    for name, default in UNSUPPORTED.items():
        if getattr(sp, name) not in (None, default):
            raise APIError(400, f"sampling_params.{name} is not supported by this server",
                           param=f"sampling_params.{name}")
    max_new = SGLANG_DEFAULT_MAX_NEW_TOKENS if sp.max_new_tokens is None else sp.max_new_tokens
    prefill_only = max_new == 0
    prompt = _fit(handlers, ids, max_new, text)
    return_logprob = bool(_pick(req.return_logprob, i, False))
    top_k = int(_pick(req.top_logprobs_num, i, 0))
    if not 0 <= top_k <= P.MAX_LOGPROBS:
        raise APIError(400, f"top_logprobs_num must be in 0..{P.MAX_LOGPROBS}, got {top_k}", param="top_logprobs_num")
    start = int(_pick(req.logprob_start_len, i, -1))
    if start < 0 or start >= len(ids):  # SGLang's default (-1) and its clamp: the last prompt token
        start = len(ids) - 1
    stops = [sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])
    if len(stops) > P.MAX_STOP_STRINGS or any(not s or len(s) > P.MAX_STOP_STRING_CHARS for s in stops):
        raise APIError(400, f"at most {P.MAX_STOP_STRINGS} non-empty stop strings of at most "
                            f"{P.MAX_STOP_STRING_CHARS} characters", param="sampling_params.stop")
    seed = sp.seed if sp.seed is not None else sp.sampling_seed
    ignore_eos = bool(sp.ignore_eos)
    stop_ids = None
    if sp.stop_token_ids:  # as in SGLang and vLLM: they stop as well as eos
        eos = () if ignore_eos else tuple(t for t in handlers.model.eos_token_ids if t not in sp.stop_token_ids)
        stop_ids = tuple(sp.stop_token_ids) + eos
    wanted = dict(
        temperature=1.0 if sp.temperature is None else sp.temperature,
        top_p=1.0 if sp.top_p is None else sp.top_p, top_k=max(sp.top_k or 0, 0),
        min_p=sp.min_p or 0.0, frequency_penalty=sp.frequency_penalty or 0.0,
        presence_penalty=sp.presence_penalty or 0.0,
        repetition_penalty=1.0 if sp.repetition_penalty is None else sp.repetition_penalty,
        stop=tuple(stops), stop_token_ids=stop_ids, ignore_eos=ignore_eos, n=sp.n or 1,
        seed=None if seed is None else seed % 2**64, max_tokens=prompt.max_tokens,
        logprobs=top_k if return_logprob and not prefill_only else None,
        # the engine reports every prompt position; only needed when more than the last is asked
        prompt_logprobs=top_k if return_logprob and start < len(ids) - 1 else None,
        structured=_constraint(sp))
    rid = _pick(req.rid, i, None) or uuid.uuid4().hex
    return _Item(prompt, make_sampling_params(wanted), sp, prefill_only, return_logprob, start, top_k,
                 req.return_text_in_logprobs, rid)


def _fit(handlers: _Handlers, ids: list[int], max_new: int, text: str | None) -> _Prompt:
    """SGLang's rule, not vLLM's: max_new_tokens is cut to the context left (its default of
    128 would otherwise refuse every prompt in the last 128 tokens of a small context); only
    a prompt that leaves no room is refused. Prefill only (0) runs one token, then drops it."""
    limit = handlers.model.max_model_len
    room = limit - len(ids) if max_new > 0 else limit - len(ids) + 1
    if room < 1:
        raise APIError(400, f"the input ({len(ids)} tokens) is longer than the model's context length ({limit} "
                            "tokens)" + ("" if max_new == 0 else ", with room for at least one new token"),
                       param="text", code="context_length_exceeded")
    return _Prompt(list(ids), min(max(max_new, 1), room), text)


def _constraints_given(sp: SGLangSamplingParams) -> list[tuple[str, Any, str]]:
    """(runtime kind, value, field name) of each constraint field that is set."""
    return [(kind, value, name) for kind, value, name in (("regex", sp.regex, "regex"),
                                                          ("json", sp.json_schema, "json_schema"),
                                                          ("grammar", sp.ebnf, "ebnf")) if value is not None]


def _constraint_field(sp: SGLangSamplingParams) -> str:
    given = _constraints_given(sp)
    return given[0][2] if given else "regex"


def _constraint(sp: SGLangSamplingParams) -> Constraint | None:
    given = _constraints_given(sp)
    if len(given) > 1:
        raise APIError(400, f"give at most one of sampling_params.regex, json_schema and ebnf; this request gives "
                            f"`{given[0][2]}` and `{given[1][2]}`", param=f"sampling_params.{given[1][2]}")
    if not given:
        return None
    kind, value, name = given[0]
    try:
        return Constraint(kind, value)
    except SamplingError as e:
        raise APIError(400, f"sampling_params.{name}: {e}", param=f"sampling_params.{name}") from None


async def _collect(streams: list[RequestStream]) -> list[Any]:
    finals: list[Any] = [None] * len(streams)
    async with aclosing(merge(streams)) as events:
        async for i, out in events:
            finals[i] = out
    return finals


async def _stream(handlers: _Handlers, items: list[_Item], streams: list[RequestStream], single: bool
                  ) -> AsyncIterator[str]:
    import json

    sent: dict[tuple[int, int], int] = {}
    async with aclosing(merge(streams)) as events:
        async for i, out in events:
            it = items[i]
            for c in out.outputs:
                key = (i, c.index)
                if key in sent and sent[key] < 0:  # finished already
                    continue
                if not (c.new_token_ids or c.finish_reason or key not in sent):
                    continue
                rid = it.rid if it.params.n == 1 else f"{it.rid}-{c.index}"
                chunk = _result(handlers, it, out, c, rid, new_from=sent.get(key, 0))
                sent[key] = -1 if c.finish_reason else len(c.token_ids)
                if not single:
                    chunk["index"] = i * it.params.n + c.index
                yield f"data: {json.dumps(chunk)}\n\n"


def _result(handlers: _Handlers, it: _Item, out, c, rid: str, new_from: int | None = None) -> dict[str, Any]:
    """One SGLang output object; `new_from` (streams): output_ids only from that index on."""
    tokens = [] if it.prefill_only else list(c.token_ids)
    text = "" if it.prefill_only else c.text
    meta: dict[str, Any] = {
        "id": rid, "finish_reason": _finish_reason(it, c),
        "prompt_tokens": len(it.prompt.ids), "completion_tokens": len(tokens),
        "cached_tokens": out.num_cached_tokens,
    }
    if c.finish_reason is not None:
        meta["e2e_latency"] = time.monotonic() - it.arrival
    if it.return_logprob:
        _add_logprobs(handlers, it, out, c, meta)
    ids = tokens if new_from is None else tokens[new_from:]
    return {"text": text, "output_ids": ids, "meta_info": meta}


def _finish_reason(it: _Item, c) -> dict[str, Any] | None:
    if c.finish_reason is None:
        return None
    if it.prefill_only:
        return {"type": "length", "length": 0}
    if c.finish_reason == "stop":
        return {"type": "stop", "matched": c.stop_reason}
    if c.finish_reason == "length":
        return {"type": "length", "length": len(c.token_ids)}
    return {"type": "abort", "message": "the request was aborted"}


def _add_logprobs(handlers: _Handlers, it: _Item, out, c, meta: dict[str, Any]) -> None:
    with_text = it.with_text
    ids = it.prompt.ids
    prompt_lps = out.prompt_logprobs or [None] * len(ids)
    inputs, input_tops = [], []
    for p in range(it.logprob_start, len(ids)):
        top = prompt_lps[p] if p > it.logprob_start else None  # SGLang pads the first entry with null
        inputs.append(_entry(handlers, None if top is None else top.get(ids[p]), ids[p], with_text))
        input_tops.append(None if top is None else _tops(handlers, top, it.top_k, with_text))
    outputs, output_tops = [], []
    if not it.prefill_only:
        for tok, top in zip(c.token_ids, c.logprobs or []):
            outputs.append(_entry(handlers, top.get(tok), tok, with_text))
            output_tops.append(_tops(handlers, top, it.top_k, with_text))
    meta["input_token_logprobs"], meta["output_token_logprobs"] = inputs, outputs
    if it.top_k > 0:
        meta["input_top_logprobs"], meta["output_top_logprobs"] = input_tops, output_tops


def _entry(handlers: _Handlers, logprob: float | None, token: int, with_text: bool) -> list:
    return [_finite(logprob), token, handlers.model.token_text(token) if with_text else None]


def _tops(handlers: _Handlers, top: dict[int, float], k: int, with_text: bool) -> list[list]:
    ranked = sorted(top.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [_entry(handlers, v, t, with_text) for t, v in ranked]
