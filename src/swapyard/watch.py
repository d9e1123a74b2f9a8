"""The deadlines of one proxied request (``Watch``), and the requests in progress
that shutdown may end (``Watches``); ``proxy.forward`` is their one user.

An engine that goes silent is given up on per phase (issue 11): no response head
within ``response_timeout`` of sending the request, no body byte within
``first_byte_timeout`` of the head, then no gap between chunks longer than
``idle_timeout`` (``config.Timeouts``; 0: no limit). The hot path pays one clock
read per chunk; the one timer of a request moves when its head arrives and,
lazily, at most once per idle period.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

from swapyard.config import Timeouts
from swapyard.errors import SwapyardError, UpstreamTimeout


class Watch:
    """One proxied request's deadlines, and the way to end it early.

    Each phase (waiting for the head, reading the body) runs under one
    ``asyncio.Timeout`` that only ever expires through ``_expire``. One timer
    decides when: it wakes at the earliest moment a deadline could have passed,
    reads the time of the last body chunk, and fires or re-arms. A chunk costs one
    clock read (``last = now()``), never a timer of its own.
    """

    __slots__ = ("_cm", "_handle", "_head", "_loop", "_start", "_why", "last", "limits",
                 "model", "now")  # fmt: skip

    def __init__(self, model: str, limits: Timeouts) -> None:
        self.model = model
        self.limits = limits
        self._loop = asyncio.get_running_loop()
        self.now = self._loop.time
        self._start = self.now()
        self._head: float | None = None
        self.last: float | None = None  # when the last body chunk arrived
        self._cm: asyncio.Timeout | None = None
        self._why: SwapyardError | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._arm()

    def head(self) -> None:
        """The response head arrived: from now on, the body's deadlines."""
        self._head = self.now()
        self._cancel_timer()
        self._arm()

    @property
    def head_at(self) -> float | None:
        """When the response head arrived (``now()``'s clock); None: not yet."""
        return self._head

    def stop(self, err: SwapyardError) -> None:
        """End the request now with ``err`` (raised from its current or next phase)."""
        if self._why is None:
            self._expire(err)

    def close(self) -> None:
        self._cancel_timer()

    async def __aenter__(self) -> None:
        """Each ``async with watch:`` block is one phase, run under the deadlines:
        if they pass (or ``stop`` is called) it is cancelled, and the reason is
        raised: an ``UpstreamTimeout``, or the error ``stop`` was given."""
        if self._why is not None:
            raise self._why
        cm = asyncio.timeout(None)
        await cm.__aenter__()
        self._cm = cm

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        cm, self._cm = self._cm, None
        assert cm is not None
        try:
            await cm.__aexit__(typ, exc, tb)
        except TimeoutError as expired:
            if self._why is None:  # never: only _expire expires it, and sets _why first
                raise
            raise self._why from expired

    def _due(self) -> tuple[float, str]:
        lim = self.limits
        if self._head is None:
            return self._start + (lim.response or math.inf), "response"
        if self.last is None:
            return self._head + (lim.first_byte or math.inf), "first_byte"
        return self.last + (lim.idle or math.inf), "idle"

    def _arm(self) -> None:
        due, _ = self._due()
        if self.limits.idle:
            # A first chunk moves the deadline to last + idle without a word to us.
            due = min(due, self.now() + self.limits.idle)
        if due != math.inf:
            self._handle = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._handle = None
        due, phase = self._due()
        if self.now() < due:
            self._arm()
            return
        self._expire(UpstreamTimeout(self.model, self._silence(phase)))

    def _silence(self, phase: str) -> str:
        m = self.model
        if phase == "response":
            t = self.limits.response
            what = f"the engine of {m!r} did not begin its answer within {t:g} s"
        elif phase == "first_byte":
            t = self.limits.first_byte
            what = f"the engine of {m!r} sent no part of its answer within {t:g} s of its head"
        else:
            t = self.limits.idle
            what = f"the engine of {m!r} sent nothing for {t:g} s in the middle of its answer"
        return f"{what} ({phase}_timeout)"

    def _expire(self, err: SwapyardError) -> None:
        self._why = err
        self._cancel_timer()
        if self._cm is not None and not self._cm.expired():
            self._cm.reschedule(self.now())

    def _cancel_timer(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Watches:
    """The proxied requests in progress (their ``Watch``), so that shutdown can end
    those still running when its drain time is up with an error the client sees,
    rather than cut them."""

    def __init__(self) -> None:
        self._live: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, watch: Watch) -> None:
        self._live.add(watch)

    def discard(self, watch: Watch) -> None:
        self._live.discard(watch)

    def stop_all(self, err: SwapyardError) -> int:
        """Stop every request in progress with ``err``; how many there were."""
        live = list(self._live)
        for w in live:
            w.stop(err)
        return len(live)

    def stop_all_later(self, delay: float, err: SwapyardError) -> None:
        """``stop_all(err)`` in ``delay`` seconds, unless ``cancel``led first."""
        self.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self.stop_all, err)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
