"""AsyncEngine: the LLMEngine steps in its own thread; asyncio handlers await its outputs.

A device call (engine.step) takes milliseconds to seconds; run on the event loop it would
stall every other connection, health checks included. So exactly one thread, started here,
owns the engine and is the only one that calls it (the engine is not thread-safe). Handlers
talk to it through a command queue (add, abort) and get outputs back on a per-request
asyncio.Queue, fed with loop.call_soon_threadsafe. When there is no work the thread sleeps
on the command queue, so an idle server uses no CPU.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from llmirc.errors import LlmircError

from .metrics import ServerMetrics


class EngineDeadError(LlmircError):
    """The engine thread failed (a device error); the server cannot generate any more."""


@dataclass
class _Stream:
    """What the engine thread keeps per request: where its outputs go, and timings."""

    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue
    arrival: float
    last: float | None = None
    num_tokens: int = 0


@dataclass
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: Any
    stream: _Stream
    accepted: asyncio.Future


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    """Run `fn(engine)` in the engine thread between steps (the engine is not thread-safe)."""

    fn: Any
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future


_STOP = object()


class RequestStream:
    """The outputs of one accepted request, as an async iterator that ends after the finished
    output. aclose() before that (a client that went away) aborts the request; unlike an
    async generator, it does so even if iteration never started."""

    def __init__(self, engine: AsyncEngine, request_id: str, stream: _Stream) -> None:
        self.engine, self.request_id, self._stream = engine, request_id, stream
        self.finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self):
        if self.finished:
            raise StopAsyncIteration
        try:
            out = await self._stream.outputs.get()
        except BaseException:  # cancelled: the client is gone
            await self.aclose()
            raise
        if isinstance(out, BaseException):
            self.finished = True  # the engine already dropped it
            raise out
        self.finished = bool(out.finished)
        return out

    def close(self) -> None:
        """Abort unless finished (thread- and cancel-safe: it only queues a command)."""
        if not self.finished:
            self.finished = True
            self.engine.abort(self.request_id)

    async def aclose(self) -> None:
        self.close()


@dataclass
class AsyncEngine:
    engine: Any  # LLMEngine's contract: add_request, abort, step, has_unfinished_requests, stats
    metrics: ServerMetrics | None = None
    idle_poll_s: float = 0.5
    _commands: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, init=False)
    _streams: dict[str, _Stream] = field(default_factory=dict, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _error: BaseException | None = field(default=None, init=False)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmirc-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current step, abort what is left, end the thread."""
        if self._thread is not None:
            self._commands.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    async def add(self, request_id: str, prompt_token_ids: list[int], params: Any,
                  arrival: float | None = None) -> RequestStream:
        """Hand the request to the engine and wait until it took it: the engine's LlmircError
        for bad input is raised here, before anything was sent to the client. Iterate the
        returned stream for its RequestOutputs; closing it early aborts the request."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue(), arrival if arrival is not None else time.monotonic())
        accepted = loop.create_future()
        self._commands.put(_Add(request_id, list(prompt_token_ids), params, stream, accepted))
        try:
            await accepted
        except BaseException:  # refused (nothing to abort), or cancelled while waiting
            self.abort(request_id)
            raise
        return RequestStream(self, request_id, stream)

    async def call(self, fn) -> Any:
        """`fn(engine)` run by the engine thread between two steps (e.g. reset_prefix_cache):
        its result, or its exception raised here."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._commands.put(_Call(fn, loop, done))
        return await done

    def abort(self, request_id: str) -> None:
        """Thread-safe; the engine thread aborts before its next step. Unknown ids: no-op."""
        self._commands.put(_Abort(request_id))

    def _check_alive(self) -> None:
        if self._error is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self._error}; restart the server")
        if self._thread is None:
            raise EngineDeadError("the engine is not running")

    # ---- the engine thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                busy = self.engine.has_unfinished_requests()
                if not self._drain(block=not busy):
                    break
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step()
                    self._dispatch(outputs)
                    self._update_metrics()
        except BaseException as e:  # noqa: BLE001 - any failure ends every request with an error
            self._error = e
            for rid, s in list(self._streams.items()):
                _send(s, EngineDeadError(f"the engine failed: {e}"))
            self._streams.clear()
            self._fail_pending(e)
            return
        for rid in list(self._streams):  # stopped: abort what is left
            self.engine.abort(rid)
            _send(self._streams.pop(rid), EngineDeadError("the server is shutting down"))
        self._fail_pending(EngineDeadError("the server is shutting down"))

    def _drain(self, block: bool) -> bool:
        """Apply queued commands (waiting for one when idle); False once told to stop."""
        while True:
            try:
                cmd = self._commands.get(timeout=self.idle_poll_s) if block else self._commands.get_nowait()
            except queue.Empty:
                return True
            block = False
            if cmd is _STOP:
                return False
            self._apply(cmd)

    def _apply(self, cmd) -> None:
        if isinstance(cmd, _Add):
            try:
                self.engine.add_request(cmd.request_id, cmd.prompt_token_ids, cmd.params)
            except Exception as e:  # LlmircError: bad input, the caller turns it into a 400
                _resolve(cmd.stream.loop, cmd.accepted, error=e)
                return
            self._streams[cmd.request_id] = cmd.stream
            _resolve(cmd.stream.loop, cmd.accepted, None)
            self._update_metrics()
        elif isinstance(cmd, _Call):
            try:
                result = cmd.fn(self.engine)
            except Exception as e:  # handed to the caller, the engine goes on
                _resolve(cmd.loop, cmd.done, error=e)
                return
            _resolve(cmd.loop, cmd.done, result)
            self._update_metrics()
        elif isinstance(cmd, _Abort):
            self.engine.abort(cmd.request_id)
            if self._streams.pop(cmd.request_id, None) is not None and self.metrics is not None:
                self.metrics.finished.labels("abort").inc()
            self._update_metrics()

    def _dispatch(self, outputs) -> None:
        """Hand a step's outputs over: one wake-up of each event loop per step, not one per
        request (each call_soon_threadsafe writes to the loop's wake-up pipe)."""
        now = time.monotonic()
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            s = self._streams.get(out.request_id)
            if s is None:  # aborted while this step ran
                continue
            self._observe(s, out, now)
            if out.finished:
                del self._streams[out.request_id]
            by_loop.setdefault(s.loop, []).append((s.outputs, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                pass

    def _observe(self, s: _Stream, out, now: float) -> None:
        new = sum(len(c.new_token_ids) for c in out.outputs)
        if self.metrics is not None and new:
            if s.last is None:
                self.metrics.ttft.observe(now - s.arrival)
            else:
                self.metrics.itl.observe(now - s.last)
            s.last = now
        s.num_tokens += new
        if self.metrics is not None and out.finished:
            self.metrics.e2e.observe(now - s.arrival)
            for c in out.outputs:
                self.metrics.finished.labels(c.finish_reason or "abort").inc()

    def _update_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.update(self.engine.stats)

    def _fail_pending(self, error: BaseException) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(cmd, _Add):
                _resolve(cmd.stream.loop, cmd.accepted, error=EngineDeadError(str(error)))
            elif isinstance(cmd, _Call):
                _resolve(cmd.loop, cmd.done, error=EngineDeadError(str(error)))


def _deliver(items: list) -> None:
    for q, out in items:
        q.put_nowait(out)


def _send(s: _Stream, item) -> None:
    try:
        s.loop.call_soon_threadsafe(s.outputs.put_nowait, item)
    except RuntimeError:  # the loop is closed: nobody is listening any more
        pass


def _resolve(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result=None, error: BaseException | None = None):
    def set_it():
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(result)
    try:
        loop.call_soon_threadsafe(set_it)
    except RuntimeError:
        pass


async def merge(gens: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """(index, item) from several async iterators as items arrive; closing the merge (or an
    error in one) closes every iterator, so each one's cleanup (abort) runs. One iterator (the
    usual request) is passed through without the extra task and queue hop per item."""
    if len(gens) == 1:
        async with aclosing(gens[0]) as only:
            async for item in only:
                yield 0, item
        return
    out: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, g: AsyncIterator[Any]) -> None:
        try:
            async with aclosing(g):
                async for item in g:
                    await out.put((i, item))
            await out.put((i, done))
        except Exception as e:  # handed to the consumer
            await out.put((i, e))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await out.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
