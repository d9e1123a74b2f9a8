"""The frozen value objects the rest of swapyard reads a config as.

Built once by ``load_config``; nothing changes them afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from swapyard.config.fallbacks import FallbackOn, VirtualSpec
from swapyard.config.params import Params, VariantSpec
from swapyard.config.peers import PeerSpec
from swapyard.engines import Adapter, EngineFields, adapter
from swapyard.engines.base import EngineKind, Launch, MemoryShare

LoadingStatus = Literal["reasoning", "content", "off"]
Policy = Literal["fifo", "batch"]
# The "⚡ tok/s" footer: False; True (plain chat answers); "always" (also the text
# of /v1/completions). Never JSON mode or tool calls (usage/meter.footer_wanted).
Footer = bool | Literal["always"]

FD_RESERVE = 64  # open files swapyard keeps for itself: engines' logs, pidfds, the store
# A raw ``cmd`` engine's launch: where a model is reached unless it says otherwise.
_COMMAND = Launch(cmd=())


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long swapyard waits on an engine's answer, in seconds (0: no limit).

    ``response``: from sending the request to the engine's response head. Most
    engines send a plain answer's head with its body, once it is all generated,
    and llama-server a stream's head after the prompt is read, so this bounds a
    whole plain answer. ``first_byte``: from a response head to the first body
    byte (vLLM, SGLang and Ollama send a stream's head at once, then read the
    prompt). ``idle``: the longest gap between body chunks after that.
    """

    response: float
    first_byte: float
    idle: float


@dataclass(frozen=True, slots=True)
class ServerSpec:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 64 * 2**20
    # What one client may hold (issue 11). A request head must arrive within
    # header_timeout of the connection opening or of the previous answer (longer
    # than reverse proxies' idle keep-alive, nginx's 60 s, so they close first); a
    # body that stops for body_timeout is answered 408. max_connections: None is
    # half the open files left after FD_RESERVE (each client connection may hold
    # one to an engine too); beyond it a connection gets a 503 and is closed.
    header_timeout: float = 75.0
    body_timeout: float = 60.0
    max_connections: int | None = None
    loading_status: LoadingStatus = "reasoning"
    list_aliases: bool = False
    shutdown_timeout: float = 30.0
    footer: Footer = False  # append "⚡ tok/s" to chat answers
    allow_unauthenticated: bool = False  # listen beyond loopback with no API keys
    cors: tuple[str, ...] = ()  # origins browsers may call from ("*": any); (): off

    def connection_cap(self, open_files: int) -> int:
        """``max_connections``, else what the open-file limit ``open_files`` allows."""
        if self.max_connections is not None:
            return self.max_connections
        return max(1, (open_files - FD_RESERVE) // 2)

    # Upstream timeouts (``Timeouts``), each model's unless it sets its own: the
    # first two as long as the openai client's own default (600 s), so swapyard
    # never gives up on an answer before a default client would (issue 11).
    response_timeout: float = 600.0
    first_byte_timeout: float = 600.0
    idle_timeout: float = 300.0

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            response=self.response_timeout,
            first_byte=self.first_byte_timeout,
            idle=self.idle_timeout,
        )


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
    policy: Policy = "batch"
    # Admission: how many may wait, the Retry-After (seconds) a request refused
    # for a full queue is told, and how long one waits behind others' models.
    max_queue: int = 0  # 0: no bound
    retry_after: float = 1.0
    max_wait: float = 60.0
    # Rent or buy: a just-loaded model serves at least min_residency; a hot model
    # is kept while the requests held back for another one have waited less than
    # swap_factor x (both load times) in all; a model never loaded counts
    # assumed_load seconds.
    min_residency: float = 8.0
    swap_factor: float = 0.5  # issue 13: chosen on benchmarks/bench_traces.py (README)
    assumed_load: float = 5.0
    # Issue 13: a hot model is held for another only while others go on asking
    # for it: a request of theirs started since the oldest waiting one came, or
    # less than hold_probe seconds have passed to see whether one will.
    hold_probe: float = 1.0
    # Memory: host RAM for sleeping engines (None: 90 % of RAM), and whether to
    # measure what each engine really uses after it loads.
    host_memory: int | None = None
    learn_memory: bool = True


RestartPolicy = Literal["on-failure", "always", "never"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model's engine. ``cmd``/``proxy``/``cmd_stop`` may still hold ``${PORT}``
    (and ``${PID}`` in ``cmd_stop``); ``render`` fills them in at start time."""

    id: str
    cmd: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    proxy: str = _COMMAND.proxy
    check_endpoint: str = _COMMAND.check_endpoint
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
    engine: EngineKind = "command"
    fields: EngineFields | None = None
    check_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    upstream_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    upstream_model: str | None = None
    stream_usage: bool = False
    cumulative_stream: bool = False
    # Anthropic's /v1/messages: passed to the engine as sent, or translated to chat
    # completions for an engine that does not speak it (issue 14).
    anthropic: Literal["native", "translate"] = "native"
    footer: Footer | None = None  # None: server.footer
    sleep_memory: int | None = None  # GPU memory held while asleep (fast swap)
    host_memory: int | None = None  # host RAM held while asleep
    # Crash policy (issue 10): a failed start or a crash backs off backoff, 2x, 4x
    # ... up to backoff_max seconds; start_limit failures within start_limit_interval
    # seconds leave it failed until an explicit load or a reload. A model kept
    # loaded (pinned, preloaded, loaded on purpose) is started again after a crash
    # unless restart is "never"; "always" also after it exits cleanly.
    restart: RestartPolicy = "on-failure"
    start_limit: int = 5
    start_limit_interval: float = 300.0
    backoff: float = 1.0
    backoff_max: float = 60.0
    # Issue 11. What the log shows of cmd/cmd_stop: ${env.*} as written (None: the
    # same as cmd, which has none). The variables the engine must not inherit:
    # those auth names, and the other models' api_key_env/admin_key_env.
    cmd_shown: tuple[str, ...] | None = None
    cmd_stop_shown: tuple[str, ...] | None = None
    env_drop: frozenset[str] = frozenset()
    # Issue 12. An engine that takes a share of the device at start-up (vLLM, SGLang).
    share: MemoryShare | None = None
    # Issue 14. Request parameters, and other ids over this engine with their own.
    params: Params = field(default_factory=Params)
    variants: Mapping[str, VariantSpec] = field(default_factory=lambda: MappingProxyType({}))
    # Issue 15. What serves a request this model cannot serve, and when.
    fallbacks: tuple[str, ...] = ()
    fallback_on: FallbackOn = field(default_factory=FallbackOn)

    @property
    def cmd_display(self) -> str:
        """``cmd`` as the logs show it: no ``${env.*}`` value, ``${PORT}`` unrendered."""
        return " ".join(self.cmd if self.cmd_shown is None else self.cmd_shown)

    @property
    def cmd_stop_display(self) -> str:
        """``cmd_stop`` as the logs show it (empty without one)."""
        shown = self.cmd_stop if self.cmd_stop_shown is None else self.cmd_stop_shown
        return " ".join(shown or ())

    # The model's own keys over the server's (``load_config`` resolves them).
    timeouts: Timeouts = field(default_factory=lambda: ServerSpec().timeouts)

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
class Listed:
    """One name clients see in a model list: ``id`` is what they send, ``model`` the
    model whose engine serves it (``alias_of`` / ``variant_of`` say how they relate)."""

    id: str
    model: str
    name: str
    alias_of: str | None = None
    variant_of: str | None = None
    members: tuple[str, ...] = ()  # a virtual id's models (``model`` is the id itself)

    @property
    def virtual(self) -> bool:
        return bool(self.members)


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
    # Issue 15: other swapyards this one routes to, by name.
    peers: Mapping[str, PeerSpec] = field(default_factory=lambda: MappingProxyType({}))
    virtual: Mapping[str, VirtualSpec] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def aliases(self) -> Mapping[str, str]:
        """alias → model id (a variant's aliases: its model's id)."""
        return {
            a: m.id
            for m in self.models.values()
            for a in (*m.aliases, *(a for v in m.variants.values() for a in v.aliases))
        }

    def resolve(self, name: str) -> str | None:
        """The model id that ``name`` (a model's or a variant's id or alias) refers
        to, or None. A variant gives its model's id: its engine."""
        if name in self.models:
            return name
        variant = self.variant(name)
        if variant is not None:
            return variant.model
        return self.aliases.get(name)

    def variant(self, name: str) -> VariantSpec | None:
        """The variant ``name`` (its id or one of its aliases) refers to, or None."""
        for m in self.models.values():
            for v in m.variants.values():
                if name == v.id or name in v.aliases:
                    return v
        return None

    def params(self, name: str) -> Params:
        """The request parameters for ``name``: its variant's, else its model's."""
        variant = self.variant(name)
        if variant is not None:
            return variant.params
        model = self.resolve(name)
        return self.models[model].params if model is not None else Params()

    def listed(self, name: str) -> Listed | None:
        """How ``name`` shows in a model list (whether or not it is listed), or None."""
        model = self.resolve(name)
        if model is None:
            return None
        m = self.models[model]
        variant = self.variant(name)
        if variant is not None:
            alias_of = None if name == variant.id else variant.id
            return Listed(name, model, variant.name or variant.id, alias_of, variant_of=model)
        return Listed(name, model, m.name or model, None if name == model else model)

    def listing(
        self, allowed: AbstractSet[str] | None = None, *, virtual: bool = False
    ) -> list[Listed]:
        """What every model list shows (``/v1/models``, Ollama's ``/api/tags``...), in
        config order: each model that is not ``unlisted``, then its aliases when
        ``server.list_aliases``, then its variants (even of an unlisted model: a
        model may be offered only through its presets) and their aliases.
        ``allowed``: a key's allow-list, model, variant and virtual ids (a model's
        id allows its variants). With ``virtual``, the virtual ids come last (issue
        15): entries with ``members`` and no engine of their own, which only a
        front that serves them through ``exchange.serve`` may list."""
        out: list[Listed] = []
        if virtual:
            out = self.listing(allowed)
            out.extend(
                Listed(v.id, v.id, v.name or v.id, members=v.models)
                for v in self.virtual.values()
                if allowed is None or v.id in allowed
            )
            return out
        for m in self.models.values():
            whole = allowed is None or m.id in allowed
            if whole and not m.unlisted:
                out.append(Listed(m.id, m.id, m.name or m.id))
                if self.server.list_aliases:
                    out.extend(Listed(a, m.id, m.name or m.id, alias_of=m.id) for a in m.aliases)
            for v in m.variants.values():
                if not whole and v.id not in (allowed or ()):
                    continue
                name = v.name or v.id
                out.append(Listed(v.id, m.id, name, variant_of=m.id))
                if self.server.list_aliases:
                    out.extend(
                        Listed(a, m.id, name, alias_of=v.id, variant_of=m.id) for a in v.aliases
                    )
        return out
