"""Build the aiohttp application and run it; the lifespan owns every component.

Shutdown (house style 9), under one deadline of ``server.shutdown_timeout``:
stop accepting connections → let in-flight requests finish (half the deadline;
a proxied request still running then is ended with ``shutting_down``: a stream
gets it as its last event, not a cut connection) → reject what is still queued
and stop every engine (SIGTERM → grace → SIGKILL) → at the deadline, SIGKILL
whatever process group is left.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from swapyard.api import (
    admin,
    anthropic,
    cors,
    exchange,
    limits,
    live,
    native,
    ollama,
    openai,
    reload,
)
from swapyard.api.auth import auth_middleware
from swapyard.api.state import CONFIG, KEY_HOST, ROUTER, STATE, AppState
from swapyard.config import Config, check_exposure
from swapyard.errors import InternalError, NotFound, RequestError, ShuttingDown, SwapyardError, clip
from swapyard.events import EventBus
from swapyard.models.fetch import data_dir
from swapyard.peers.registry import Peers
from swapyard.process.group import become_subreaper
from swapyard.proxy import error_response, new_upstream_session
from swapyard.resources.store import MeasuredStore
from swapyard.router import Router
from swapyard.surface import RouterSurface
from swapyard.usage import lifelog
from swapyard.usage.feed import Broadcast
from swapyard.usage.metrics import Metrics
from swapyard.usage.store import UsageStore

log = logging.getLogger("swapyard")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error on every route leaves as the OpenAI envelope. An exception
    nobody raised on purpose is logged once, with its traceback and a request id,
    and the client gets a 500 with that id and no traceback (issue 11)."""
    try:
        return await handler(request)
    except SwapyardError as err:
        retry = getattr(err, "retry_after", None)
        if retry is None:
            return error_response(err)
        return error_response(err, {"Retry-After": str(max(1, round(retry)))})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        cls = NotFound if exc.status == 404 else RequestError
        out = error_response(cls(f"{request.method} {clip(request.path)}: {exc.reason}"))
        out.set_status(exc.status)
        return out
    except Exception as exc:
        return _internal_error(request, exc)


def _internal_error(request: web.Request, exc: Exception) -> web.StreamResponse:
    transport = request.transport
    if isinstance(exc, ConnectionError) and (transport is None or transport.is_closing()):
        return web.Response()  # the client went away: nobody to answer, nothing to log
    rid = uuid.uuid4().hex[:12]
    log.error("internal error, request id %s: %s %s", rid, request.method,
              clip(request.path), exc_info=exc)  # fmt: skip
    if request.writer.output_size > 0:
        # An answer has begun (a stream): no envelope can follow it. Closing the
        # connection tells the client it is cut; aiohttp then drops the response
        # below without logging the exception a second time.
        request.protocol.force_close()
        return web.Response()
    return error_response(InternalError(rid), {"X-Request-Id": rid})


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    usage: UsageStore | None = None
    if config.usage.enabled:  # first: it may refuse to open (issue 10), with nothing to undo
        usage = UsageStore(config.usage.path or data_dir() / "usage.db", config.usage.retention)
    http = new_upstream_session()
    given = app.get(ROUTER)
    if given is not None:
        router, bus = given, given.bus
    else:
        bus = EventBus()
        store = MeasuredStore(data_dir() / "measured-memory.json")
        router = Router(config, bus, http, store, state_dir=data_dir() / "engines")
    metrics = Metrics(router)
    bus.add_listener(metrics.on_event)
    bus.add_listener(lifelog.on_event)
    if usage is not None:
        bus.add_listener(usage.on_event)
        usage.run()
    state = AppState(config=config, bus=bus, http=http, router=router, metrics=metrics,
                     broadcast=Broadcast(bus), usage=usage)  # fmt: skip
    ring = live.RingHandler(state.log)
    logging.getLogger("swapyard").addHandler(ring)
    router.run()
    if config.peers:  # issue 15: after the router, so a request routed here finds it
        state.peers = Peers(config.peers, http, state.watches)
        state.peers.start()
    app[STATE] = state
    try:
        yield
    finally:
        if state.peers is not None:
            await state.peers.stop()
        state.watches.cancel()
        deadline = state.shutdown_deadline or (time.monotonic() + config.server.shutdown_timeout)
        await router.shutdown(deadline, keep_engines=state.keep_engines)
        await http.close()
        if usage is not None:
            await usage.close()
        logging.getLogger("swapyard").removeHandler(ring)


async def _host_header(request: web.Request, response: web.StreamResponse) -> None:
    """Issue 15: the host that served a routed request, as its answer's header
    (over the one a peer's own answer carried)."""
    host = request.get(KEY_HOST)
    if host is not None:
        response.headers["X-Swapyard-Host"] = host


def drain_time(config: Config) -> float:
    """How long shutdown waits for in-flight requests: half its deadline, the other
    half is the engines'."""
    return config.server.shutdown_timeout / 2


async def _stop_admitting(app: web.Application) -> None:
    # Runs after the listener closed and before in-flight requests are drained:
    # queued requests are rejected now instead of holding the drain; live streams
    # (dashboard, log follows) end at once. Proxied requests still running when
    # the drain is up end with shutting_down (issue 11): aiohttp only cancels a
    # handler after waiting for it once more, so the event goes out first.
    state = app[STATE]
    state.router.stop_admitting()
    state.closing.set()
    drain = drain_time(state.config)
    err = ShuttingDown(
        f"swapyard is shutting down and this answer did not finish within the drain time "
        f"({drain:g} s, half of server.shutdown_timeout)"
    )
    state.watches.stop_all_later(drain, err)


def build_app(config: Config, router: RouterSurface | None = None) -> web.Application:
    """The app for ``config``; its lifespan builds a ``Router`` unless one is given
    (``swapyard.testing.FakeRouter`` for HTTP tests without engine processes)."""
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    app[CONFIG] = config
    cors.install(app)
    if router is not None:
        app[ROUTER] = router
    app.cleanup_ctx.append(_lifespan)
    app.on_shutdown.append(_stop_admitting)
    app.on_response_prepare.append(_host_header)
    app.on_response_prepare.append(exchange.name_the_model)  # issue 15
    ollama.add_routes(app)
    anthropic.add_routes(app)  # before openai's POST /v1/{tail}
    openai.add_routes(app)
    admin.add_routes(app)
    live.add_routes(app)
    reload.add_routes(app)
    native.add_routes(app)
    return app


async def start_server(
    config: Config, host: str, port: int, router: RouterSurface | None = None
) -> web.AppRunner:
    """Start serving on ``host:port``; the caller must ``cleanup()`` the runner."""
    app = build_app(config, router)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=drain_time(config),
        **limits.handler_args(config.server),
    )
    await runner.setup()
    cap = config.server.connection_cap(limits.open_files_limit())
    site = limits.CappedSite(runner, host, port, cap)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SwapyardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return runner


EXIT_KEPT_ENGINES = 75  # EX_TEMPFAIL: systemd's Restart=on-failure starts us again


async def serve(config: Config, host: str, port: int, watch_config: bool = False) -> int:
    """Run until SIGINT/SIGTERM, then shut down in order (engines stopped); SIGHUP
    (and, with ``watch_config``, a change of the file) reloads the config; SIGUSR2
    shuts down but leaves the engines running for the next swapyard to adopt.
    Returns the exit status."""
    check_exposure(config, host)
    # Engines' helpers that leave their process group are re-parented to us, not
    # init, so they can still be found and stopped (issue 10).
    if not become_subreaper():
        log.info("cannot become a child subreaper: escaped engine helpers go to init")
    runner = await start_server(config, host, port)
    state = runner.app[STATE]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def on_usr2() -> None:
        state.keep_engines = True
        stop.set()

    loop.add_signal_handler(signal.SIGUSR2, on_usr2)
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(reload.reload_quietly(state))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    watcher = asyncio.ensure_future(reload.watch(state)) if watch_config else None
    names = ", ".join(config.models)
    kind = type(loop).__module__.split(".")[0]  # "uvloop" or "asyncio"
    print(f"swapyard listening on http://{host}:{port}/v1 — models: {names} "
          f"(event loop: {kind})", file=sys.stderr)  # fmt: skip
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    for task in (*reloads, *([watcher] if watcher is not None else [])):
        task.cancel()
    keep = state.keep_engines
    what = "leaving the engines running for the next swapyard" if keep else "stopping engines"
    print(f"swapyard: shutting down, {what}", file=sys.stderr)
    state.shutdown_deadline = time.monotonic() + config.server.shutdown_timeout
    await runner.cleanup()
    return EXIT_KEPT_ENGINES if keep else 0
