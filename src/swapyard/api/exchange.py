"""One request to one model's engine, the same way for every front (issue 14).

The OpenAI routes, llama.cpp's own routes, Anthropic's ``/v1/messages`` and the
Ollama API all end here: a ``Call`` says which model the client named, which of
the engine's paths gets which body; ``serve`` resolves the model, checks the key,
admits the request, waits for the engine, sends the call and gives the client
the answer, metered and recorded once.

Without a ``Translation`` the engine's answer goes to the client as it comes
(``proxy.forward``'s byte pipe). A front whose clients speak another protocol
than the engine (Ollama's NDJSON over an OpenAI engine, Anthropic's events over
chat completions) passes one: it rewrites the whole answer, or each piece of a
stream, and renders errors its clients understand.

    front handler ──Call──▶ serve ──▶ resolve, key, admission ──▶ acquire (the router)
                                │                                   │ Lease
                                ▼                                   ▼
                      Translation? ◀──── proxy.forward(path, body) ─ engine
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from swapyard.api import fallbacks, routing
from swapyard.api.auth import check_model_allowed
from swapyard.api.clients import client_of
from swapyard.api.loading import stream_with_loading_status
from swapyard.api.routing import FROM_HEADER, MODEL_HEADER, PEER_SAID, Recorded
from swapyard.api.state import BEGUN, KEY_HOST, KEY_MODELS, KEY_NAME, STATE, AppState
from swapyard.config import Config
from swapyard.errors import (
    EngineError,
    Forbidden,
    NotKnownYet,
    SwapyardError,
    UnknownModel,
    WaitExceeded,
)
from swapyard.proxy import StreamTranslator, Translation, forward
from swapyard.quirks import adapt_request
from swapyard.surface import Lease, RouterSurface
from swapyard.usage.meter import CHAT, Metering, Ticket, footer_wanted

__all__ = [
    "Attempt", "Call", "StreamTranslator", "Translation", "name_the_model", "query_model",
    "resolve", "serve", "serve_name", "with_params",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Call:
    """What a front asks of the engine of the model the client named.

    ``path`` is the engine's path (with any query string); ``doc`` is ``body``
    parsed when it is a JSON object (None for a form or a GET). ``stream``: the
    answer is expected as a stream (set by fronts whose flag is not OpenAI's
    ``"stream": true``)."""

    name: str
    path: str
    body: bytes
    doc: dict[str, Any] | None = None
    stream: bool | None = None
    attempt: Attempt | None = None  # set by ``serve`` while a fallback remains (issue 15)
    # Issue 15: a front whose engine body depends on the model that serves it
    # (Ollama's per-engine options, Anthropic's native or translated) builds the
    # call and its translation for each candidate name ``serve`` tries.
    build: Callable[[str], tuple[Call, Translation | None]] | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """A try that a fallback follows (issue 15): the request may wait at most
    ``wait`` seconds (None: as long as the router lets it) to be admitted;
    with ``fail_5xx`` an engine's 5xx answer raises rather than reaching the
    client; and it gets no loading status, which would begin the answer."""

    wait: float | None = None
    fail_5xx: bool = False


@dataclass(frozen=True, slots=True)
class Served:
    """What the answer's headers say: the name that served it (None: none did),
    and the names tried before that failed."""

    model: str | None
    tried: tuple[str, ...] = ()


SERVED = web.RequestKey("swapyard_served", Served)


def resolve(config: Config, name: str, allowed: AbstractSet[str] | None = None) -> str:
    """The model id ``name`` (a model's or a variant's id or alias) refers to;
    ``UnknownModel`` names the listed ones (those ``allowed``, a key's allow-list:
    an error must not tell a key about models it may not use)."""
    model = config.resolve(name)
    if model is None:
        raise UnknownModel(name, [item.id for item in config.listing(allowed, virtual=True)])
    return model


def with_params(
    config: Config, name: str, model: str, doc: dict[str, Any], body: bytes
) -> tuple[dict[str, Any], bytes]:
    """The body for the engine once the request parameters of ``name`` (its
    variant's, else its model's) are applied (issue 14); a variant's name becomes
    its model's id, the one name its engine knows. Unchanged: the same bytes."""
    params = config.params(name)
    variant = config.variant(name) is not None
    if not params and not variant:
        return doc, body
    out = params.apply(doc)
    if variant and "model" in out:
        out["model"] = model
    if out == doc:
        return doc, body
    return out, json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


async def serve(
    request: web.Request,
    call: Call,
    translation: Translation | None = None,
    *,
    t0: float | None = None,
) -> web.StreamResponse:
    """Run ``call`` on the first candidate for the name it gives that can serve it,
    and answer ``request`` with what that engine says (issue 15).

    The candidates (``fallbacks.plan``): the name, then its model's fallbacks; or
    a virtual id's models by its pick rule. The next is tried only when one fails
    for a reason in ``fallback_on`` before any byte of the answer went out; each
    attempt has its own record. A fallback the key may not use, or that no one
    serves, is passed over. The answer names the model that served it
    (``X-Swapyard-Model``) and those it fell back from (``X-Swapyard-Fallback-From``,
    also on an error); when every candidate fails, the last one's error is raised. A virtual id is
    the key's to use when its allow-list names it, and its models then through it."""
    t0 = time.perf_counter() if t0 is None else t0
    state: AppState = request.app[STATE]
    config = state.config
    routing.check_hops(request, state)
    hopped = routing.forwarded(request)  # from a peer: this host's engines only
    # A try the front's fallback follows: its last candidate is a try too.
    last_try = Attempt(routing.attempt_wait(request)) if routing.is_attempt(request) else None
    views = None if state.peers is None or hopped else state.peers.views()
    chain = fallbacks.plan(config, call.name, state.router.snapshot, views)
    allowed = request.get(KEY_MODELS)
    if chain.virtual is not None and allowed is not None:
        if chain.virtual not in allowed:
            raise Forbidden(f"the API key {request.get(KEY_NAME)!r} may not use model "
                            f"{chain.virtual!r}")  # fmt: skip
        request[KEY_MODELS] = allowed | {fallbacks.canonical(config, n) for n in chain.names}
    tried: list[str] = []
    last: SwapyardError | None = None
    try:
        for i, name in enumerate(chain.names):
            more = i + 1 < len(chain.names)
            attempt = last_try
            if more:
                attempt = Attempt(chain.on.wait, "upstream_5xx" in chain.on.conditions)
            request[SERVED] = Served(fallbacks.canonical(config, name), tuple(tried))
            request.pop(PEER_SAID, None)
            each, how = (call, translation) if call.build is None else call.build(name)
            try:
                return await serve_name(request, _for(each, name, attempt), how, t0=t0)
            except (UnknownModel, Forbidden, NotKnownYet):
                if i == 0 and chain.virtual is None:
                    raise  # the client's own name
            except SwapyardError as err:
                if not more or request.get(BEGUN) or not fallbacks.moves_on(err, chain.on):
                    raise
                last = err
                tried.append(name)
        if last is None:  # every one passed over: a virtual id whose models are all gone
            raise EngineError(call.name, f"no model of {call.name!r} is available")
        raise last
    except SwapyardError:
        request[SERVED] = Served(None, tuple(tried))
        raise
    finally:
        if allowed is not None:
            request[KEY_MODELS] = allowed


def _for(call: Call, name: str, attempt: Attempt | None) -> Call:
    """``call`` for the candidate ``name``: its body names it, as if the client had."""
    doc, body = call.doc, call.body
    if name != call.name and doc is not None and "model" in doc:
        doc = {**doc, "model": name}
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    return replace(call, name=name, doc=doc, body=body, attempt=attempt)


async def name_the_model(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers that name the model that answered."""
    request[BEGUN] = True
    served = request.get(SERVED)
    if served is None:
        return
    model, tried = served.model, served.tried
    said = request.get(PEER_SAID)
    if said is not None and model is not None:  # issue 15: the peer knows what served it
        model, tried = said.model or model, tried + said.tried
    if model is not None:
        response.headers[MODEL_HEADER] = model
    if tried:
        response.headers[FROM_HEADER] = ", ".join(tried)


async def _acquire(
    router: RouterSurface, model: str, client: str, attempt: Attempt | None
) -> Lease:
    """The router's lease for ``model``, within ``attempt``'s wait if it has one:
    past it the request leaves the queue and ``WaitExceeded`` says so (issue 15)."""
    if attempt is None or attempt.wait is None:
        return await router.acquire(model, client=client)
    try:
        async with asyncio.timeout(attempt.wait):
            return await router.acquire(model, client=client)
    except TimeoutError:
        raise WaitExceeded(model, attempt.wait) from None


async def serve_name(
    request: web.Request,
    call: Call,
    translation: Translation | None = None,
    *,
    t0: float | None = None,
) -> web.StreamResponse:
    """Run ``call`` on its model's engine and answer ``request`` with what it says.

    Raises the ``SwapyardError`` that keeps the request from running before any
    answer has begun (the front renders it); once a stream has begun, failures
    end it (``proxy.forward``). The request's record is published once, whatever
    happens. A streaming chat completion for a model that is not ready gets the
    loading status first (``server.loading_status``)."""
    t0 = time.perf_counter() if t0 is None else t0
    state: AppState = request.app[STATE]
    config = state.config
    peers = None if routing.forwarded(request) else state.peers
    allowed = request.get(KEY_MODELS)
    # Issue 15: a key with an allow-list reaches a peer's model only by a name
    # the list holds (``serve`` adds a virtual id's models it may use); any other
    # name it asks for gets the same 404 whether the peers serving it are up or not.
    may = allowed is None or call.name in allowed
    remote = routing.hosts_of(peers, call.name) if peers is not None and may else []
    if peers is not None and may and not remote and config.resolve(call.name) is None:
        routing.raise_if_unserved(peers, call.name)
    local = config.resolve(call.name) if remote else resolve(config, call.name, allowed)
    if local is not None:
        variant = config.variant(call.name)
        check_model_allowed(request, local, None if variant is None else variant.id)
    if not remote:
        assert local is not None
        if peers is not None:
            request[KEY_HOST] = "local"
        return await serve_local(request, call, local, translation, t0)

    def here(model: str) -> Awaitable[web.StreamResponse]:
        return serve_local(request, call, model, translation, t0)

    return await routing.serve_routed(request, call, local, remote, translation, t0, here)


async def serve_local(
    request: web.Request,
    call: Call,
    model: str,
    translation: Translation | None,
    t0: float,
) -> web.StreamResponse:
    """``call`` on ``model``'s engine, run by this swapyard (``model`` resolved and
    allowed by the caller): admission, the request's parameters and fixes, the wait
    for the engine, the answer, its record."""
    state: AppState = request.app[STATE]
    config = state.config
    router = state.router
    router.check_admission()  # before any streaming starts: a real 429 or 503
    doc, body = call.doc, call.body
    if doc is not None:
        doc, body = with_params(config, call.name, model, doc, body)
    stream = (
        call.stream if call.stream is not None else (doc is not None and doc.get("stream") is True)
    )
    ready = router.ready_now(model)
    spec = config.models[model]
    path = call.path.split("?", 1)[0]
    body, fix = adapt_request(spec, path, doc, body)
    if translation is not None:
        fix.drop_usage = False  # the translation reads the usage chunk
    use_status = (
        translation is None
        and stream
        and not ready
        and path == CHAT
        and config.server.loading_status != "off"
        and call.attempt is None  # issue 15: a fallback may yet serve it
    )
    ticket = Ticket(model, spec.engine, request.path, stream, request.get(KEY_NAME), not ready)
    footer = spec.footer if spec.footer is not None else config.server.footer
    wanted = translation is None and footer_wanted(footer, path, doc)
    metering = Metering(ticket, t0, wanted, fix)
    client = client_of(request, doc)
    with Recorded(state.bus, metering):
        if use_status:
            return await stream_with_loading_status(
                request, state, model, body, metering, client, path=call.path
            )
        lease = await _acquire(router, model, client, call.attempt)
        metering.admitted(lease.request_id, lease.waited)
        try:
            return await forward(
                state.http, request, lease, body, metering, timeouts=spec.timeouts,
                watches=state.watches, extra_headers=spec.upstream_headers,
                path=call.path, translation=translation,
                fail_5xx=call.attempt is not None and call.attempt.fail_5xx,
            )  # fmt: skip
        finally:
            router.release(lease)


def query_model(request: web.Request, doc: Mapping[str, Any] | None) -> str | None:
    """The model a request names in its body's ``model`` or its ``?model=`` query."""
    if doc is not None and isinstance(doc.get("model"), str) and doc["model"]:
        return str(doc["model"])
    return request.query.get("model") or None
