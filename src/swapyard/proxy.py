"""The data path: forward a request to an engine and pipe its answer back, bytes as-is.

Nothing here parses or re-serialises a response body (house style 6). The client
session keeps bodies compressed as the engine sent them (``auto_decompress`` off)
and has no total timeout, so long generations are never cut; connecting has its
own timeout. When the client goes away the handler is cancelled, and the upstream
connection is closed, not returned to the pool, so the engine stops generating.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from swapyard import sse
from swapyard.errors import SwapyardError, UpstreamDied, UpstreamError, UpstreamUnavailable
from swapyard.surface import Lease
from swapyard.usage.meter import (
    COMPLETIONS,
    FooterSlot,
    Metering,
    add_footer,
    footer_chunk,
    footer_text,
    record_headers,
)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The client's own key never reaches an engine (an engine's key is added per model).
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "authorization", "x-api-key"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
CONNECT_TIMEOUT = 10.0


def new_upstream_session() -> aiohttp.ClientSession:
    """The one client session for all engine traffic."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
        connector=aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=False),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
    )


def request_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _REQUEST_DROP)


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _RESPONSE_DROP)


def is_streaming(resp: aiohttp.ClientResponse) -> bool:
    ctype = resp.headers.get("Content-Type", "")
    return ctype.startswith("text/event-stream") or "Content-Length" not in resp.headers


async def open_upstream(
    session: aiohttp.ClientSession,
    model: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    extra_headers: Mapping[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """Send the request; the caller owns the response (``close`` it on abort).

    A pooled connection the engine closed without saying so fails before any
    response arrives (llama-server closes every connection after a streamed
    answer while announcing keep-alive). That failure is retried once on a new
    connection; a refused connection is not retried: the engine is down.
    """
    fwd = request_headers(headers)
    if extra_headers:  # the engine's own credentials
        fwd.update(extra_headers)
    for attempt in (1, 2):
        try:
            return await session.request(method, url, data=body, headers=fwd, allow_redirects=False)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(
                model, f"cannot reach the engine of {model!r}: {exc}"
            ) from exc
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            if attempt == 1:
                continue
            raise UpstreamUnavailable(
                model, f"the engine of {model!r} closed the connection: {exc}"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                model, f"cannot reach the engine of {model!r}: {exc}"
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def forward(
    http: aiohttp.ClientSession,
    request: web.Request,
    lease: Lease,
    body: bytes,
    metering: Metering,
    *,
    extra_headers: Mapping[str, str] | None = None,
    into: web.StreamResponse | None = None,
) -> web.StreamResponse:
    """The one proxy path: send ``request`` (with ``body``) to the leased engine
    and its answer to the client.

    Without ``into``, the client gets the engine's own answer: status, headers
    and body as they come (a non-streaming answer also gets the request's figures
    as headers); a failure to reach the engine raises. With ``into`` — an SSE
    response already begun (the loading status) — the engine's stream continues
    it, and anything else (unreachable, an error status) ends it as an error event.
    """
    model = lease.model
    try:
        resp = await open_upstream(
            http, model, request.method, lease.upstream + request.path_qs,
            request.headers, body, extra_headers,
        )  # fmt: skip
    except SwapyardError as err:
        if into is None:
            raise
        metering.failed(err)
        await into.write(sse.error_event(err))
        await into.write_eof()
        return into
    metering.answered(resp.status)
    try:
        if into is None:
            return await _pipe(request, resp, model, metering)
        if resp.status == 200 and is_sse(resp):
            await stream_body(into, resp, model, events=True, metering=metering)
        else:
            await into.write(_upstream_error_event(model, resp.status, await resp.read()))
        await into.write_eof()
        return into
    finally:
        resp.close()


async def _pipe(
    request: web.Request, resp: aiohttp.ClientResponse, model: str, metering: Metering
) -> web.StreamResponse:
    if not is_streaming(resp):
        try:
            body = await resp.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamDied(model, f"the engine of {model!r} dropped the response") from exc
        headers = response_headers(resp.headers)
        metering.meter.body(body)
        rec = metering.final()
        headers.update(record_headers(rec))
        if metering.footer and resp.status == 200:
            body = add_footer(body, footer_text(rec)) or body
        out = web.Response(status=resp.status, headers=headers, body=body)
        resp.release()
        return out
    sresp = web.StreamResponse(status=resp.status, headers=response_headers(resp.headers))
    await sresp.prepare(request)
    await stream_body(sresp, resp, model, events=is_sse(resp), metering=metering)
    await sresp.write_eof()
    return sresp


def _upstream_error_event(model: str, status: int, body: bytes) -> bytes:
    """The engine answered an error after our stream had begun: pass its error on as
    an SSE event (its own envelope if it sent one)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "error" in doc:
        return sse.frame(doc)
    text = body.decode("utf-8", "replace")[:500]
    return sse.error_event(UpstreamError(model, f"the engine answered HTTP {status}: {text}"))


def is_sse(resp: aiohttp.ClientResponse) -> bool:
    return resp.headers.get("Content-Type", "").startswith("text/event-stream")


async def stream_body(
    out: web.StreamResponse,
    resp: aiohttp.ClientResponse,
    model: str,
    *,
    events: bool,
    metering: Metering,
) -> None:
    """Copy the body chunk by chunk as it arrives (through ``fix`` when the engine's
    SSE stream needs one, past the meter when there is one). With the footer on,
    one extra chunk goes out just before the one carrying ``finish_reason``
    (``FooterSlot``). If the engine dies mid-way, an SSE stream ends with an error
    event (never a hang); other bodies just end."""
    fix = metering.fix if events and metering.fix is not None and metering.fix.active else None
    meter = metering.meter
    footer = None
    if metering.footer and events and resp.status == 200:
        footer = FooterSlot(lambda: _footer(metering, model))
    try:
        async for chunk in resp.content.iter_any():
            if fix is not None:
                chunk = fix.feed(chunk)
                if not chunk:
                    continue
            meter.feed(chunk)
            if footer is not None and not (chunk := footer.feed(chunk)):
                continue
            await out.write(chunk)
        if fix is not None and (rest := fix.flush()):
            meter.feed(rest)
            await out.write(rest if footer is None else footer.feed(rest))
        if footer is not None and (rest := footer.flush()):
            await out.write(rest)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        if events:
            err = UpstreamDied(
                model, f"the engine of {model!r} stopped in the middle of the answer"
            )
            await out.write(sse.error_event(err))


def _footer(metering: Metering, model: str) -> bytes:
    chat = metering.ticket.path != COMPLETIONS
    return footer_chunk(model, footer_text(metering.so_far()), chat=chat)


def error_response(err: SwapyardError, headers: Mapping[str, Any] | None = None) -> web.Response:
    return web.json_response(err.to_openai(), status=err.status, headers=headers)
