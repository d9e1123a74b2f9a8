"""The ``models:`` section: each entry and its engine kind become one ``ModelSpec``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from types import MappingProxyType

from swapyard.config.macros import RUNTIME_MACROS, Hidden, expand, reveal, secret, split_args
from swapyard.config.params import Params, VariantSpec
from swapyard.config.schema import ModelIn, ParamsIn
from swapyard.config.values import ModelSpec, Timeouts
from swapyard.engines import EngineFields, adapter
from swapyard.engines.base import Launch, MemoryShare, declared_share
from swapyard.errors import ConfigError

_MODEL_ID = re.compile(r"^[^\s/][^\s]*$")
_ENGINE_ONLY = (
    "model", "context", "quantization", "gpu_memory_fraction", "extra_args", "launcher",
    "base_url", "api_key_env", "admin_key_env",
)  # fmt: skip
_URL = ("http://", "https://")
_NOT_SHOWN = ("(a command built from ${env.*} values; see the config)",)


@dataclass(frozen=True, slots=True)
class _Scope:
    """One model's keys: their error prefix, the macros they see, the environment."""

    where: str  # "<source>: models.<id>"
    macros: Mapping[str, str]
    env: Mapping[str, str]

    def text(self, key: str, value: str, runtime: AbstractSet[str] = frozenset()) -> str:
        return expand(value, self.macros, self.env, f"{self.where}.{key}", runtime)

    def args(
        self, key: str, value: str | Sequence[str] | None, runtime: AbstractSet[str] = frozenset()
    ) -> tuple[str, ...]:
        if value is None:
            return ()
        return split_args(value, self.macros, self.env, f"{self.where}.{key}", runtime)

    def command(self, key: str, value: str | Sequence[str]) -> tuple[str, ...]:
        """A program and its arguments; ``${PORT}`` (and ``${PID}``) stay for ``render``."""
        parts = self.args(key, value, RUNTIME_MACROS[key])
        if not parts:
            raise ConfigError(f"{self.where}.{key}: expected a command, got an empty one")
        return parts

    def secret(self, key: str, var: str | None) -> str | None:
        return secret(var, self.env, f"{self.where}.{key}")


def build_model(
    source: str,
    model_id: str,
    m: ModelIn,
    user: Mapping[str, str],
    env: Mapping[str, str],
    shown: Mapping[str, str],
    timeouts: Timeouts,
) -> ModelSpec:  # fmt: skip
    """One ``models:`` entry, its macros expanded, its own timeouts over the
    server's ``timeouts``; raises ``ConfigError``. ``user`` are the user macros
    expanded against ``env``, ``shown`` against ``Hidden(env)``."""
    if not _MODEL_ID.match(model_id):
        raise ConfigError(f"{source}: models.{model_id}: a model id cannot contain spaces")
    at = _Scope(f"{source}: models.{model_id}", {**user, "MODEL_ID": model_id}, env)
    fields, launch = _engine(at, model_id, m)
    cmd, cmd_stop = _commands(at, m, launch)
    cmd_shown, cmd_stop_shown = _shown(
        _Scope(at.where, {**shown, "MODEL_ID": model_id}, Hidden(env)), model_id, m, cmd, cmd_stop
    )
    proxy = _proxy(at, m, launch)
    env_vars = {**launch.env, **{k: at.text(f"env.{k}", v, {"PORT"}) for k, v in m.env.items()}}
    if "${PORT}" in proxy and cmd and not any("${PORT}" in a for a in (*cmd, *env_vars.values())):
        raise ConfigError(
            f"{at.where}.cmd: the proxy URL uses ${{PORT}} but cmd never passes ${{PORT}} to "
            "the engine; add it to cmd (or env) or give `proxy` a fixed port"
        )
    check = m.check_endpoint if "check_endpoint" in m.model_fields_set else launch.check_endpoint
    params = _params(f"{at.where}.params", m.params)
    if not check.startswith("/"):
        raise ConfigError(f"{at.where}.check_endpoint: expected a path starting with '/'")
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
        anthropic=m.anthropic or ("native" if launch.messages_api else "translate"),
        footer=m.footer,
        sleep_memory=m.sleep_memory,
        host_memory=m.host_memory,
        restart=m.restart,
        start_limit=m.start_limit,
        start_limit_interval=m.start_limit_interval,
        backoff=m.backoff,
        backoff_max=max(m.backoff, m.backoff_max),
        cmd_shown=cmd_shown,
        cmd_stop_shown=cmd_stop_shown,
        timeouts=_timeouts(m, timeouts),
        share=_share(launch, cmd) if m.cmd is not None else launch.share,
        params=params,
        variants=MappingProxyType(_variants(at.where, model_id, m, params)),
    )


# The body's `model` names what swapyard routes by; no parameter may change it.
_NOT_PARAMS = frozenset({"model"})


def _params(where: str, p: ParamsIn) -> Params:
    for key in (*p.defaults, *p.override, *p.strip):
        if key in _NOT_PARAMS:
            raise ConfigError(
                f"{where}: {key!r} cannot be a parameter: swapyard routes by it "
                "(use a variant or an alias for another name)"
            )
    return Params(
        defaults=MappingProxyType(dict(p.defaults)),
        override=MappingProxyType(dict(p.override)),
        strip=tuple(dict.fromkeys(p.strip)),
    )


def _variants(where: str, model_id: str, m: ModelIn, base: Params) -> dict[str, VariantSpec]:
    out = {}
    for vid, v in m.variants.items():
        if not _MODEL_ID.match(vid):
            raise ConfigError(f"{where}.variants.{vid}: a variant id cannot contain spaces")
        own = _params(f"{where}.variants.{vid}.params", v.params)
        out[vid] = VariantSpec(vid, model_id, own.over(base), v.name, tuple(v.aliases))
    return out


Command = tuple[str, ...]


def _share(launch: Launch, cmd: Command) -> MemoryShare | None:
    """A raw ``cmd`` is run as written: a share in it is declared; without one,
    swapyard adds nothing (it did not build the command) and learns what it takes."""
    if launch.share is None:
        return None
    fields = EngineFields(kind="", model_id="", extra_args=tuple(cmd))
    declared = declared_share(fields, launch.share.flag)
    return replace(launch.share, declared=declared) if declared is not None else None


def _commands(at: _Scope, m: ModelIn, launch: Launch) -> tuple[Command, Command | None]:
    """``cmd`` (a raw one overrides what the engine kind would run) and ``cmd_stop``."""
    if m.cmd is not None:
        cmd = at.command("cmd", m.cmd)
    else:
        cmd = at.command("cmd", launch.cmd) if launch.cmd else ()
    return cmd, None if m.cmd_stop is None else at.command("cmd_stop", m.cmd_stop)


def _shown(
    hidden: _Scope, model_id: str, m: ModelIn, cmd: Command, cmd_stop: Command | None
) -> tuple[Command | None, Command | None]:
    """``cmd`` and ``cmd_stop`` with each ``${env.*}`` as written (issue 11); None
    for one that holds no environment value."""
    if not cmd and cmd_stop is None:
        return None, None
    try:
        launch = Launch(cmd=()) if m.cmd is not None else _engine(hidden, model_id, m)[1]
        marked, stop_marked = _commands(hidden, m, launch)
    except ConfigError:  # a check on a value the mark stands in for: show none of it
        return _NOT_SHOWN, None if cmd_stop is None else _NOT_SHOWN
    shown = tuple(reveal(a) for a in marked)
    stop_shown = None if stop_marked is None else tuple(reveal(a) for a in stop_marked)
    return (None if shown == cmd else shown), (None if stop_shown == cmd_stop else stop_shown)


def _timeouts(m: ModelIn, server: Timeouts) -> Timeouts:
    own = {"response": m.response_timeout, "first_byte": m.first_byte_timeout,
           "idle": m.idle_timeout}  # fmt: skip
    return replace(server, **{k: v for k, v in own.items() if v is not None})


def _proxy(at: _Scope, m: ModelIn, launch: Launch) -> str:
    """The engine's base URL: the model's own ``proxy``, else its engine kind's."""
    given = m.proxy if "proxy" in m.model_fields_set else launch.proxy
    proxy = at.text("proxy", given, RUNTIME_MACROS["proxy"])
    if not proxy.startswith(_URL):
        raise ConfigError(f"{at.where}.proxy: expected an http:// or https:// URL, got {proxy!r}")
    return proxy


def _engine(at: _Scope, model_id: str, m: ModelIn) -> tuple[EngineFields | None, Launch]:
    """The engine kind's launch for this model (``command``: only a raw ``cmd``)."""
    if m.engine == "command":
        _check_raw_command(at, m)
        return None, Launch(cmd=())
    fields = EngineFields(
        kind=m.engine,
        model_id=model_id,
        model=None if m.model is None else at.text("model", m.model),
        context=m.context,
        quantization=m.quantization,
        tensor_parallel=m.tensor_parallel,
        gpu_memory_fraction=m.gpu_memory_fraction,
        extra_args=at.args("extra_args", m.extra_args),
        launcher=at.args("launcher", m.launcher) or None,
        base_url=None if m.base_url is None else at.text("base_url", m.base_url),
        api_key=at.secret("api_key_env", m.api_key_env),
        admin_key=at.secret("admin_key_env", m.admin_key_env),
        sleep_level=m.sleep_level,
        fast_swap=m.fast_swap,
    )
    try:
        launch = adapter(m.engine).launch(fields)
    except ValueError as exc:
        raise ConfigError(f"{at.where}.engine: {exc}") from exc
    if fields.base_url is not None and not fields.base_url.startswith(_URL):
        raise ConfigError(f"{at.where}.base_url: expected an http:// or https:// URL")
    return fields, launch


def _check_raw_command(at: _Scope, m: ModelIn) -> None:
    """``engine: command`` needs a ``cmd`` and takes none of the engine kinds' keys."""
    if m.cmd is None:
        raise ConfigError(
            f"{at.where}: required key 'cmd' is missing (or name an engine: "
            "llamacpp, vllm, sglang, tabbyapi, ollama, openai)"
        )
    extra = [k for k in _ENGINE_ONLY if k in m.model_fields_set]
    if extra:
        raise ConfigError(
            f"{at.where}.{extra[0]}: only used with an engine kind (`engine: llamacpp` ...); "
            "with a raw cmd, put it in cmd"
        )


def check_aliases(source: str, models: Mapping[str, ModelSpec]) -> None:
    """Every name a client may send means one thing: no alias, variant id or
    variant alias is also a model id, or another name already taken."""
    seen: dict[str, str] = {mid: "already a model id" for mid in models}
    for m in models.values():
        names = [(f"models.{m.id}.aliases", a, f"an alias of {m.id!r}") for a in m.aliases]
        for v in m.variants.values():
            where = f"models.{m.id}.variants.{v.id}"
            names.append((where, v.id, f"a variant of {m.id!r}"))
            names += [(f"{where}.aliases", a, f"an alias of variant {v.id!r}") for a in v.aliases]
        for where, name, what in names:
            if name in seen:
                raise ConfigError(f"{source}: {where}: {name!r} is {seen[name]}")
            seen[name] = f"also {what}"
