"""Load and validate the YAML config into frozen value objects.

``load_config(text)`` is the core: it never touches the disk, so tests pass text.
Pydantic checks the shape at the boundary (unknown keys are errors); everything
inside swapyard sees the frozen dataclasses below. Macros are expanded here,
except the ones only known when an engine starts (``${PORT}``, ``${PID}``).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from swapyard.engines import Adapter, EngineFields, adapter
from swapyard.engines.base import EngineKind, Launch
from swapyard.errors import ConfigError

LoadingStatus = Literal["reasoning", "content", "off"]

_MACRO = re.compile(r"\$\{([^}]*)\}")
_MACRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_MODEL_ID = re.compile(r"^[^\s/][^\s]*$")
# Macros only known when the engine is started (or stopped), per field.
_RUNTIME_MACROS = {"cmd": {"PORT"}, "proxy": {"PORT"}, "cmd_stop": {"PORT", "PID"}}
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


@dataclass(frozen=True, slots=True)
class ServerSpec:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 64 * 2**20
    loading_status: LoadingStatus = "reasoning"
    list_aliases: bool = False
    shutdown_timeout: float = 30.0
    footer: bool = False  # append "⚡ tok/s" to every answer
    allow_unauthenticated: bool = False  # listen beyond loopback with no API keys


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    key: str = field(repr=False)
    models: frozenset[str] | None = None  # model ids it may use; None: all


@dataclass(frozen=True, slots=True)
class AuthSpec:
    keys: tuple[KeySpec, ...] = ()
    admin_key: str | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.admin_key is not None


@dataclass(frozen=True, slots=True)
class UsageSpec:
    enabled: bool = True
    path: str | None = None
    retention: float = 90 * 86400.0


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    id: str
    memory: int
    reserve: int = 0

    @property
    def budget(self) -> int:
        return self.memory - self.reserve


@dataclass(frozen=True, slots=True)
class SchedulerSpec:
    policy: Literal["fifo", "batch"] = "batch"
    max_queue: int = 0
    max_wait: float = 60.0
    min_residency: float = 8.0
    learn_memory: bool = True
    assumed_load: float = 5.0
    swap_factor: float = 3.5
    host_memory: int | None = None  # host RAM for sleeping engines (default: 90 % of RAM)
    retry_after: float = 1.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model's engine. ``cmd``/``proxy``/``cmd_stop`` may still hold ``${PORT}``
    (and ``${PID}`` in ``cmd_stop``); ``render`` fills them in at start time."""

    id: str
    cmd: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    proxy: str = "http://127.0.0.1:${PORT}"
    check_endpoint: str = "/health"
    aliases: tuple[str, ...] = ()
    ttl: float = 0.0
    start_timeout: float = 120.0
    stop_timeout: float = 10.0
    cmd_stop: tuple[str, ...] | None = None
    unlisted: bool = False
    name: str | None = None
    memory: int | None = None
    gpus: int = 1
    pin: bool = False
    priority: int = 0
    max_concurrent: int = 0
    engine: str = "command"
    fields: EngineFields | None = None
    check_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    upstream_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    upstream_model: str | None = None
    stream_usage: bool = False
    cumulative_stream: bool = False
    footer: bool | None = None  # None: server.footer
    sleep_memory: int | None = None  # GPU memory held while asleep (fast swap)
    host_memory: int | None = None  # host RAM held while asleep

    @property
    def needs_port(self) -> bool:
        """Whether a free port must be allocated for each start."""
        return "${PORT}" in self.proxy or any(
            "${PORT}" in a for a in (*self.cmd, *self.env.values())
        )

    @property
    def remote(self) -> bool:
        """No process: another server (``engine: openai`` or a remote Ollama)."""
        return not self.cmd

    @property
    def adapter(self) -> Adapter:
        return adapter(self.engine)

    @property
    def fast(self) -> bool:
        """Whether the engine offers a fast swap (sleep/wake, unload/load)."""
        return self.fields is not None and self.adapter.fast(self.fields) is not None


@dataclass(frozen=True, slots=True)
class Config:
    models: Mapping[str, ModelSpec]
    server: ServerSpec = ServerSpec()
    source: str = "<text>"
    scheduler: SchedulerSpec = SchedulerSpec()
    devices: tuple[DeviceSpec, ...] = ()
    preload: tuple[str, ...] = ()
    usage: UsageSpec = UsageSpec()
    auth: AuthSpec = AuthSpec()

    @property
    def aliases(self) -> Mapping[str, str]:
        """alias → model id."""
        return {a: m.id for m in self.models.values() for a in m.aliases}

    def resolve(self, name: str) -> str | None:
        """The model id that ``name`` (an id or an alias) refers to, or None."""
        if name in self.models:
            return name
        return self.aliases.get(name)


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill runtime macros (``${PORT}``, ``${PID}``) into a template."""
    return _MACRO.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def load_config_file(path: str | Path) -> Config:
    """Read and validate a config file; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from exc
    return load_config(text, source=str(p))


def load_config(
    text: str, *, source: str = "<text>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate ``text`` (YAML) and return the frozen config. Raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a `models:` key at the top level")
    try:
        parsed = _ConfigIn.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(source, exc)) from exc
    macros = _expand_user_macros(source, parsed.macros, env)
    models: dict[str, ModelSpec] = {}
    for model_id, m in parsed.models.items():
        models[model_id] = _build_model(source, model_id, m, macros, env)
    _check_aliases(source, models)
    devices = tuple(DeviceSpec(did, d.memory, d.reserve) for did, d in parsed.devices.items())
    for d in devices:
        if d.budget <= 0:
            raise ConfigError(f"{source}: devices.{d.id}.reserve: must be less than its memory")
    for i, mid in enumerate(parsed.preload):
        if mid not in models:
            raise ConfigError(
                f"{source}: preload[{i}]: {mid!r} is not a model id; models: {', '.join(models)}"
            )
    for spec in models.values():
        if devices and spec.gpus > len(devices):
            raise ConfigError(
                f"{source}: models.{spec.id}.gpus: asks for {spec.gpus} devices, "
                f"{len(devices)} are declared"
            )
    sch = parsed.scheduler
    scheduler = SchedulerSpec(
        sch.policy, sch.max_queue, sch.max_wait, sch.min_residency, sch.learn_memory,
        sch.assumed_load, sch.swap_factor, sch.host_memory,
    )  # fmt: skip
    s = parsed.server
    server = ServerSpec(
        host=s.host,
        port=s.port,
        max_body_bytes=s.max_body_bytes,
        loading_status=s.loading_status,
        list_aliases=s.list_aliases,
        shutdown_timeout=s.shutdown_timeout,
        footer=s.footer,
        allow_unauthenticated=s.allow_unauthenticated,
    )
    config = Config(
        models=MappingProxyType(models), server=server, source=source, scheduler=scheduler,
        devices=devices, preload=tuple(parsed.preload),
        usage=UsageSpec(parsed.usage.enabled, parsed.usage.path, parsed.usage.retention),
        auth=_auth(source, parsed.auth, models, env),
    )  # fmt: skip
    check_exposure(config, server.host)
    return config


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_exposure(config: Config, host: str) -> None:
    """No API keys means loopback only, unless the operator says otherwise."""
    if host in LOOPBACK or host.startswith("127.") or config.auth.enabled:
        return
    if config.server.allow_unauthenticated:
        return
    raise ConfigError(
        f"{config.source}: server.host: {host} would expose every model without API keys; "
        "configure auth.keys / auth.admin_key_env, or set server.allow_unauthenticated: true"
    )


def _auth(
    source: str, a: _AuthIn, models: Mapping[str, ModelSpec], env: Mapping[str, str]
) -> AuthSpec:
    def secret(where: str, value: str | None, var: str | None) -> str | None:
        if value is not None and var is not None:
            raise ConfigError(f"{source}: {where}: give the key or its variable, not both")
        if var is not None:
            if not env.get(var):
                raise ConfigError(f"{source}: {where}: environment variable {var!r} is not set")
            return env[var]
        return value

    keys = []
    aliases = {a: m.id for m in models.values() for a in m.aliases}
    for i, k in enumerate(a.keys):
        where = f"auth.keys[{i}]"
        value = secret(where, k.key, k.key_env)
        if not value:
            raise ConfigError(f"{source}: {where}: needs `key` or `key_env`")
        allowed = None
        if k.models is not None:
            ids = set()
            for name in k.models:
                mid = name if name in models else aliases.get(name)
                if mid is None:
                    raise ConfigError(f"{source}: {where}.models: {name!r} is not a model")
                ids.add(mid)
            allowed = frozenset(ids)
        keys.append(KeySpec(k.name or f"key{i + 1}", value, allowed))
    admin = secret("auth.admin_key", a.admin_key, a.admin_key_env)
    return AuthSpec(tuple(keys), admin)


def config_json_schema() -> dict[str, Any]:
    """JSON schema of the config file, for editors and docs."""
    return _ConfigIn.model_json_schema()


def _explain(source: str, exc: ValidationError) -> str:
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


def _expand_user_macros(
    source: str, raw: Mapping[str, str | int | float], env: Mapping[str, str]
) -> dict[str, str]:
    done: dict[str, str] = {}
    for name, value in raw.items():
        where = f"{source}: macros.{name}"
        if not _MACRO_NAME.match(name) or name in {"PORT", "PID", "MODEL_ID"}:
            raise ConfigError(f"{where}: invalid or reserved macro name {name!r}")
        done[name] = _expand(str(value), done, env, where, allowed_runtime={"PORT", "PID"})
    return done


def _expand(
    text: str,
    macros: Mapping[str, str],
    env: Mapping[str, str],
    where: str,
    allowed_runtime: set[str],
) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in allowed_runtime:
            return m.group(0)
        if name.startswith("env."):
            var = name[4:]
            if var not in env:
                raise ConfigError(f"{where}: environment variable {var!r} is not set")
            return env[var]
        if name in macros:
            return macros[name]
        if name in {"PORT", "PID"}:
            raise ConfigError(f"{where}: ${{{name}}} cannot be used here")
        raise ConfigError(f"{where}: unknown macro ${{{name}}}")

    out = _MACRO.sub(sub, text)
    for m in _MACRO.finditer(out):  # runtime macros brought in by a user macro
        if m.group(1) not in allowed_runtime:
            raise ConfigError(f"{where}: ${{{m.group(1)}}} cannot be used here")
    return out


def _argv(
    source: str,
    model_id: str,
    key: str,
    value: str | list[str],
    macros: Mapping[str, str],
    env: Mapping[str, str],
) -> tuple[str, ...]:
    where = f"{source}: models.{model_id}.{key}"
    allowed = _RUNTIME_MACROS[key]
    if isinstance(value, str):
        # Expand first, then split, so a macro may hold several arguments (quote a
        # value that must stay one argument).
        text = _expand(value, macros, env, where, allowed)
        try:
            parts = shlex.split(text, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{where}: cannot split into arguments: {exc}") from exc
    else:
        parts = [_expand(p, macros, env, where, allowed) for p in value]
    if not parts:
        raise ConfigError(f"{where}: expected a command, got an empty one")
    return tuple(parts)


def _build_model(
    source: str, model_id: str, m: _ModelIn, user: Mapping[str, str], env: Mapping[str, str]
) -> ModelSpec:
    if not _MODEL_ID.match(model_id):
        raise ConfigError(f"{source}: models.{model_id}: a model id cannot contain spaces")
    macros = {**user, "MODEL_ID": model_id}
    where = f"{source}: models.{model_id}"
    fields, launch = _engine(where, model_id, m, macros, env)
    if m.cmd is not None:  # a raw cmd overrides what the engine kind would run
        cmd = _argv(source, model_id, "cmd", m.cmd, macros, env)
    elif launch.cmd:
        cmd = _argv(source, model_id, "cmd", list(launch.cmd), macros, env)
    else:
        cmd = ()
    cmd_stop = (
        None if m.cmd_stop is None else _argv(source, model_id, "cmd_stop", m.cmd_stop, macros, env)
    )
    given = m.model_fields_set
    proxy_in = m.proxy if "proxy" in given else launch.proxy
    proxy = _expand(proxy_in, macros, env, f"{where}.proxy", _RUNTIME_MACROS["proxy"])
    if not proxy.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.proxy: expected an http:// or https:// URL, got {proxy!r}")
    env_vars = dict(launch.env)
    env_vars.update(
        {k: _expand(v, macros, env, f"{where}.env.{k}", {"PORT"}) for k, v in m.env.items()}
    )
    port_passed = any("${PORT}" in a for a in (*cmd, *env_vars.values()))
    if "${PORT}" in proxy and cmd and not port_passed:
        raise ConfigError(
            f"{where}.cmd: the proxy URL uses ${{PORT}} but cmd never passes ${{PORT}} to the "
            "engine; add it to cmd (or env) or give `proxy` a fixed port"
        )
    check = m.check_endpoint if "check_endpoint" in given else launch.check_endpoint
    if not check.startswith("/"):
        raise ConfigError(f"{where}.check_endpoint: expected a path starting with '/'")
    return ModelSpec(
        id=model_id,
        cmd=cmd,
        env=MappingProxyType(env_vars),
        proxy=proxy.rstrip("/"),
        check_endpoint=check,
        aliases=tuple(m.aliases),
        ttl=m.ttl,
        start_timeout=m.start_timeout,
        stop_timeout=m.stop_timeout,
        cmd_stop=cmd_stop,
        unlisted=m.unlisted,
        name=m.name,
        memory=m.memory,
        gpus=m.gpus or m.tensor_parallel,
        pin=m.pin,
        priority=m.priority,
        max_concurrent=m.max_concurrent,
        engine=m.engine,
        fields=fields,
        check_headers=MappingProxyType(dict(launch.check_headers)),
        upstream_headers=MappingProxyType(dict(launch.upstream_headers)),
        upstream_model=launch.upstream_model,
        stream_usage=launch.stream_usage if m.stream_usage is None else m.stream_usage,
        cumulative_stream=m.cumulative_stream,
        footer=m.footer,
        sleep_memory=m.sleep_memory,
        host_memory=m.host_memory,
    )


_ENGINE_ONLY = (
    "model", "context", "quantization", "gpu_memory_fraction", "extra_args", "launcher",
    "base_url", "api_key_env", "admin_key_env",
)  # fmt: skip


def _engine(
    where: str, model_id: str, m: _ModelIn, macros: Mapping[str, str], env: Mapping[str, str]
) -> tuple[EngineFields | None, Launch]:
    """The engine kind's launch for this model (``command``: only a raw ``cmd``)."""
    if m.engine == "command":
        if m.cmd is None:
            raise ConfigError(
                f"{where}: required key 'cmd' is missing (or name an engine: "
                "llamacpp, vllm, sglang, tabbyapi, ollama, openai)"
            )
        extra = [k for k in _ENGINE_ONLY if k in m.model_fields_set]
        if extra:
            raise ConfigError(
                f"{where}.{extra[0]}: only used with an engine kind (`engine: llamacpp` ...); "
                "with a raw cmd, put it in cmd"
            )
        return None, Launch(())

    def text(key: str, value: str | None) -> str | None:
        return None if value is None else _expand(value, macros, env, f"{where}.{key}", set())

    def words(key: str, value: str | list[str] | None) -> tuple[str, ...]:
        if value is None or value == []:
            return ()
        if isinstance(value, str):  # expand, then split: a macro may hold several words
            text = _expand(value, macros, env, f"{where}.{key}", set())
            try:
                return tuple(shlex.split(text))
            except ValueError as exc:
                raise ConfigError(f"{where}.{key}: cannot split into arguments: {exc}") from exc
        return tuple(_expand(v, macros, env, f"{where}.{key}", set()) for v in value)

    def secret(key: str, var: str | None) -> str | None:
        if var is None:
            return None
        if var not in env:
            raise ConfigError(f"{where}.{key}: environment variable {var!r} is not set")
        return env[var]

    fields = EngineFields(
        kind=m.engine,
        model_id=model_id,
        model=text("model", m.model),
        context=m.context,
        quantization=m.quantization,
        tensor_parallel=m.tensor_parallel,
        gpu_memory_fraction=m.gpu_memory_fraction,
        extra_args=words("extra_args", m.extra_args),
        launcher=words("launcher", m.launcher) or None,
        base_url=text("base_url", m.base_url),
        api_key=secret("api_key_env", m.api_key_env),
        admin_key=secret("admin_key_env", m.admin_key_env),
        sleep_level=m.sleep_level,
        fast_swap=m.fast_swap,
    )
    try:
        launch = adapter(m.engine).launch(fields)
    except ValueError as exc:
        raise ConfigError(f"{where}.engine: {exc}") from exc
    if fields.base_url is not None and not fields.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.base_url: expected an http:// or https:// URL")
    return fields, launch


def _check_aliases(source: str, models: Mapping[str, ModelSpec]) -> None:
    seen: dict[str, str] = {}
    for m in models.values():
        for alias in m.aliases:
            if alias in models:
                raise ConfigError(
                    f"{source}: models.{m.id}.aliases: {alias!r} is already a model id"
                )
            if alias in seen:
                raise ConfigError(
                    f"{source}: models.{m.id}.aliases: {alias!r} is also an alias of "
                    f"{seen[alias]!r}"
                )
            seen[alias] = m.id
