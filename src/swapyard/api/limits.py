"""What one client may hold of the server: connections, and time to send a request.

aiohttp bounds a request head's size, not how long it may take: a client that
connects and sends nothing, or half a head, or half a body, held its connection
and its handler for ever (issue 11). Here:

- **Head**: aiohttp's keep-alive timer already runs from the moment a connection
  opens and closes it if no complete head has arrived when it fires, then again
  after each answer; ``server.header_timeout`` is that timer (``handler_args``).
- **Body**: ``read_body`` answers 408 when no byte of the body arrives for
  ``server.body_timeout`` (a pause, not a total: a big upload on a slow link is
  fine while it moves). aiohttp then reads what is left for at most ``LINGER``
  seconds and closes the connection.
- **Connections**: ``CappedSite`` counts the open ones; beyond
  ``server.max_connections`` a new one gets a fixed 503 and is closed at once,
  with one log line when the cap is reached and one when it clears — not one per
  refused connection. Refusing early keeps swapyard under its open-file limit,
  where asyncio's accept loop and everything else would start failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
from typing import Any

from aiohttp import web

from swapyard.config import ServerSpec
from swapyard.errors import BodyTooLarge, RequestError, SwapyardError

log = logging.getLogger("swapyard")
LINGER = 10.0  # s: aiohttp's default for reading the unread rest of a body


class BodyTimeout(RequestError):
    status = 408
    code = "request_timeout"

    def __init__(self, idle: float) -> None:
        super().__init__(f"the request body stopped arriving: no byte for {idle:g} s")


class TooManyConnections(SwapyardError):
    status = 503
    code = "too_many_connections"


def handler_args(server: ServerSpec) -> dict[str, Any]:
    """aiohttp's per-connection settings for ``server``."""
    return {
        "keepalive_timeout": server.header_timeout,
        "lingering_time": min(LINGER, server.body_timeout),
    }


async def read_body(request: web.Request, limit: int, idle: float) -> bytes:
    """The whole request body. ``BodyTooLarge`` past ``limit`` bytes (the app's
    ``client_max_size``); ``BodyTimeout`` when none of it arrives for ``idle`` s."""
    try:
        if request.content.is_eof():  # it came with the head: nothing to wait for
            return await request.read()
        reading = asyncio.ensure_future(request.read())
        try:
            seen = request.content.total_bytes
            while not (await asyncio.wait({reading}, timeout=idle))[0]:
                if request.content.total_bytes == seen:
                    raise BodyTimeout(idle)
                seen = request.content.total_bytes
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
        return reading.result()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyTooLarge(limit) from exc


def open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 2**20 if soft == resource.RLIM_INFINITY else soft


def _refusal(limit: int) -> bytes:
    err = TooManyConnections(f"swapyard holds its limit of {limit} connections; try again")
    body = json.dumps(err.to_openai()).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refused(asyncio.Protocol):
    """A connection beyond the cap: a fixed 503, then closed."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._answer)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by its site while open."""

    def __init__(self, inner: asyncio.Protocol, site: CappedSite) -> None:
        self._inner = inner
        self._site = site

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.closed()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class CappedSite(web.BaseSite):
    """A TCP site that keeps at most ``limit`` connections open."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limit: int) -> None:
        super().__init__(runner)
        self._host, self._port, self.limit = host, port, limit
        self.open = 0
        self.refused = 0
        self._answer = _refusal(limit)

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._accept(server), self._host, self._port, backlog=self._backlog
        )

    def _accept(self, server: web.Server) -> asyncio.Protocol:
        # Counted here, when the loop accepts, not when aiohttp registers the
        # connection a loop turn later: a burst cannot slip past the cap.
        if self.open >= self.limit:
            if not self.refused:
                log.warning("connection limit of %d reached (server.max_connections): "
                            "refusing new connections", self.limit)  # fmt: skip
            self.refused += 1
            return _Refused(self._answer)
        self.open += 1
        return _Counted(server(), self)

    def closed(self) -> None:
        self.open -= 1
        # "Clear" only a tenth below the cap, so that a load that hovers at it
        # does not write two lines per connection.
        if self.refused and self.open <= self.limit - max(1, self.limit // 10):
            log.warning("below the connection limit again; %d connections were refused",
                        self.refused)  # fmt: skip
            self.refused = 0
