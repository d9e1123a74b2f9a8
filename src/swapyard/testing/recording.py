"""A recording ``Effects`` for synchronous scheduler tests (no loop, no processes)."""

from __future__ import annotations

from dataclasses import dataclass, field

from swapyard.errors import SwapyardError


@dataclass
class RecordingEffects:
    """Records every decision in order as ``(verb, *args)`` tuples."""

    calls: list[tuple[object, ...]] = field(default_factory=list)
    placements: dict[str, tuple[str, ...]] = field(default_factory=dict)
    errors: dict[int, SwapyardError] = field(default_factory=dict)  # rejections, by request
    needs: dict[str, int | None] = field(default_factory=dict)  # the need of each start

    def start(self, model: str, devices: tuple[str, ...], need: int | None = None) -> None:
        self.calls.append(("start", model))
        self.needs[model] = need
        self.placements[model] = devices

    def stop(self, model: str, *, for_model: str | None, sleep: bool = False) -> None:
        self.calls.append(("sleep" if sleep else "stop", model, for_model))

    def dispatch(self, request_id: int, model: str) -> None:
        self.calls.append(("dispatch", request_id, model))

    def reject(self, request_id: int, error: SwapyardError) -> None:
        self.calls.append(("reject", request_id, type(error).__name__))
        self.errors[request_id] = error

    def arm_idle_timer(self, model: str, ttl: float, token: int) -> None:
        self.calls.append(("arm", model, ttl, token))

    def wake_at(self, when: float) -> None:
        self.calls.append(("wake", when))

    def take(self) -> list[tuple[object, ...]]:
        """The calls since the last ``take``."""
        out, self.calls = self.calls, []
        return out

    def reset(self, model: str) -> None:
        self.calls.append(("reset", model))
