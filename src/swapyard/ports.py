"""Free-port allocation for engines that take ``${PORT}``."""

from __future__ import annotations

import socket
from collections import deque


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now (nothing listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out ports the kernel says are free, never one it handed out recently.

    The kernel picks an ephemeral port; we check it is really bindable, and keep
    the last few in a ring so two engines starting at once never get the same one
    before either has bound it.
    """

    def __init__(self, host: str = "127.0.0.1", remember: int = 256) -> None:
        self._host = host
        self._recent: deque[int] = deque(maxlen=remember)

    def allocate(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((self._host, 0))
                port: int = s.getsockname()[1]
            if port in self._recent or not port_is_free(self._host, port):
                continue
            self._recent.append(port)
            return port
        raise OSError("no free port found after 100 tries")
