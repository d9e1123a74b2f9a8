"""The config file's shape: pydantic classes at the boundary, unknown keys rejected.

Durations and sizes are parsed here, and a ``ValidationError`` becomes one line per
problem naming the file, the key and why (``explain``). The ``_...In`` classes are
private to the config package: their names show in the JSON schema's ``$defs``,
and nothing outside ``swapyard.config`` should build them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from swapyard.config.values import LoadingStatus
from swapyard.engines.base import EngineKind

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or ``"7d"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30, '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a duration of 0 or more, got {value!r}")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like 30, '30s' or '5m', got {value!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"32MiB"``, ``"1GB"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 1048576 or '32MiB', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"expected a size above 0, got {value!r}")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"expected a size like 1048576 or '32MiB', got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ServerIn(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: Size = 64 * 2**20
    loading_status: LoadingStatus = "reasoning"
    list_aliases: bool = False
    shutdown_timeout: Duration = 30.0
    footer: bool = False
    allow_unauthenticated: bool = False


class _DeviceIn(_Strict):
    memory: Size
    reserve: Size = 0


class _SchedulerIn(_Strict):
    policy: Literal["fifo", "batch"] = "batch"
    max_queue: int = Field(0, ge=0)
    max_wait: Duration = 60.0
    min_residency: Duration = 8.0
    assumed_load: Duration = 5.0
    swap_factor: float = Field(3.5, ge=0)
    host_memory: Annotated[int, Field(ge=0)] | Size | None = None
    learn_memory: bool = True


class _ModelIn(_Strict):
    engine: EngineKind = "command"
    cmd: str | list[str] | None = None
    model: str | None = None
    context: int | None = Field(None, gt=0)
    quantization: str | None = None
    tensor_parallel: int = Field(1, ge=1)
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    extra_args: str | list[str] = []
    launcher: str | list[str] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    admin_key_env: str | None = None
    fast_swap: bool = True
    sleep_level: Literal[1, 2] = 1
    sleep_memory: Size | None = None
    host_memory: Size | None = None
    cumulative_stream: bool = False
    stream_usage: bool | None = None
    footer: bool | None = None
    env: dict[str, str] = {}
    proxy: str = "http://127.0.0.1:${PORT}"
    check_endpoint: str = "/health"
    aliases: list[str] = []
    ttl: Duration = 0.0
    start_timeout: Duration = 120.0
    stop_timeout: Duration = 10.0
    cmd_stop: str | list[str] | None = None
    unlisted: bool = False
    name: str | None = None
    memory: Size | None = None
    gpus: int | None = Field(None, ge=1)
    pin: bool = False
    priority: int = 0
    max_concurrent: int = Field(0, ge=0)


class _UsageIn(_Strict):
    enabled: bool = True
    path: str | None = None  # default: usage.db in the data dir
    retention: Duration = 90 * 86400.0


class _KeyIn(_Strict):
    name: str | None = None
    key: str | None = None
    key_env: str | None = None
    models: list[str] | None = None  # allow-list (ids or aliases); None: all


class _AuthIn(_Strict):
    keys: list[_KeyIn] = []
    admin_key: str | None = None
    admin_key_env: str | None = None


class _ConfigIn(_Strict):
    server: _ServerIn = Field(default_factory=lambda: _ServerIn.model_validate({}))
    scheduler: _SchedulerIn = Field(default_factory=lambda: _SchedulerIn.model_validate({}))
    devices: dict[str, _DeviceIn] = {}
    usage: _UsageIn = Field(default_factory=lambda: _UsageIn.model_validate({}))
    auth: _AuthIn = Field(default_factory=lambda: _AuthIn.model_validate({}))
    preload: list[str] = []
    macros: dict[str, str | int | float] = {}
    models: dict[str, _ModelIn]


def config_json_schema() -> dict[str, Any]:
    """JSON schema of the config file, for editors and docs."""
    return _ConfigIn.model_json_schema()


def explain(source: str, exc: ValidationError) -> str:
    """One line per validation error: the file, the key, and why."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc) or "(top level)"
        model = f" of model {loc[1]!r}" if len(loc) > 2 and loc[0] == "models" else ""
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: {where}: unknown key {loc[-1]!r}{model}")
        elif err["type"] == "missing":
            lines.append(f"{source}: {where}: required key {loc[-1]!r} is missing{model}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {msg}{model} (got {err.get('input')!r})")
    return "\n".join(lines)
