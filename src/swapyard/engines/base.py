"""What an engine adapter is: how to launch an engine kind, how to tell it is
ready, and the cheaper transitions it offers instead of stop/start.

Adapters are plain values built from the engines' documented interfaces. They do
no I/O of their own except through ``Control``, which the engine's owner task
hands them inside a helper task (house style 3): an adapter never touches the
process, the state or the scheduler.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

import aiohttp

EngineKind = Literal["command", "llamacpp", "vllm", "sglang", "tabbyapi", "ollama", "openai"]
ENGINE_KINDS: tuple[str, ...] = (
    "command", "llamacpp", "vllm", "sglang", "tabbyapi", "ollama", "openai",
)  # fmt: skip
PORT = "${PORT}"
LOCAL = "http://127.0.0.1:${PORT}"
ProgressFn = Callable[[float | None, str], None]


@dataclass(frozen=True, slots=True)
class EngineFields:
    """A model's high-level engine settings, as the config gives them."""

    kind: str
    model_id: str
    model: str | None = None
    context: int | None = None
    quantization: str | None = None
    tensor_parallel: int = 1
    gpu_memory_fraction: float | None = None
    extra_args: tuple[str, ...] = ()
    launcher: tuple[str, ...] | None = None
    base_url: str | None = None
    api_key: str | None = None
    admin_key: str | None = None
    sleep_level: int = 1
    fast_swap: bool = True

    @property
    def served_name(self) -> str:
        return self.model_id


@dataclass(frozen=True, slots=True)
class MemoryShare:
    """How an engine that takes a share of the device's total memory at start-up
    (and fills it with KV cache) is told that share. swapyard passes ``flag`` with
    the share of the need it placed, unless the user ``declared`` one (config or
    ``extra_args``), which is then passed as written and sets the need.

    ``of_free``: the share is of the memory free when the engine starts (SGLang's
    ``--mem-fraction-static``: its KV pool is what is free after its weights, less
    ``(1 - share) x`` what was free before them), so it is ``need / free``; else
    (vLLM's ``--gpu-memory-utilization``) of the device's total: ``need / total``."""

    flag: str
    of_free: bool = False
    declared: float | None = None


@dataclass(frozen=True, slots=True)
class Launch:
    """What the config needs to run and reach one engine. ``cmd`` and ``proxy`` may
    hold ``${PORT}``; an empty ``cmd`` means a remote engine with no process."""

    cmd: tuple[str, ...]
    proxy: str = LOCAL
    check_endpoint: str = "/health"
    check_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    upstream_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    upstream_model: str | None = None  # the name the engine knows the model by
    stream_usage: bool = False  # honours stream_options.include_usage
    share: MemoryShare | None = None  # pre-allocates a share of the device's memory
    # Serves Anthropic's /v1/messages itself (passed through byte for byte); else
    # swapyard translates it to chat completions (issue 14). An engine swapyard does
    # not know (a raw ``cmd``) gets every route as sent.
    messages_api: bool = True


class FastSwapFailed(Exception):
    """A sleep, wake, load or unload call was refused or failed; the caller falls
    back to stop/start."""


class Control:
    """HTTP calls to one running engine, for adapters."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        fields: EngineFields,
        headers: Mapping[str, str] | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.fields = fields
        self.headers = dict(headers or {})
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer (or None); ``FastSwapFailed`` on a
        status other than 2xx or a connection error."""
        try:
            async with self.http.request(
                method, self.base + path, json=body, params=params,
                headers=self.headers, timeout=self.timeout,
            ) as r:  # fmt: skip
                data = await r.read()
                if r.status // 100 != 2:
                    text = data.decode("utf-8", "replace")[:300]
                    raise FastSwapFailed(f"{method} {path}: HTTP {r.status}: {text}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise FastSwapFailed(f"{method} {path}: {exc or type(exc).__name__}") from exc
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    async def events(self, method: str, path: str, body: Any = None) -> AsyncIterator[Any]:
        """The JSON payloads of a server-sent-events answer, as they arrive."""
        try:
            async with self.http.request(
                method, self.base + path, json=body, headers=self.headers, timeout=self.timeout
            ) as r:
                if r.status // 100 != 2:
                    text = (await r.read()).decode("utf-8", "replace")[:300]
                    raise FastSwapFailed(f"{method} {path}: HTTP {r.status}: {text}")
                async for raw in r.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return
                    try:
                        yield json.loads(payload)
                    except ValueError:
                        continue
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise FastSwapFailed(f"{method} {path}: {exc or type(exc).__name__}") from exc


class FastSwap(Protocol):
    """A cheaper way out of and back into ``ready`` than stop/start. The process
    stays; ``sleep`` frees (most of) its GPU memory, ``wake`` brings it back."""

    mode: str  # shown in logs and metrics: "sleep", "memory-saver", "unload", ...
    gpu_kept: int  # bytes still held on each of its GPUs while asleep (CUDA context...)
    host_held: float  # share of the need held in host RAM while asleep

    async def sleep(self, ctl: Control) -> None: ...

    async def wake(self, ctl: Control, progress: ProgressFn) -> None: ...


class Adapter(Protocol):
    kind: str

    def launch(self, f: EngineFields) -> Launch: ...

    def fast(self, f: EngineFields) -> FastSwap | None:
        """The fast swap mode this engine offers with these settings, if any."""
        ...

    def needs_warm(self, f: EngineFields) -> bool:
        """Whether ``warm`` must run after the health check of a cold start."""
        ...

    async def warm(self, ctl: Control, progress: ProgressFn) -> None:
        """After the health check passes and before ``ready``: load the model where
        the engine does that on request (Ollama)."""
        ...

    def log_progress(self, line: str) -> tuple[float | None, str] | None:
        """Load progress read from one log line, if the engine reports it there."""
        ...


class BaseAdapter:
    """Defaults: no fast mode, nothing to warm, no progress in the log."""

    kind = "command"

    def launch(self, f: EngineFields) -> Launch:  # pragma: no cover - overridden
        raise NotImplementedError

    def fast(self, f: EngineFields) -> FastSwap | None:
        return None

    def needs_warm(self, f: EngineFields) -> bool:
        return False

    async def warm(self, ctl: Control, progress: ProgressFn) -> None:
        return None

    def log_progress(self, line: str) -> tuple[float | None, str] | None:
        return None


# What engines print when a start fails for lack of GPU memory (the last lines of
# their output): CUDA's and PyTorch's out-of-memory errors (every engine), vLLM's
# free-memory check and cache-block sizing, SGLang's static-memory check,
# llama.cpp's failed buffer allocation, ExLlama/TabbyAPI's VRAM messages.
_OUT_OF_MEMORY = re.compile(
    r"out of memory|OutOfMemoryError|is less than desired GPU memory utilization"
    r"|No available memory for the cache blocks|Not enough memory\. Please try to increase"
    r"|failed to allocate \S*CUDA\S* buffer|insufficient (?:VRAM|GPU memory)",
    re.IGNORECASE,
)


def out_of_memory_line(lines: Sequence[str]) -> str | None:
    """The line of an engine's last output that says it ran out of GPU memory."""
    for line in reversed(lines):
        if _OUT_OF_MEMORY.search(line):
            return line.strip()
    return None


def declared_share(f: EngineFields, name: str) -> float | None:
    """The share the user gave: ``gpu_memory_fraction``, else ``name`` in ``extra_args``."""
    if f.gpu_memory_fraction is not None:
        return f.gpu_memory_fraction
    args = f.extra_args
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == name and i + 1 < len(args) else None
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def flag(args: list[str], name: str, value: object) -> None:
    """Append ``name value`` unless ``value`` is None."""
    if value is not None:
        args += [name, str(value)]
