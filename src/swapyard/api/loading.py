"""Live loading status for a streaming chat request whose model is not ready yet.

The SSE response starts at once. Until the engine is ready, a status chunk goes
out at least once a second (which model, seconds elapsed of its start timeout,
queue position when waiting); then "ready after N.N s"; then the engine's own
stream, piped through in the same response. By default the status travels in
``delta.reasoning_content`` so the answer text stays clean; ``server.loading_status:
content`` puts it in ``delta.content`` as hand-written routers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from aiohttp import web

from swapyard.api.state import AppState
from swapyard.errors import SwapyardError, UpstreamError
from swapyard.process.state import EngineState
from swapyard.proxy import SSE_HEADERS, is_sse, open_upstream, sse_error, stream_body
from swapyard.quirks import StreamFix
from swapyard.router import Lease
from swapyard.usage.meter import Metering

STATUS_EVERY = 1.0


def status_chunk(chunk_id: str, model: str, text: str, field: str, first: bool) -> bytes:
    delta: dict[str, str] = {"role": "assistant"} if first else {}
    delta[field] = text if field == "reasoning_content" else text + "\n"
    doc = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"


def status_text(state: AppState, model: str, request_id: int, waited: float) -> str:
    """One line saying what this request waits for right now."""
    router = state.router
    engine = router.engines[model]
    pos = router.position(request_id)
    others = [(m, e.state) for m, e in router.engines.items() if m != model]
    stopping = [m for m, st in others if st is EngineState.STOPPING]
    busy = [(m, router.scheduler.inflight(m)) for m, st in others if st is EngineState.READY]
    if engine.state is EngineState.STARTING and engine.started_at is not None:
        elapsed = time.monotonic() - engine.started_at
        verb = "Waking" if engine.waking else "Loading"
        text = f"{verb} model {model}: {elapsed:.1f} s of {engine.spec.start_timeout:g} s"
        if engine.progress is not None:
            fraction, what = engine.progress
            text += f" ({what}" + (f", {fraction:.0%})" if fraction is not None else ")")
    elif stopping:
        text = f"Unloading model {stopping[0]} to load {model}: {waited:.1f} s"
    elif any(n for _, n in busy):
        m, n = next((m, n) for m, n in busy if n)
        text = (
            f"Waiting for model {m} to finish {n} request{'s' if n != 1 else ''} "
            f"before loading {model}: {waited:.1f} s"
        )
    else:
        text = f"Waiting to load model {model}: {waited:.1f} s"
    if pos is not None and pos > 1:
        text += f", queue position {pos}"
    return text


async def stream_with_loading_status(
    request: web.Request,
    state: AppState,
    model: str,
    body: bytes,
    fix: StreamFix | None = None,
    metering: Metering | None = None,
) -> web.StreamResponse:
    router = state.router
    field = "reasoning_content" if state.config.server.loading_status == "reasoning" else "content"
    rid = router.new_request_id()
    chunk_id = f"swapyard-status-{rid}"
    t0 = time.monotonic()
    acquiring = asyncio.ensure_future(router.acquire(model, rid))
    lease: Lease | None = None
    out = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await out.prepare(request)
        first = True
        while not acquiring.done():
            text = status_text(state, model, rid, time.monotonic() - t0)
            await out.write(status_chunk(chunk_id, model, text, field, first))
            first = False
            await asyncio.wait({acquiring}, timeout=STATUS_EVERY)
        try:
            lease = acquiring.result()
        except SwapyardError as err:
            await out.write(sse_error(err))
            await out.write_eof()
            return out
        if metering is not None:
            metering.base.request_id, metering.base.wait_s = lease.request_id, lease.waited
        ready = f"Model {model} ready after {time.monotonic() - t0:.1f} s"
        await out.write(status_chunk(chunk_id, model, ready, field, first))
        try:
            resp = await open_upstream(
                state.http, model, request.method, lease.upstream + request.path_qs,
                request.headers, body, state.config.models[model].upstream_headers,
            )  # fmt: skip
        except SwapyardError as err:
            await out.write(sse_error(err))
            await out.write_eof()
            return out
        if metering is not None:
            metering.base.status = resp.status
        try:
            if resp.status == 200 and is_sse(resp):
                await stream_body(out, resp, model, sse=True, fix=fix, metering=metering)
            else:
                await out.write(_upstream_error_event(model, resp.status, await resp.read()))
        finally:
            resp.close()
        await out.write_eof()
        return out
    finally:
        if lease is not None:
            router.release(lease)
        elif not acquiring.done():
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError, SwapyardError):
                await acquiring


def _upstream_error_event(model: str, status: int, body: bytes) -> bytes:
    """The engine answered an error after our stream had begun: pass its error on as
    an SSE event (its own envelope if it sent one)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "error" in doc:
        return b"data: " + json.dumps(doc).encode() + b"\n\n"
    text = body.decode("utf-8", "replace")[:500]
    return sse_error(UpstreamError(model, f"the engine answered HTTP {status}: {text}"))
