"""Fakes shipped for tests (ours and users'): a runnable fake engine, a recording
``Effects`` for the scheduler, and a helper that runs swapyard on a real port."""

from swapyard.testing.recording import RecordingEffects
from swapyard.testing.server import fake_engine_cmd, running_server

__all__ = ["RecordingEffects", "fake_engine_cmd", "running_server"]
