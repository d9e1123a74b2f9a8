"""Run swapyard on a real port on a loopback address for a test (no in-process transport:
it would buffer bodies and hide streaming and disconnects)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from swapyard.api.app import start_server
from swapyard.api.state import STATE
from swapyard.config import Config
from swapyard.ports import PortAllocator
from swapyard.surface import RouterSurface


def fake_engine_cmd(model_id: str = "fake", **flags: object) -> str:
    """A ``cmd`` line that runs the fake engine; ``flags`` map to its options
    (``load_delay=0.5`` → ``--load-delay 0.5``; ``True`` → a bare flag)."""
    argv = [sys.executable, "-m", "swapyard.testing.fake_engine", "--port", "${PORT}"]
    argv += ["--model-id", model_id]
    for key, value in flags.items():
        if value is False or value is None:
            continue
        argv.append("--" + key.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return " ".join(a if a == "${PORT}" else shlex.quote(a) for a in argv)


class RunningServer:
    def __init__(self, url: str, router: RouterSurface) -> None:
        self.url = url
        self.router = router


@asynccontextmanager
async def running_server(
    config: Config, router: RouterSurface | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[RunningServer]:
    """Serve ``config`` on a free port of ``host`` (a loopback address: 127.0.0.2
    and others stand for other machines, issue 15), through ``router`` (e.g. a
    ``FakeRouter``) when given; stop everything on exit."""
    port = PortAllocator(host).allocate()
    runner = await start_server(config, host, port, router)
    try:
        yield RunningServer(f"http://{host}:{port}", runner.app[STATE].router)
    finally:
        await runner.cleanup()
