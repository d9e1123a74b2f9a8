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
import time

from aiohttp import web

from swapyard import sse
from swapyard.api.state import AppState
from swapyard.errors import SwapyardError
from swapyard.process.state import EngineState
from swapyard.proxy import forward
from swapyard.surface import Lease, Snapshot
from swapyard.usage.meter import Metering

STATUS_EVERY = 1.0


def status_chunk(chunk_id: str, model: str, text: str, field: str, first: bool) -> bytes:
    delta: dict[str, str] = {"role": "assistant"} if first else {}
    delta[field] = text + "\n"  # one line each, in a client's "thinking" block too (issue 11)
    doc = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return sse.frame(doc)


def status_text(
    snap: Snapshot, model: str, start_timeout: float, request_id: int, waited: float
) -> str:
    """One line saying what this request waits for right now (from one snapshot)."""
    engine = snap.models[model].engine
    pos = snap.position(request_id)
    others = [m for m in snap.models.values() if m.id != model]
    stopping = [m.id for m in others if m.state is EngineState.STOPPING]
    busy = [(m.id, m.in_flight) for m in others if m.state is EngineState.READY]
    loading = (EngineState.STARTING, EngineState.WARMING, EngineState.WAKING)
    if engine.state in loading and engine.loading_since is not None:
        elapsed = time.monotonic() - engine.loading_since
        verb = "Waking" if engine.waking else "Loading"
        text = f"{verb} model {model}: {elapsed:.1f} s of {start_timeout:g} s"
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
    metering: Metering,
    client: str = "",
    path: str | None = None,
) -> web.StreamResponse:
    """Begin the SSE answer at once, say what the request waits for until its
    model is ready, then continue with the engine's own stream (``proxy.forward``)."""
    router = state.router
    field = "reasoning_content" if state.config.server.loading_status == "reasoning" else "content"
    spec = state.config.models[model]
    rid = router.new_request_id()
    chunk_id = f"swapyard-status-{rid}"
    t0 = time.monotonic()
    acquiring = asyncio.ensure_future(router.acquire(model, rid, client))
    lease: Lease | None = None
    out = web.StreamResponse(headers=sse.HEADERS)
    try:
        await out.prepare(request)
        first = True
        while not acquiring.done():
            text = status_text(router.snapshot(), model, spec.start_timeout, rid,
                               time.monotonic() - t0)  # fmt: skip
            await out.write(status_chunk(chunk_id, model, text, field, first))
            first = False
            await asyncio.wait({acquiring}, timeout=STATUS_EVERY)
        try:
            lease = acquiring.result()
        except SwapyardError as err:
            metering.failed(err)
            await out.write(sse.error_event(err))
            await out.write_eof()
            return out
        metering.admitted(lease.request_id, lease.waited)
        ready = f"Model {model} ready after {time.monotonic() - t0:.1f} s"
        await out.write(status_chunk(chunk_id, model, ready, field, first))
        return await forward(
            state.http, request, lease, body, metering, timeouts=spec.timeouts,
            watches=state.watches, extra_headers=spec.upstream_headers, into=out, path=path,
        )  # fmt: skip
    finally:
        admitted = acquiring.done() and not acquiring.cancelled()
        if lease is None and admitted and acquiring.exception() is None:
            lease = acquiring.result()  # admitted as the client went away: give it back
        if lease is not None:
            router.release(lease)
        elif not acquiring.done():
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError, SwapyardError):
                await acquiring
