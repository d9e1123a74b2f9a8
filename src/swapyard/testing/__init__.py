"""Fakes shipped for tests (ours and users'): a runnable fake engine, a recording
``Effects`` for the scheduler, a ``FakeRouter`` for the HTTP layer, and a helper
that runs swapyard on a real port."""

from swapyard.testing.recording import RecordingEffects
from swapyard.testing.router import FakeRouter
from swapyard.testing.server import fake_engine_cmd, running_server

__all__ = ["FakeRouter", "RecordingEffects", "fake_engine_cmd", "running_server"]
