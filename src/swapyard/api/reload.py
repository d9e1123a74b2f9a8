"""Reloading the config: ``SIGHUP``, ``POST /api/config/reload``, ``--watch-config``
and ``swapyard config reload`` all come here.

The file is read and validated first; a broken one changes nothing (the error —
file, key, why — is logged, published and returned). A valid one is handed to
the router, whose task applies it (``swapyard.reload``): unchanged models keep
running, changed ones are drained and restarted, removed ones drained and
stopped, new ones added; scheduler settings, keys and devices apply at once.
``server.host``/``port``/``header_timeout``/``max_connections`` and ``peers``
need a restart (said in the log when they change, and in the answer's
``restart_needed``); ``body_timeout`` applies at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from aiohttp import web

from swapyard.api.state import STATE, AppState
from swapyard.config import Config, load_config_file
from swapyard.errors import ConfigError, RequestError
from swapyard.events import ConfigReloaded

log = logging.getLogger("swapyard.reload")
WATCH_EVERY = 1.0


class ReloadRefused(RequestError):
    status = 422
    code = "invalid_config"


async def reload_config(state: AppState) -> dict[str, list[str]]:
    """Read the config file again and apply it; raises ``ReloadRefused`` (nothing
    changed) when it cannot be read or is invalid."""
    source = state.config.source
    if not await asyncio.to_thread(Path(source).is_file):
        raise ReloadRefused(f"there is no config file to reload (serving {source})")
    try:
        new = load_config_file(source)
    except ConfigError as err:  # the lifecycle log says so (one line)
        state.bus.publish(ConfigReloaded(source, error=err.message))
        raise ReloadRefused(err.message) from err
    old = state.config
    later = _at_restart(old, new)
    if later:
        log.warning("%s changed in %s: they apply at the next restart", ", ".join(later),
                    source)  # fmt: skip
    d = await state.router.reload(new)
    state.config = new
    out = {"added": list(d.added), "changed": list(d.changed), "removed": list(d.removed),
           "unchanged": list(d.unchanged)}  # fmt: skip
    if later:
        out["restart_needed"] = later
    return out


def _at_restart(old: Config, new: Config) -> list[str]:
    """The settings that changed but apply only at the next restart: the server's
    listening ones, and ``peers`` (each peer's watcher is started with swapyard)."""
    out = []
    if _listening(new) != _listening(old):
        out.append("server.host/port/header_timeout/max_connections")
    if new.peers != old.peers:
        out.append("peers")
    return out


def _listening(config: Config) -> tuple[object, ...]:
    """The server settings fixed when swapyard starts listening."""
    s = config.server
    return (s.host, s.port, s.header_timeout, s.max_connections)


async def reload_route(request: web.Request) -> web.Response:
    return web.json_response(await reload_config(request.app[STATE]))


async def reload_quietly(state: AppState) -> None:
    """For SIGHUP and the watcher: the outcome is logged and published, not raised."""
    with contextlib.suppress(ReloadRefused):
        await reload_config(state)


async def watch(state: AppState, every: float = WATCH_EVERY) -> None:
    """Reload whenever the config file's modification time or size changes."""
    path = Path(state.config.source)

    def stamp() -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    seen = stamp()
    while True:
        await asyncio.sleep(every)
        now = stamp()
        if now is not None and now != seen:
            seen = now
            await reload_quietly(state)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/config/reload", reload_route)
