"""The scheduler's ``Effects`` in the running router: commands to the engine
actors, answers to the requests waiting in ``Router.acquire``, and timers that
come back to the router's inbox as messages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from swapyard.config import ModelSpec
from swapyard.errors import SwapyardError
from swapyard.events import EventBus, RequestAdmitted, SwapStarted
from swapyard.inbox import Idle, Leave, Message, Tick
from swapyard.process.actor import EngineProcess


class RouterEffects:
    """The scheduler's ``Effects``: commands to the actors, answers to waiting
    requests, timers. Owns the waiting requests' futures and the armed timers;
    reaches the router only through the callables it was given."""

    def __init__(
        self,
        engines: Mapping[str, EngineProcess],
        bus: EventBus,
        post: Callable[[Message], None],
        spawn: Callable[[Any], None],
        cuda: bool,
        share_args: Callable[[ModelSpec, tuple[str, ...], int | None], list[str]],
    ) -> None:
        self._engines = engines
        self._bus = bus
        self._post = post
        self._spawn = spawn
        self.cuda = cuda  # devices are CUDA indexes (a reload may change it)
        self._share_args = share_args
        self._waiting: dict[int, tuple[asyncio.Future[str], float]] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._idle: dict[str, asyncio.TimerHandle] = {}  # the one armed per model

    # -- waiting requests (the router's side) --
    def expect(self, request_id: int) -> asyncio.Future[str]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (fut, time.monotonic())
        return fut

    def expects(self, request_id: int) -> bool:
        return request_id in self._waiting

    def forget(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)

    def cancel_timers(self) -> None:
        for h in self._timers:
            h.cancel()

    # -- Effects --
    def start(self, model: str, devices: tuple[str, ...], need: int | None = None) -> None:
        env = {}
        args: tuple[str, ...] = ()
        engine = self._engines[model]
        if self.cuda:
            # Devices are CUDA indexes: the engine sees only the GPUs it was placed on,
            # and one that takes a share of them is told the share it was placed with.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
            args = tuple(self._share_args(engine.spec, devices, need))
        self._spawn(_quiet(engine.start(env, devices, args)))

    def stop(self, model: str, *, for_model: str | None, sleep: bool = False) -> None:
        engine = self._engines[model]
        if for_model is not None:
            mode = engine.view().fast_swap or "stop"
            self._bus.publish(SwapStarted(new=for_model, old=model, mode=mode))
        self._spawn(_quiet(engine.stop(sleep=sleep)))

    def reset(self, model: str) -> None:
        self._spawn(_quiet(self._engines[model].reset()))

    def dispatch(self, request_id: int, model: str) -> None:
        entry = self._waiting.pop(request_id, None)
        if entry is None or entry[0].done():
            self._post(Leave(request_id))
            return
        fut, t0 = entry
        fut.set_result(model)
        self._bus.publish(RequestAdmitted(request_id, model, time.monotonic() - t0))

    def reject(self, request_id: int, error: SwapyardError) -> None:
        entry = self._waiting.pop(request_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(error)

    def wake_at(self, when: float) -> None:
        self._after(max(0.0, when - time.monotonic()), Tick())

    def arm_idle_timer(self, model: str, ttl: float, token: int) -> None:
        # A newer token makes the older timer a no-op (``idle_timeout`` ignores it):
        # cancel it rather than let every request leave one to fire ttl later.
        if (old := self._idle.pop(model, None)) is not None:
            old.cancel()
            self._timers.discard(old)
        self._idle[model] = self._after(ttl, Idle(model, token))

    def _after(self, delay: float, msg: Message) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self._post(msg)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)
        return handle


async def _quiet(coro: Any) -> None:
    # Outcomes reach the scheduler as state events; the direct reply is not needed.
    with contextlib.suppress(SwapyardError):
        await coro
