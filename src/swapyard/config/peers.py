"""The ``peers:`` section (issue 15): other swapyards this one routes to.

Each peer is a swapyard on another host (or address) that supervises its own
engines; this one only reads what it says and forwards requests to it. Its keys
come from the environment, as ``auth`` keys do (``macros.secret``: an unset or
empty variable is an error), and are never shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from swapyard.config.macros import secret
from swapyard.errors import ConfigError

if TYPE_CHECKING:
    from swapyard.config.schema import PeerIn

_URL = re.compile(r"^https?://[^/\s?#]+/?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer: ``url`` its base (``http://host:port``, no trailing slash);
    ``key`` a data key of that host (its ``auth.keys``), ``admin_key`` its admin
    key, each None for a host without keys. ``timeout``: how long it may take to
    answer a probe or a snapshot read; a host silent for longer is down, so a hung
    host is found within about twice this (``peers.watch``)."""

    name: str
    url: str
    key: str | None = field(default=None, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    timeout: float = 2.0

    def data_headers(self) -> dict[str, str]:
        """What a data request to this host carries (its data key, else its admin key)."""
        key = self.key if self.key is not None else self.admin_key
        return {} if key is None else {"Authorization": f"Bearer {key}"}

    def admin_headers(self) -> dict[str, str]:
        """What an admin request to this host carries (its admin key, else its data key)."""
        key = self.admin_key if self.admin_key is not None else self.key
        return {} if key is None else {"Authorization": f"Bearer {key}"}


def build_peers(
    source: str, raw: Mapping[str, PeerIn], env: Mapping[str, str]
) -> dict[str, PeerSpec]:
    """The ``peers:`` section as values; errors name the file and the key."""
    out = {}
    for name, p in raw.items():
        where = f"{source}: peers.{name}"
        if not _NAME.match(name) or name == "local":
            raise ConfigError(f"{where}: a peer's name is letters, digits, '-', '_' or '.', "
                              "and not 'local' (this host's own name in answers)")  # fmt: skip
        if "@" in p.url:  # it would be shown (GET /api/models) and logged: use key_env
            raise ConfigError(f"{where}.url: credentials in the URL are not taken (they "
                              "would be shown); give the peer's keys with key_env and "
                              "admin_key_env")  # fmt: skip
        if not _URL.match(p.url):
            raise ConfigError(f"{where}.url: expected http://host:port (no path), got {p.url!r}")
        out[name] = PeerSpec(
            name=name,
            url=p.url.rstrip("/"),
            key=secret(p.key_env, env, f"{where}.key_env"),
            admin_key=secret(p.admin_key_env, env, f"{where}.admin_key_env"),
            timeout=p.timeout,
        )
    return out
