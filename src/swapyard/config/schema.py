"""The config file's shape: pydantic classes at the boundary, unknown keys rejected.

Durations and sizes are parsed here, and a ``ValidationError`` becomes one line per
problem naming the file, the key and why (``explain``). The ``_...In`` classes are
private to the config package: their names show in the JSON schema's ``$defs``,
and nothing outside ``swapyard.config`` should build them.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from swapyard.config.fallbacks import Condition, Pick
from swapyard.config.peers import PeerSpec
from swapyard.config.values import (
    DeviceSpec,
    Footer,
    LoadingStatus,
    ModelSpec,
    Policy,
    RestartPolicy,
    SchedulerSpec,
    ServerSpec,
    UsageSpec,
)
from swapyard.engines.base import EngineFields, EngineKind

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_ORIGIN = re.compile(r"^https?://[^/\s]+$")
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
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"expected a finite duration of 0 or more, got {value!r}")
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


def parse_origin(value: Any) -> str:
    """``"*"`` or an origin as browsers send it: ``scheme://host[:port]``, no path."""
    m = _ORIGIN.match(value) if isinstance(value, str) else None
    if value != "*" and m is None:
        raise ValueError(
            f"expected '*' or an origin like 'https://app.example:3000', got {value!r}"
        )
    return str(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Origin = Annotated[str, BeforeValidator(parse_origin)]


# Every default is read from a value object built with its own defaults (the
# dataclasses have slots, so their class attributes are not the defaults).
_SERVER = ServerSpec()
_SCHEDULER = SchedulerSpec()
_USAGE = UsageSpec()
_DEVICE = DeviceSpec(id="", memory=1)
_MODEL = ModelSpec(id="", cmd=())
_ENGINE = EngineFields(kind="command", model_id="")
_PEER = PeerSpec(name="", url="")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerIn(Strict):
    host: str = _SERVER.host
    port: int = Field(_SERVER.port, ge=1, le=65535)
    max_body_bytes: Size = _SERVER.max_body_bytes
    header_timeout: Duration = Field(_SERVER.header_timeout, gt=0)
    body_timeout: Duration = Field(_SERVER.body_timeout, gt=0)
    max_connections: int | None = Field(_SERVER.max_connections, ge=1)
    loading_status: LoadingStatus = _SERVER.loading_status
    list_aliases: bool = _SERVER.list_aliases
    shutdown_timeout: Duration = _SERVER.shutdown_timeout
    footer: Footer = _SERVER.footer
    allow_unauthenticated: bool = _SERVER.allow_unauthenticated
    cors: tuple[Origin, ...] = _SERVER.cors
    response_timeout: Duration = _SERVER.response_timeout
    first_byte_timeout: Duration = _SERVER.first_byte_timeout
    idle_timeout: Duration = _SERVER.idle_timeout


class DeviceIn(Strict):
    memory: Size
    reserve: Size = _DEVICE.reserve


class SchedulerIn(Strict):
    policy: Policy = _SCHEDULER.policy
    max_queue: int = Field(_SCHEDULER.max_queue, ge=0)
    retry_after: Duration = _SCHEDULER.retry_after
    max_wait: Duration = _SCHEDULER.max_wait
    min_residency: Duration = _SCHEDULER.min_residency
    swap_factor: float = Field(_SCHEDULER.swap_factor, ge=0)
    assumed_load: Duration = _SCHEDULER.assumed_load
    hold_probe: Duration = _SCHEDULER.hold_probe
    host_memory: Annotated[int, Field(ge=0)] | Size | None = _SCHEDULER.host_memory
    learn_memory: bool = _SCHEDULER.learn_memory


class ParamsIn(Strict):
    """Request parameters (``values.Params``): top-level keys of the JSON body."""

    defaults: dict[str, Any] = {}
    override: dict[str, Any] = {}
    strip: list[str] = []


class VariantIn(Strict):
    """Another id over a model's engine, with its own parameters over the model's."""

    params: ParamsIn = Field(default_factory=lambda: ParamsIn.model_validate({}))
    name: str | None = None
    aliases: list[str] = []


class FallbackOnIn(Strict):
    """``- wait: 30s`` in a ``fallback_on`` list: move on after waiting this long."""

    wait: Duration = Field(gt=0)


class ModelIn(Strict):
    # The engine kind and its high-level fields (``EngineFields``).
    engine: EngineKind = _MODEL.engine
    cmd: str | list[str] | None = None  # None: what the engine kind runs
    model: str | None = _ENGINE.model
    context: int | None = Field(_ENGINE.context, gt=0)
    quantization: str | None = _ENGINE.quantization
    tensor_parallel: int = Field(_ENGINE.tensor_parallel, ge=1)
    gpu_memory_fraction: float | None = Field(_ENGINE.gpu_memory_fraction, gt=0, le=1)
    extra_args: str | list[str] = list(_ENGINE.extra_args)
    launcher: str | list[str] | None = None
    base_url: str | None = _ENGINE.base_url
    api_key_env: str | None = None
    admin_key_env: str | None = None
    fast_swap: bool = _ENGINE.fast_swap
    sleep_level: Literal[1, 2] = 1  # EngineFields.sleep_level, typed int there
    # How swapyard runs and reaches it (``ModelSpec``).
    sleep_memory: Size | None = _MODEL.sleep_memory
    host_memory: Size | None = _MODEL.host_memory
    cumulative_stream: bool = _MODEL.cumulative_stream
    stream_usage: bool | None = None  # None: what the engine kind honours
    anthropic: Literal["native", "translate"] | None = None  # None: what the engine kind speaks
    footer: Footer | None = _MODEL.footer
    env: dict[str, str] = dict(_MODEL.env)
    proxy: str = _MODEL.proxy
    check_endpoint: str = _MODEL.check_endpoint
    aliases: list[str] = list(_MODEL.aliases)
    ttl: Duration = _MODEL.ttl
    start_timeout: Duration = _MODEL.start_timeout
    stop_timeout: Duration = _MODEL.stop_timeout
    cmd_stop: str | list[str] | None = None
    unlisted: bool = _MODEL.unlisted
    name: str | None = _MODEL.name
    memory: Size | None = _MODEL.memory
    gpus: int | None = Field(None, ge=1)  # None: tensor_parallel
    pin: bool = _MODEL.pin
    priority: int = _MODEL.priority
    max_concurrent: int = Field(_MODEL.max_concurrent, ge=0)
    restart: RestartPolicy = _MODEL.restart
    start_limit: int = Field(_MODEL.start_limit, ge=1)
    start_limit_interval: Duration = _MODEL.start_limit_interval
    backoff: Duration = _MODEL.backoff
    backoff_max: Duration = _MODEL.backoff_max
    # None: the server's (``server.response_timeout`` ...).
    response_timeout: Duration | None = None
    first_byte_timeout: Duration | None = None
    idle_timeout: Duration | None = None
    # Issue 14: request parameters, and variants (ids sharing this engine).
    params: ParamsIn = Field(default_factory=lambda: ParamsIn.model_validate({}))
    variants: dict[str, VariantIn] = {}
    # Issue 15: what to serve a request with when this model cannot, and when.
    fallbacks: list[str] = []
    fallback_on: list[Condition | FallbackOnIn] | None = None  # None: FallbackOn()


class VirtualIn(Strict):
    """An id over several models, each request served by the best available (issue 15)."""

    models: list[str] = Field(min_length=1)
    pick: Pick = "loaded-first"
    name: str | None = None
    fallback_on: list[Condition | FallbackOnIn] | None = None  # None: FallbackOn()


class UsageIn(Strict):
    enabled: bool = _USAGE.enabled
    path: str | None = _USAGE.path  # None: usage.db in the data dir
    retention: Duration = _USAGE.retention


class KeyIn(Strict):
    name: str | None = None
    key: str | None = None
    key_env: str | None = None
    models: list[str] | None = None  # allow-list (ids or aliases); None: all


class AuthIn(Strict):
    keys: list[KeyIn] = []
    admin_key: str | None = None
    admin_key_env: str | None = None


class PeerIn(Strict):
    """Another swapyard this one routes to (issue 15; ``config.peers.PeerSpec``)."""

    url: str
    key_env: str | None = None
    admin_key_env: str | None = None
    timeout: Duration = Field(_PEER.timeout, gt=0)


class ConfigIn(Strict):
    server: ServerIn = Field(default_factory=lambda: ServerIn.model_validate({}))
    scheduler: SchedulerIn = Field(default_factory=lambda: SchedulerIn.model_validate({}))
    devices: dict[str, DeviceIn] = {}
    usage: UsageIn = Field(default_factory=lambda: UsageIn.model_validate({}))
    auth: AuthIn = Field(default_factory=lambda: AuthIn.model_validate({}))
    preload: list[str] = []
    macros: dict[str, str | int | float] = {}
    models: dict[str, ModelIn]
    peers: dict[str, PeerIn] = {}
    virtual: dict[str, VirtualIn] = {}  # issue 15


def config_json_schema() -> dict[str, Any]:
    """JSON schema of the config file, for editors and docs."""
    return ConfigIn.model_json_schema()


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
