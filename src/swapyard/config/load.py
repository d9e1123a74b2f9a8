"""``load_config``: YAML text in, a frozen ``Config`` out, or a ``ConfigError``
naming the file, the key and why.

It never touches the disk (``load_config_file`` reads the file), so tests pass
text. Macros are expanded here, except the runtime ones (``${PORT}``, ``${PID}``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import yaml
from pydantic import ValidationError

from swapyard.config.fallbacks import build_virtual, check_fallbacks, with_fallbacks
from swapyard.config.macros import Hidden, secret, user_macros
from swapyard.config.models import build_model, check_aliases
from swapyard.config.peers import build_peers
from swapyard.config.schema import AuthIn, ConfigIn, explain
from swapyard.config.values import (
    AuthSpec,
    Config,
    DeviceSpec,
    KeySpec,
    ModelSpec,
    SchedulerSpec,
    ServerSpec,
    UsageSpec,
)
from swapyard.errors import ConfigError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def load_config_file(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; errors name the file. ``environ`` as for
    ``load_config``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from exc
    return load_config(text, source=str(p), environ=environ)


def load_config(
    text: str, *, source: str = "<text>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate ``text`` (YAML) and return the frozen config. Raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    parsed = _parse(text, source)
    macros = user_macros(source, parsed.macros, env)
    shown = user_macros(source, parsed.macros, Hidden(env))
    server = ServerSpec(**parsed.server.model_dump())
    models = {
        mid: build_model(source, mid, m, macros, env, shown, server.timeouts)
        for mid, m in parsed.models.items()
    }
    models = with_fallbacks(source, parsed.models, _without_keys(parsed, models))
    check_aliases(source, models)
    # Issue 15: with `peers:`, a name no model has here may be a peer's (checked
    # per request: a name nobody serves then is passed over).
    open_names = bool(parsed.peers)
    virtual = build_virtual(source, parsed.virtual, models, open_names)
    check_fallbacks(source, models, virtual, open_names)
    devices = _devices(source, parsed)
    _check_preload(source, parsed.preload, models)
    _check_gpus(source, models, devices)
    # The flat sections' boundary classes carry the value objects' field names.
    config = Config(
        models=MappingProxyType(models),
        server=server,
        source=source,
        scheduler=SchedulerSpec(**parsed.scheduler.model_dump()),
        devices=devices,
        preload=tuple(parsed.preload),
        usage=UsageSpec(**parsed.usage.model_dump()),
        auth=_auth(source, parsed.auth, models, env, frozenset(virtual)),
        peers=MappingProxyType(build_peers(source, parsed.peers, env)),
        virtual=virtual,
    )
    check_exposure(config, config.server.host)
    return config


def _parse(text: str, source: str) -> ConfigIn:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a `models:` key at the top level")
    try:
        return ConfigIn.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(explain(source, exc)) from exc


def _devices(source: str, parsed: ConfigIn) -> tuple[DeviceSpec, ...]:
    """The declared devices, each with room left once its reserve is taken."""
    devices = tuple(
        DeviceSpec(id=did, memory=d.memory, reserve=d.reserve) for did, d in parsed.devices.items()
    )
    for d in devices:
        if d.budget <= 0:
            raise ConfigError(f"{source}: devices.{d.id}.reserve: must be less than its memory")
    return devices


def _check_gpus(
    source: str, models: Mapping[str, ModelSpec], devices: tuple[DeviceSpec, ...]
) -> None:
    for spec in models.values():
        if devices and spec.gpus > len(devices):
            raise ConfigError(
                f"{source}: models.{spec.id}.gpus: asks for {spec.gpus} devices, "
                f"{len(devices)} are declared"
            )


def _check_preload(source: str, preload: list[str], models: Mapping[str, ModelSpec]) -> None:
    for i, mid in enumerate(preload):
        if mid not in models:
            raise ConfigError(
                f"{source}: preload[{i}]: {mid!r} is not a model id; models: {', '.join(models)}"
            )


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


def _without_keys(parsed: ConfigIn, models: Mapping[str, ModelSpec]) -> dict[str, ModelSpec]:
    """Each model with ``env_drop``: the variables its engine must not inherit
    (issue 11) — every one ``auth`` and ``peers`` name, and the other models' engine keys. A
    model's own ``api_key_env``/``admin_key_env`` stay: an engine may read its
    key from there (vLLM's ``VLLM_API_KEY``); auth's win when both name one."""
    a = parsed.auth
    named = {a.admin_key_env, *(k.key_env for k in a.keys)}
    named |= {v for p in parsed.peers.values() for v in (p.key_env, p.admin_key_env)}
    own = {mid: {m.api_key_env, m.admin_key_env} - {None} for mid, m in parsed.models.items()}
    every = set().union(*own.values())
    return {
        mid: replace(spec, env_drop=frozenset(v for v in named | (every - own[mid]) if v))
        for mid, spec in models.items()
    }


def _auth(
    source: str,
    a: AuthIn,
    models: Mapping[str, ModelSpec],
    env: Mapping[str, str],
    virtual: frozenset[str] = frozenset(),
) -> AuthSpec:
    """API keys (each with the models it may use: ``virtual`` ids too) and the admin key."""
    keys = []
    for i, k in enumerate(a.keys):
        where = f"{source}: auth.keys[{i}]"
        value = _key(where, k.key, k.key_env, env)
        if not value:
            raise ConfigError(f"{where}: needs `key` or `key_env`")
        allowed = None if k.models is None else _allowed(where, k.models, models, virtual)
        keys.append(KeySpec(name=k.name or f"key{i + 1}", key=value, models=allowed))
    admin = _key(f"{source}: auth.admin_key", a.admin_key, a.admin_key_env, env)
    return AuthSpec(keys=tuple(keys), admin_key=admin)


def _key(where: str, value: str | None, var: str | None, env: Mapping[str, str]) -> str | None:
    if value is not None and var is not None:
        raise ConfigError(f"{where}: give the key or its variable, not both")
    return value if var is None else secret(var, env, where)


def _allowed(
    where: str,
    names: list[str],
    models: Mapping[str, ModelSpec],
    virtual: frozenset[str] = frozenset(),
) -> frozenset[str]:
    """The model and variant ids that ``names`` (ids or aliases) refer to: a
    model's id allows its variants too, a variant's only itself (issue 14); a
    virtual id allows its models through it, not by their own names (issue 15)."""
    ids = {mid: mid for mid in models} | {vid: vid for vid in virtual}
    for m in models.values():
        ids.update((a, m.id) for a in m.aliases)
        for v in m.variants.values():
            ids.update((n, v.id) for n in (v.id, *v.aliases))
    allowed = set()
    for name in names:
        if name not in ids:
            raise ConfigError(
                f"{where}.models: {name!r} is not a model or a variant, nor a virtual id"
            )
        allowed.add(ids[name])
    return frozenset(allowed)
