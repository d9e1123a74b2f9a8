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

from swapyard.errors import SwapyardError, UpstreamDied, UpstreamUnavailable
from swapyard.quirks import StreamFix
from swapyard.usage.meter import DONE, Metering, add_footer, footer_chunk

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

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


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


def sse_error(err: SwapyardError) -> bytes:
    """An SSE event carrying an OpenAI error envelope."""
    return b"data: " + json.dumps(err.to_openai()).encode() + b"\n\n"


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


async def pipe_response(
    request: web.Request,
    resp: aiohttp.ClientResponse,
    model: str,
    fix: StreamFix | None = None,
    metering: Metering | None = None,
) -> web.StreamResponse:
    """Send the engine's answer to the client: status, headers and body as they come
    (a non-streaming answer also gets the request's figures as headers)."""
    if metering is not None:
        metering.base.status = resp.status
    try:
        if not is_streaming(resp):
            try:
                body = await resp.read()
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamDied(model, f"the engine of {model!r} dropped the response") from exc
            headers = response_headers(resp.headers)
            if metering is not None:
                metering.meter.body(body)
                rec = metering.final()
                headers.update(rec.headers())
                if metering.footer and resp.status == 200:
                    body = add_footer(body, rec.footer()) or body
            out = web.Response(status=resp.status, headers=headers, body=body)
            resp.release()
            return out
        sresp = web.StreamResponse(status=resp.status, headers=response_headers(resp.headers))
        await sresp.prepare(request)
        await stream_body(sresp, resp, model, sse=is_sse(resp), fix=fix, metering=metering)
        await sresp.write_eof()
        return sresp
    finally:
        resp.close()


def is_sse(resp: aiohttp.ClientResponse) -> bool:
    return resp.headers.get("Content-Type", "").startswith("text/event-stream")


async def stream_body(
    out: web.StreamResponse,
    resp: aiohttp.ClientResponse,
    model: str,
    *,
    sse: bool,
    fix: StreamFix | None = None,
    metering: Metering | None = None,
) -> None:
    """Copy the body chunk by chunk as it arrives (through ``fix`` when the engine's
    SSE stream needs one, past the meter when there is one). With the footer on,
    one extra delta goes out just before ``data: [DONE]`` (or at the end). If the
    engine dies mid-way, an SSE stream ends with an error event (never a hang);
    other bodies just end."""
    fixing = fix is not None and fix.active and sse
    meter = metering.meter if metering is not None else None
    footer = metering is not None and metering.footer and sse and resp.status == 200
    try:
        async for chunk in resp.content.iter_any():
            if fixing:
                assert fix is not None
                chunk = fix.feed(chunk)
                if not chunk:
                    continue
            if meter is not None:
                meter.feed(chunk)
            if footer and (at := chunk.find(DONE)) >= 0:
                assert metering is not None
                await out.write(chunk[:at] + _footer(metering, model) + chunk[at:])
                footer = False
                continue
            await out.write(chunk)
        if fixing:
            assert fix is not None
            if rest := fix.flush():
                if meter is not None:
                    meter.feed(rest)
                await out.write(rest)
        if footer:
            assert metering is not None
            await out.write(_footer(metering, model))
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        if sse:
            err = UpstreamDied(
                model, f"the engine of {model!r} stopped in the middle of the answer"
            )
            await out.write(sse_error(err))


def _footer(metering: Metering, model: str) -> bytes:
    return footer_chunk(model, metering.final().footer())


def error_response(err: SwapyardError, headers: Mapping[str, Any] | None = None) -> web.Response:
    return web.json_response(err.to_openai(), status=err.status, headers=headers)
