"""Ollama: one ``ollama serve`` per model on its own port (``OLLAMA_HOST``), or a
remote Ollama (``base_url``) with no process. Ready once ``GET /api/tags``
answers and the model is loaded: an empty ``POST /api/generate`` loads it with
``keep_alive: -1``; ``keep_alive: 0`` unloads it (the fast swap), and ``GET
/api/ps`` says what is loaded. The model field of each request is rewritten to
the Ollama tag (``model:``).
"""

from __future__ import annotations

import asyncio

from swapyard.engines.base import (
    PORT,
    BaseAdapter,
    Control,
    EngineFields,
    FastSwap,
    FastSwapFailed,
    Launch,
    ProgressFn,
)

UNLOAD_WAIT = 10.0
# Ollama serves Anthropic's /v1/messages itself since v0.14.0
# (docs.ollama.com/api/anthropic-compatibility); an older one needs `anthropic: translate`.
MESSAGES_API = True


async def _load(ctl: Control, progress: ProgressFn) -> None:
    progress(None, f"ollama is loading {ctl.fields.model}")
    await ctl.call("POST", "/api/generate", {"model": ctl.fields.model, "keep_alive": -1})


class OllamaKeepAlive:
    mode = "keep-alive"
    gpu_kept = 0
    host_held = 0.0

    async def sleep(self, ctl: Control) -> None:
        await ctl.call("POST", "/api/generate", {"model": ctl.fields.model, "keep_alive": 0})
        loop = asyncio.get_running_loop()
        until = loop.time() + UNLOAD_WAIT
        while loop.time() < until:
            ps = await ctl.call("GET", "/api/ps")
            names = {m.get("name") for m in (ps or {}).get("models", []) if isinstance(m, dict)}
            if ctl.fields.model not in names:
                return
            await asyncio.sleep(0.05)
        raise FastSwapFailed(f"{ctl.fields.model} still loaded {UNLOAD_WAIT:g} s after unload")

    async def wake(self, ctl: Control, progress: ProgressFn) -> None:
        await _load(ctl, progress)


class Ollama(BaseAdapter):
    kind = "ollama"

    def launch(self, f: EngineFields) -> Launch:
        if not f.model:
            raise ValueError("engine ollama needs `model:` (the Ollama tag, e.g. qwen2.5:7b)")
        if f.base_url:
            return Launch(
                (), proxy=f.base_url, check_endpoint="/api/tags", upstream_model=f.model,
                messages_api=MESSAGES_API,
            )  # fmt: skip
        env = {"OLLAMA_HOST": f"127.0.0.1:{PORT}", "OLLAMA_KEEP_ALIVE": "-1"}
        if f.context:
            env["OLLAMA_CONTEXT_LENGTH"] = str(f.context)
        return Launch(
            (*(f.launcher or ("ollama",)), "serve", *f.extra_args),
            check_endpoint="/api/tags",
            env=env,
            upstream_model=f.model,
            stream_usage=True,
            messages_api=MESSAGES_API,
        )

    def fast(self, f: EngineFields) -> FastSwap | None:
        return OllamaKeepAlive() if f.fast_swap and not f.base_url else None

    def needs_warm(self, f: EngineFields) -> bool:
        return not f.base_url

    async def warm(self, ctl: Control, progress: ProgressFn) -> None:
        await _load(ctl, progress)
