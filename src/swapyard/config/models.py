"""The ``models:`` section: each entry and its engine kind become one ``ModelSpec``."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from types import MappingProxyType

from swapyard.config.macros import RUNTIME_MACROS, argv, expand
from swapyard.config.schema import _ModelIn
from swapyard.config.values import ModelSpec
from swapyard.engines import EngineFields, adapter
from swapyard.engines.base import Launch
from swapyard.errors import ConfigError

_MODEL_ID = re.compile(r"^[^\s/][^\s]*$")
_ENGINE_ONLY = (
    "model", "context", "quantization", "gpu_memory_fraction", "extra_args", "launcher",
    "base_url", "api_key_env", "admin_key_env",
)  # fmt: skip


def build_model(
    source: str, model_id: str, m: _ModelIn, user: Mapping[str, str], env: Mapping[str, str]
) -> ModelSpec:
    if not _MODEL_ID.match(model_id):
        raise ConfigError(f"{source}: models.{model_id}: a model id cannot contain spaces")
    macros = {**user, "MODEL_ID": model_id}
    where = f"{source}: models.{model_id}"
    fields, launch = _engine(where, model_id, m, macros, env)
    if m.cmd is not None:  # a raw cmd overrides what the engine kind would run
        cmd = argv(m.cmd, macros, env, f"{where}.cmd", RUNTIME_MACROS["cmd"])
    elif launch.cmd:
        cmd = argv(list(launch.cmd), macros, env, f"{where}.cmd", RUNTIME_MACROS["cmd"])
    else:
        cmd = ()
    cmd_stop = (
        None
        if m.cmd_stop is None
        else argv(m.cmd_stop, macros, env, f"{where}.cmd_stop", RUNTIME_MACROS["cmd_stop"])
    )
    given = m.model_fields_set
    proxy_in = m.proxy if "proxy" in given else launch.proxy
    proxy = expand(proxy_in, macros, env, f"{where}.proxy", RUNTIME_MACROS["proxy"])
    if not proxy.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.proxy: expected an http:// or https:// URL, got {proxy!r}")
    env_vars = dict(launch.env)
    env_vars.update(
        {k: expand(v, macros, env, f"{where}.env.{k}", {"PORT"}) for k, v in m.env.items()}
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
        return None if value is None else expand(value, macros, env, f"{where}.{key}", set())

    def words(key: str, value: str | list[str] | None) -> tuple[str, ...]:
        if value is None or value == []:
            return ()
        if isinstance(value, str):  # expand, then split: a macro may hold several words
            text = expand(value, macros, env, f"{where}.{key}", set())
            try:
                return tuple(shlex.split(text))
            except ValueError as exc:
                raise ConfigError(f"{where}.{key}: cannot split into arguments: {exc}") from exc
        return tuple(expand(v, macros, env, f"{where}.{key}", set()) for v in value)

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


def check_aliases(source: str, models: Mapping[str, ModelSpec]) -> None:
    """No alias is also a model id or another model's alias."""
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
