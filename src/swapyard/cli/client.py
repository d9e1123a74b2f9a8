"""A small synchronous client of swapyard's admin API, for the CLI.

The URL comes from ``--url`` (or ``$SWAPYARD_URL``, default
``http://127.0.0.1:8080``), the key from ``$SWAPYARD_ADMIN_KEY`` (control routes)
or ``$SWAPYARD_API_KEY`` (``/v1``)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from swapyard.scheduler import placement

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    pass


class Client:
    def __init__(self, url: str | None = None, key: str | None = None) -> None:
        self.url = (url or os.environ.get("SWAPYARD_URL") or DEFAULT_URL).rstrip("/")
        self.key = key or os.environ.get("SWAPYARD_ADMIN_KEY") or os.environ.get("SWAPYARD_API_KEY")

    def _req(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        return req

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        try:
            with urllib.request.urlopen(self._req(method, path, body), timeout=timeout) as r:
                raw = r.read()
                ctype = r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise ClientError(_message(exc)) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach swapyard at {self.url}: {reason}") from exc
        return json.loads(raw) if "json" in ctype else raw.decode("utf-8", "replace")

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None, timeout: float = 3600) -> Any:
        return self.call("POST", path, body if body is not None else {}, timeout)

    def events(self, path: str) -> Iterator[Any]:
        """The JSON payloads of a server-sent-events route, as they arrive."""
        try:
            with urllib.request.urlopen(self._req("GET", path), timeout=3600) as r:
                for raw in r:
                    if raw.startswith(b"data: "):
                        yield json.loads(raw[6:])
        except urllib.error.HTTPError as exc:
            raise ClientError(_message(exc)) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"cannot reach swapyard at {self.url}: {exc}") from exc


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read())
        return f"HTTP {exc.code}: {doc['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code}: {exc.reason}"


def fmt_bytes(n: int | None) -> str:
    return "-" if n is None else placement.fmt_bytes(n)


def fmt_secs(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]  # fmt: skip
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
