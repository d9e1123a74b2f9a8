"""The data path: forward a request to an engine and pipe its answer back, bytes as-is.

Nothing here parses or re-serialises a response body (house style 6). The client
session keeps bodies compressed as the engine sent them (``auto_decompress`` off)
and has no total timeout, so long generations are never cut; connecting has its
own timeout. When the client goes away the handler is cancelled, and the upstream
connection is closed, not returned to the pool, so the engine stops generating.

An engine that goes silent is given up on per phase (issue 11): no response head
within ``response_timeout``, no body byte within ``first_byte_timeout`` of it, or
no chunk for ``idle_timeout`` (``swapyard.watch``). Then, as when the engine dies
or an OpenAI completion stream ends without ``data: [DONE]``, a stream that has
begun ends with an error event and one that has not gets the error as its
answer; the upstream connection is closed. Shutdown ends the requests still
running at the end of its drain the same way, with ``shutting_down``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from swapyard import sse
from swapyard.config import Timeouts
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
from swapyard.watch import Watch, Watches

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
# OpenAI's completion streams end with `data: [DONE]`; one that ends without it was
# cut. Other streams end their own way (Anthropic's /v1/messages with `event:
# message_stop`, the Responses API with `response.completed`): not judged by it.
DONE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
_DONE = b"[DONE]"
_TAIL = 32  # bytes of a stream kept to find `[DONE]` at its end


class StreamTranslator(Protocol):
    """Rewrites one streamed answer (the engine's SSE bytes, after swapyard's own
    fixes) into the front's stream. Owns its own framing: bytes may end mid-event."""

    def feed(self, chunk: bytes) -> bytes:
        """What the client gets for these engine bytes (may be empty)."""
        ...

    def end(self) -> bytes:
        """The stream ended well: whatever closes the front's stream."""
        ...

    def error(self, err: SwapyardError) -> bytes:
        """The stream broke (engine died, went silent, shutdown): its last words."""
        ...


class Translation(Protocol):
    """How a front turns the engine's answer into its own."""

    content_type: str  # of a translated stream

    def answer(self, status: int, body: bytes) -> web.Response:
        """The whole answer (or the engine's error) rewritten; figures headers are
        added by the caller."""
        ...

    def stream(self) -> StreamTranslator: ...


class HeadCheck(Protocol):
    """Issue 15: a caller's look at an upstream answer's head before any of it
    reaches the client (a peer's answer to a try that a fallback follows)."""

    def refuses(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether this answer must not reach the client: its body is read and
        ``error`` raised instead."""
        ...

    def error(self, status: int, body: bytes) -> SwapyardError: ...


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
    timeouts: Timeouts,
    watches: Watches,
    extra_headers: Mapping[str, str] | None = None,
    into: web.StreamResponse | None = None,
    path: str | None = None,
    translation: Translation | None = None,
    fail_5xx: bool = False,
    head: HeadCheck | None = None,
) -> web.StreamResponse:
    """The one proxy path: send ``request`` (with ``body``) to the leased engine
    and its answer to the client, under ``timeouts`` (registered in ``watches``
    while it runs, so shutdown can end it).

    Without ``into``, the client gets the engine's own answer: status, headers
    and body as they come (a non-streaming answer also gets the request's figures
    as headers); a failure before the answer began (unreachable, a timeout)
    raises. With ``into`` — an SSE response already begun (the loading status) —
    the engine's stream continues it, and anything else (unreachable, an error
    status, a timeout) ends it as an error event.

    ``path`` (with its query) is where the engine gets it, the request's own by
    default. With ``translation`` the answer is rewritten by it, whole or piece by
    piece, and a broken stream ends with the translation's own error.

    ``fail_5xx`` (issue 15: a fallback may serve the request instead): an engine
    answer with a status of 500 or more, streamed or not, raises ``UpstreamError``
    (with the engine's message) before anything goes to the client, instead of
    being passed on. Not with ``into``: that answer has begun. ``head`` sees the
    answer's head first and may refuse it the same way, with its own error.
    """
    model = lease.model
    watch = Watch(model, timeouts)
    watches.add(watch)
    try:
        try:
            async with watch:
                resp = await open_upstream(
                    http, model, request.method, lease.upstream + (path or request.path_qs),
                    request.headers if translation is None else _plain(request.headers),
                    body, extra_headers,
                )  # fmt: skip
        except SwapyardError as err:
            if into is None:
                raise
            metering.failed(err)
            await into.write(sse.error_event(err))
            await into.write_eof()
            return into
        watch.head()
        metering.answered(resp.status)
        try:
            if fail_5xx and into is None and resp.status >= 500:
                raise await _server_error(resp, model, watch)
            if head is not None and into is None and head.refuses(resp.status, resp.headers):
                raise await _server_error(resp, model, watch, head)
            route = (path or request.path).split("?", 1)[0]
            if into is None:
                return await _pipe(request, resp, model, metering, watch, route, translation)
            if resp.status == 200 and is_sse(resp):
                done = route in DONE_ROUTES
                await stream_body(into, resp, model, events=True, metering=metering,
                                  watch=watch, done=done)  # fmt: skip
            else:
                await into.write(await _error_as_event(resp, model, metering, watch))
            await into.write_eof()
            return into
        finally:
            resp.close()
    finally:
        watch.close()
        watches.discard(watch)


async def _pipe(
    request: web.Request,
    resp: aiohttp.ClientResponse,
    model: str,
    metering: Metering,
    watch: Watch,
    route: str,
    translation: Translation | None,
) -> web.StreamResponse:
    if not is_streaming(resp) or (translation is not None and not is_sse(resp)):
        try:
            async with watch:
                body = await _read(resp, watch)
        except (aiohttp.ClientError, OSError) as exc:
            raise _died(model) from exc
        if (
            translation is not None
            and resp.headers.get("Content-Encoding", "identity") != "identity"
        ):
            raise UpstreamError(model, "the engine compressed an answer swapyard must translate")
        metering.meter.body(body)
        rec = metering.final()
        if translation is not None:
            out = translation.answer(resp.status, body)
            out.headers.update(record_headers(rec))
        else:
            headers = response_headers(resp.headers)
            headers.update(record_headers(rec))
            if metering.footer and resp.status == 200:
                body = add_footer(body, footer_text(rec)) or body
            out = web.Response(status=resp.status, headers=headers, body=body)
        resp.release()
        # Sent now rather than after the handler returns: the lease's release and
        # the record's event (the handler's ``finally``) come after the client has
        # its answer, as they do for a stream.
        with contextlib.suppress(ConnectionError):  # as aiohttp's finish_response
            await out.prepare(request)
            await out.write_eof()
        return out
    events = is_sse(resp)
    done = events and resp.status == 200 and route in DONE_ROUTES
    if translation is not None:
        sresp = web.StreamResponse(status=resp.status)
        sresp.content_type = translation.content_type
        sresp.headers["Cache-Control"] = "no-cache"
        sresp.headers["X-Accel-Buffering"] = "no"
    else:
        sresp = web.StreamResponse(status=resp.status, headers=response_headers(resp.headers))
    await sresp.prepare(request)
    await stream_body(sresp, resp, model, events=events, metering=metering, watch=watch, done=done,
                      translator=None if translation is None else translation.stream())  # fmt: skip
    await sresp.write_eof()
    return sresp


async def _read(resp: aiohttp.ClientResponse, watch: Watch) -> bytes:
    """A whole body, chunk by chunk so that ``watch`` sees it move."""
    chunks = []
    read, now = resp.content.readany, watch.now
    while chunk := await read():
        watch.last = now()
        chunks.append(chunk)
    return b"".join(chunks)


def _plain(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers for a call swapyard translates: its body is swapyard's
    JSON whatever the client sent (``curl -d`` says form-urlencoded, which FastAPI
    engines refuse with a 422), and the answer must come uncompressed."""
    out = {k: v for k, v in headers.items() if k.lower() not in ("accept-encoding", "content-type")}
    out["Content-Type"] = "application/json"
    return out


def _died(model: str, what: str = "dropped the response") -> UpstreamDied:
    return UpstreamDied(model, f"the engine of {model!r} {what}")


async def _error_as_event(
    resp: aiohttp.ClientResponse, model: str, metering: Metering, watch: Watch
) -> bytes:
    """The engine's error answer (any status but a 200 stream), as the last event of
    a stream already begun."""
    try:
        async with watch:
            return _upstream_error_event(model, resp.status, await _read(resp, watch))
    except SwapyardError as exc:
        fail: SwapyardError = exc
    except (aiohttp.ClientError, OSError):
        fail = _died(model)
    metering.failed(fail)
    return sse.error_event(fail)


async def _server_error(
    resp: aiohttp.ClientResponse, model: str, watch: Watch, head: HeadCheck | None = None
) -> SwapyardError:
    """The engine's 5xx answer as the error that lets a fallback serve the request
    (``head``'s, when given)."""
    try:
        async with watch:
            body = await _read(resp, watch)
    except SwapyardError as exc:
        return exc
    except (aiohttp.ClientError, OSError):
        return _died(model)
    if head is not None:
        return head.error(resp.status, body)
    try:
        doc = json.loads(body)
        said = doc["error"]["message"] if isinstance(doc["error"], dict) else doc["error"]
    except (ValueError, KeyError, TypeError):
        said = body.decode("utf-8", "replace")
    return UpstreamError(model, f"the engine answered HTTP {resp.status}: {str(said)[:500]}")


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
    watch: Watch,
    done: bool = False,
    translator: StreamTranslator | None = None,
) -> None:
    """Copy the body chunk by chunk as it arrives (through ``fix`` when the engine's
    SSE stream needs one, past the meter when there is one). With the footer on,
    one extra chunk goes out just before the one carrying ``finish_reason``
    (``FooterSlot``).

    An SSE stream never just stops: if the engine dies, goes silent past
    ``watch``'s deadlines, or (``done``: an OpenAI completion stream) ends
    without ``[DONE]``, its last event is the error. Other bodies just end.
    With ``translator``, what goes out is what it makes of the bytes, and its own
    ``error`` or ``end`` closes the stream."""
    fix = metering.fix if events and metering.fix is not None and metering.fix.active else None
    meter = metering.meter
    footer = None
    if metering.footer and events and resp.status == 200:
        footer = FooterSlot(lambda: _footer(metering, model))
    read, now = resp.content.readany, watch.now
    tail = b""
    err: SwapyardError | None = None
    try:
        async with watch:
            while raw := await read():
                watch.last = now()
                tail = raw if len(raw) >= _TAIL else (tail + raw)[-_TAIL:]
                chunk = raw
                if fix is not None:
                    chunk = fix.feed(chunk)
                    if not chunk:
                        continue
                meter.feed(chunk)
                if footer is not None and not (chunk := footer.feed(chunk)):
                    continue
                if translator is not None and not (chunk := translator.feed(chunk)):
                    continue
                await out.write(chunk)
    except SwapyardError as exc:  # a deadline, or shutdown
        err = exc
    except (aiohttp.ClientError, OSError):
        if not (done and _DONE in tail):  # after [DONE] the answer is whole
            err = _died(model, "stopped in the middle of the answer")
    else:
        if done and _DONE not in tail:
            err = _died(model, "closed the stream before the end of the answer (no [DONE])")
    if err is not None:
        metering.failed(err)
        if translator is not None:
            await out.write(translator.error(err))
        elif events:
            await out.write(sse.error_event(err))
        return
    if fix is not None and (rest := fix.flush()):
        meter.feed(rest)
        rest = rest if footer is None else footer.feed(rest)
        await out.write(rest if translator is None else translator.feed(rest))
    if footer is not None and (rest := footer.flush()):
        await out.write(rest)
    if translator is not None:
        await out.write(translator.end())


def _footer(metering: Metering, model: str) -> bytes:
    chat = metering.ticket.path != COMPLETIONS
    return footer_chunk(model, footer_text(metering.so_far()), chat=chat)


def error_response(err: SwapyardError, headers: Mapping[str, Any] | None = None) -> web.Response:
    return web.json_response(err.to_openai(), status=err.status, headers=headers)
