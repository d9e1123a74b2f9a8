"""Protocol-faithful fakes of vLLM, SGLang, TabbyAPI and Ollama, for the engines
that need a GPU. Each takes the documented command line of the real one (unknown
flags are refused, as the real parsers do), serves the documented endpoints the
adapters use, and refuses what the real one refuses::

    python -m swapyard.testing.engine_fakes vllm serve MODEL --host H --port P ...
    python -m swapyard.testing.engine_fakes sglang --model-path M --port P ...
    python -m swapyard.testing.engine_fakes tabbyapi --port P --model-dir D --model-name N
    OLLAMA_HOST=127.0.0.1:P python -m swapyard.testing.engine_fakes ollama serve

Generation is the fake engine's (``swapyard.testing.fake_engine``). Knobs that
are not flags of the real engines come from the environment, so the command line
stays the real one: ``FAKE_LOAD_S`` (cold load), ``FAKE_WAKE_S`` (wake / resume /
in-process load), ``FAKE_SLEEP_S``, ``FAKE_TPS`` (tokens per second),
``FAKE_TABBY_ADMIN_KEY``.

GPU memory, when a memory mode is on (``SWAPYARD_SIMULATED_GPU`` names the
simulated GPU, or ``FAKE_GPU=cuda`` takes real CUDA memory; see
``swapyard.testing.gpu_memory`` for the mode, the device and the model's footprint
with its knobs ``FAKE_WEIGHTS_MIB``, ``FAKE_KV_PER_TOKEN_KIB``, ``FAKE_CONTEXT_MIB``,
``FAKE_ACTIVATION_MIB``): each fake takes its memory at start-up before its health
passes, holds it as the real engine does, and dies (exit 1, the real engine's
message as its last line) when it cannot:

- vLLM: refuses to start when the device's free memory is below
  ``--gpu-memory-utilization`` (0.9) × total; takes context + weights + activation
  peak, then the rest of util × total as KV cache, refusing when none is left or it
  cannot hold ``--max-model-len`` tokens. A sleep (either level) keeps only the
  context (level 1 keeps the weights in host RAM); a wake that cannot take the
  memory back answers 500 with CUDA's out-of-memory message and stays asleep.
- SGLang: takes context + weights + activation, then as KV cache what is free
  beyond ``(1 − --mem-fraction-static (0.88)) × total``, refusing when that is
  nothing. Released memory keeps only the context; resuming may answer 500 (OOM).
- TabbyAPI: takes context + weights + ``--cache-size`` (``--max-seq-len``) tokens
  of cache, at start-up or on ``/v1/model/load`` (an SSE ``error`` event when it
  does not fit); ``/v1/model/unload`` keeps only the context.
Without a memory mode, no memory is taken or checked.

Documented behaviour reproduced:
- vLLM: ``/sleep`` and ``/wake_up`` exist only with ``--enable-sleep-mode`` and
  ``VLLM_SERVER_DEV_MODE=1`` (404 otherwise); ``/is_sleeping``; a level-2 sleep
  discards the weights, so waking without ``/collective_rpc reload_weights``
  leaves an engine that cannot generate; a sleeping engine does not generate.
- SGLang: ``/release_memory_occupation`` needs ``--enable-memory-saver`` and is
  refused while requests are running; released weights come back only with
  ``--enable-weights-cpu-backup``.
- TabbyAPI: ``GET /v1/model`` fails while no model is loaded; ``/v1/model/load``
  streams ``module``/``modules`` progress and ``/v1/model/load|unload`` need the
  admin key unless auth is disabled.
- Ollama: ``/api/tags``, ``/api/ps``, ``/api/generate`` with an empty prompt loads
  (``keep_alive`` < 0 or > 0) or unloads (``keep_alive: 0``); a chat request for a
  model not loaded loads it first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Container, Iterable
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from aiohttp import web

from swapyard.testing.fake_engine import DEFAULT_TEXT, FakeEngine, say
from swapyard.testing.gpu_memory import (
    Footprint,
    GpuError,
    GpuMemory,
    OutOfMemory,
    from_env,
    gib,
    take_all,
)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _generator(model_id: str) -> FakeEngine:
    ns = argparse.Namespace(
        model_id=model_id, text=DEFAULT_TEXT, max_tokens=16, load_delay=0.0,
        tokens_per_second=_env_float("FAKE_TPS", 1000.0), memory_mib=0,
        never_healthy=False, crash_after_tokens=0, cumulative=False,
        close_after_stream=False, error_status=0, close_delimited=False,
        stall_before_first_byte=0.0, stall_after_tokens=0, reset_after_tokens=0,
        echo_body=False,
    )  # fmt: skip
    return FakeEngine(ns)


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status)


def die(message: str) -> NoReturn:
    """End as a real engine fails at start-up: ``message`` is the last line out."""
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


class Base:
    """Loading, generation with an in-flight count, and the common routes.

    With a memory mode (``mem``), the load is ``boot()``: health passes once it
    has taken the memory, and a ``GpuError`` on the way ends the process."""

    def __init__(self, served: str, model: str | None) -> None:
        self.served = served
        self.model_path = model
        self.gen = _generator(served)
        self.mem: GpuMemory | None = from_env()
        load_s = _env_float("FAKE_LOAD_S", 0.0)
        self.loaded_at = time.monotonic() + load_s if self.mem is None else float("inf")
        self.inflight = 0
        self.parts: dict[str, int] = {}  # bytes held awake beyond the context, by tag

    async def boot(self, mem: GpuMemory, need: Footprint) -> None:
        """Take the engine's memory at start-up, FAKE_LOAD_S included."""
        raise NotImplementedError

    async def _booting(self, app: web.Application) -> AsyncIterator[None]:
        task = None if self.mem is None else asyncio.create_task(self._boot_or_die(self.mem))
        yield
        if task is not None:
            task.cancel()

    async def _boot_or_die(self, mem: GpuMemory) -> None:
        try:
            await self.boot(mem, Footprint.of(self.model_path))
        except GpuError as exc:
            die(str(exc))
        except Exception:  # a model folder it cannot read, say: a crash, as the real ones
            die(traceback.format_exc().rstrip())
        self.loaded_at = time.monotonic()

    def let_go(self, parts: Iterable[str], *, to_host: Container[str] = ()) -> None:
        """Free ``parts`` of what is held (the context stays; a part not held is
        skipped), copying those named in ``to_host`` to host RAM."""
        if self.mem is not None:
            for part in parts:
                self.mem.drop(part, to_host=part in to_host)

    def take_back(self, parts: Iterable[str]) -> web.Response | None:
        """Take ``parts`` again, all or none; when they do not fit, the HTTP 500 with
        CUDA's message to answer (and nothing is taken)."""
        if self.mem is not None:
            try:
                take_all(self.mem, {p: self.parts[p] for p in parts})
            except OutOfMemory as exc:
                say(str(exc))
                return _err(500, str(exc))
        return None

    def loaded(self) -> bool:
        return time.monotonic() >= self.loaded_at

    def refusal(self) -> web.Response | None:
        """Why generation is refused now (None: it is not)."""
        return None if self.loaded() else _err(503, "model is loading")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            # vLLM, SGLang and TabbyAPI are FastAPI apps: a body sent as a form
            # (``curl -d``) is not read as JSON but refused.
            return web.json_response(
                {"detail": [{"type": "model_attributes_type", "loc": ["body"],
                             "msg": "Input should be a valid dictionary or object to extract "
                                    "fields from"}]},
                status=422,
            )  # fmt: skip
        refused = self.refusal()
        if refused is not None:
            return refused
        self.inflight += 1
        try:
            return await self.gen.completions(request)
        finally:
            self.inflight -= 1

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({}) if self.loaded() else _err(503, "loading")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.served}]})

    def routes(self, app: web.Application) -> None:
        app.cleanup_ctx.append(self._booting)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)


class Vllm(Base):
    # What each sleep tag holds: the activation peak comes back with the cache.
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "weights": ("weights",),
        "kv_cache": ("kv_cache", "activation"),
    }

    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__(a.served_model_name or a.model, a.model)
        self.args = a
        self.mapped = {"weights": True, "kv_cache": True}  # GPU memory held, by tag
        self.weights_ok = True

    async def boot(self, mem: GpuMemory, need: Footprint) -> None:
        """vLLM's ``determine_available_memory``: the KV cache is what is left of
        util × total once weights and the profiled activation peak are in."""
        util = 0.9 if self.args.gpu_memory_utilization is None else self.args.gpu_memory_utilization
        mem.open(need.context)
        total, free = mem.total(), mem.free()
        wanted = int(util * total)
        if free < wanted:
            raise GpuError(
                f"ValueError: Free memory on device cuda:0 ({gib(free)}/{gib(total)} GiB) on "
                f"startup is less than desired GPU memory utilization ({util:.2f}, "
                f"{gib(wanted)} GiB). Decrease GPU memory utilization or reduce GPU memory "
                "used by other processes."
            )
        take_all(mem, {"weights": need.weights, "activation": need.activation})
        await asyncio.sleep(_env_float("FAKE_LOAD_S", 0.0))
        kv = wanted - (need.context + need.weights + need.activation)
        if kv <= 0:
            raise GpuError(
                "ValueError: No available memory for the cache blocks. Try increasing "
                "`gpu_memory_utilization` when initializing the engine."
            )
        max_len = self.args.max_model_len or need.max_context
        if kv < need.kv_per_token * max_len:
            raise GpuError(
                "ValueError: To serve at least one request with the models's max seq len "
                f"({max_len}), ({gib(need.kv_per_token * max_len)} GiB KV cache is needed, "
                f"which is larger than the available KV cache memory ({gib(kv)} GiB). Based "
                "on the available memory, the estimated maximum model length is "
                f"{kv // need.kv_per_token}. Try increasing `gpu_memory_utilization` or "
                "decreasing `max_model_len` when initializing the engine."
            )
        mem.take("kv_cache", kv)
        self.parts = {"weights": need.weights, "activation": need.activation, "kv_cache": kv}

    @property
    def sleeping(self) -> bool:
        return not all(self.mapped.values())

    def refusal(self) -> web.Response | None:
        if self.sleeping:
            return _err(503, "the engine is sleeping")
        if not self.weights_ok:
            return _err(500, "weights were discarded by sleep level 2 and not reloaded")
        return super().refusal()

    async def sleep(self, request: web.Request) -> web.Response:
        level = int(request.query.get("level", "1"))
        if level not in (1, 2):
            return _err(400, f"invalid sleep level {level}")
        await asyncio.sleep(_env_float("FAKE_SLEEP_S", 0.0))
        awake = [p for t, on in self.mapped.items() if on for p in self.PARTS[t]]
        self.let_go(awake, to_host={"weights"} if level == 1 else ())
        self.mapped = {"weights": False, "kv_cache": False}
        self.weights_ok = level == 1  # level 1 keeps a copy in host RAM
        say(f"sleeping at level {level}")
        return web.Response(status=200)

    async def wake_up(self, request: web.Request) -> web.Response:
        # In the order asked, once each.
        tags = list(dict.fromkeys(request.query.getall("tags", []) or self.mapped))
        # FAKE_WAKE_S for the whole engine; each tag is half of it.
        await asyncio.sleep(_env_float("FAKE_WAKE_S", 0.0) * len(tags) / len(self.mapped))
        asleep = [p for t in tags if not self.mapped.get(t) for p in self.PARTS.get(t, ())]
        if (failed := self.take_back(asleep)) is not None:
            return failed  # still asleep
        for t in tags:
            self.mapped[t] = True
        say(f"wake_up tags={','.join(tags)}")
        return web.Response(status=200)

    async def collective_rpc(self, request: web.Request) -> web.Response:
        doc = await request.json()
        if doc.get("method") != "reload_weights":
            return _err(400, f"unknown method {doc.get('method')!r}")
        if not self.mapped["weights"]:
            return _err(400, "wake up the weights before reloading them")
        self.weights_ok = True
        say("reloaded weights")
        return web.json_response({"results": [None]})

    async def is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": bool(self.sleeping)})

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        if self.args.enable_sleep_mode and os.environ.get("VLLM_SERVER_DEV_MODE") == "1":
            app.router.add_post("/sleep", self.sleep)
            app.router.add_post("/wake_up", self.wake_up)
            app.router.add_post("/collective_rpc", self.collective_rpc)
            app.router.add_get("/is_sleeping", self.is_sleeping)


class Sglang(Base):
    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__(a.served_model_name or a.model_path, a.model_path)
        self.args = a
        self.released = False
        self.weights_ok = True

    async def boot(self, mem: GpuMemory, need: Footprint) -> None:
        """SGLang's static pool (``ModelRunner.profile_max_num_token``): the KV cache
        is what is free after the weights, less (1 − mem_fraction_static) × what
        was free before them (SGLang's ``total_gpu_memory`` is the memory free at
        its start, not the device's), so it holds about the fraction of what it
        found free."""
        frac = 0.88 if self.args.mem_fraction_static is None else self.args.mem_fraction_static
        mem.open(need.context)
        free_at_start = mem.free()
        take_all(mem, {"weights": need.weights, "activation": need.activation})
        await asyncio.sleep(_env_float("FAKE_LOAD_S", 0.0))
        rest = mem.free() - int(free_at_start * (1 - frac))
        if rest <= 0:
            raise GpuError(
                "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."
            )
        mem.take("kv_cache", rest)
        self.parts = {"weights": need.weights, "activation": need.activation, "kv_cache": rest}

    def refusal(self) -> web.Response | None:
        if self.released:
            return _err(503, "memory is released")
        if not self.weights_ok:
            return _err(500, "weights were released without a CPU backup")
        return super().refusal()

    async def release(self, request: web.Request) -> web.Response:
        if not self.args.enable_memory_saver:
            return _err(400, "release_memory_occupation needs --enable-memory-saver")
        if self.inflight:
            return _err(400, f"cannot release memory: {self.inflight} requests are running")
        await asyncio.sleep(_env_float("FAKE_SLEEP_S", 0.0))
        self.let_go(self.parts, to_host={"weights"} if self.args.enable_weights_cpu_backup else ())
        self.released = True
        self.weights_ok = bool(self.args.enable_weights_cpu_backup)
        say("released memory occupation")
        return web.json_response({"success": True})

    async def resume(self, request: web.Request) -> web.Response:
        await asyncio.sleep(_env_float("FAKE_WAKE_S", 0.0))
        if self.released and (failed := self.take_back(self.parts)) is not None:
            return failed  # still released
        self.released = False
        say("resumed memory occupation")
        return web.json_response({"success": True})

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": self.args.model_path, "is_generation": True})

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_get("/get_model_info", self.model_info)
        app.router.add_post("/release_memory_occupation", self.release)
        app.router.add_post("/resume_memory_occupation", self.resume)


class Tabby(Base):
    MODULES = 10

    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__(a.model_name, a.model_name and str(Path(a.model_dir) / a.model_name))
        self.args = a
        self.model: str | None = a.model_name  # loading at start-up, ready after FAKE_LOAD_S
        self.admin = os.environ.get("FAKE_TABBY_ADMIN_KEY", "")
        self.auth = str(a.disable_auth).lower() not in ("true", "1", "yes")

    def refusal(self) -> web.Response | None:
        if self.model is None:
            return _err(400, "No models are currently loaded.")
        return super().refusal()

    async def boot(self, mem: GpuMemory, need: Footprint) -> None:
        mem.open(need.context)
        if self.model is not None:
            self._take_model(mem, need, {})
        await asyncio.sleep(_env_float("FAKE_LOAD_S", 0.0))

    def _take_model(self, mem: GpuMemory, need: Footprint, doc: dict[str, Any]) -> None:
        """Weights and a cache of ``cache_size`` tokens (the load request's, else the
        command line's, else ``max_seq_len``, else the model's context)."""
        seq = doc.get("max_seq_len") or self.args.max_seq_len or need.max_context
        cache = (doc.get("cache_size") or self.args.cache_size or seq) * need.kv_per_token
        take_all(mem, {"weights": need.weights, "cache": cache})
        self.parts = {"weights": need.weights, "cache": cache}

    def _admin_refused(self, request: web.Request) -> web.Response | None:
        if self.auth and request.headers.get("x-admin-key") != self.admin:
            return _err(401, "Invalid admin key")
        return None

    async def current(self, request: web.Request) -> web.Response:
        if self.auth and request.headers.get("x-admin-key", request.headers.get("x-api-key")) != (
            self.admin
        ):
            return _err(401, "Invalid API key")
        if self.model is None or not self.loaded():
            return _err(400, "No models are currently loaded.")
        return web.json_response({"id": self.model, "object": "model", "owned_by": "tabbyAPI"})

    async def unload(self, request: web.Request) -> web.Response:
        if (refused := self._admin_refused(request)) is not None:
            return refused
        self.let_go(self.parts)
        self.model = None
        say("unloaded model")
        return web.Response(status=200)

    async def load(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._admin_refused(request)) is not None:
            return refused
        doc = await request.json()
        name = doc.get("model_name")
        if not name:
            return _err(400, "model_name is required")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self.mem is not None:
            self.let_go(self.parts)  # the loaded model goes first
            self.model = None
            try:
                self._take_model(self.mem, Footprint.of(str(Path(self.args.model_dir) / name)), doc)
            except OutOfMemory as exc:
                say(f"loading {name} failed: {exc}")
                await resp.write(b"data: " + json.dumps({"error": {"message": str(exc)}}).encode())
                await resp.write(b"\n\n")
                return resp
        step = _env_float("FAKE_WAKE_S", 0.0) / self.MODULES
        for i in range(1, self.MODULES + 1):
            await asyncio.sleep(step)
            status = "finished" if i == self.MODULES else "processing"
            ev = {"model_type": "model", "module": i, "modules": self.MODULES, "status": status}
            await resp.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
        self.model = name
        self.loaded_at = time.monotonic()
        say(f"loaded model {name}")
        return resp

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_get("/v1/model", self.current)
        app.router.add_post("/v1/model/load", self.load)
        app.router.add_post("/v1/model/unload", self.unload)


class Ollama:
    """One ``ollama serve``: many models, loaded on demand."""

    def __init__(self) -> None:
        self.loaded: dict[str, float] = {}  # name -> when loaded

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": []})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": n, "model": n} for n in self.loaded]})

    async def _load(self, name: str) -> None:
        if name not in self.loaded:
            await asyncio.sleep(_env_float("FAKE_WAKE_S", 0.0))
            self.loaded[name] = time.monotonic()
            say(f"loaded {name}")

    async def generate(self, request: web.Request) -> web.Response:
        doc = await request.json()
        name = doc.get("model")
        if not name:
            return _err(400, "model is required")
        if doc.get("prompt"):
            return _err(501, "the fake only loads and unloads through /api/generate")
        if doc.get("keep_alive") == 0:
            self.loaded.pop(name, None)
            say(f"unloaded {name}")
            return web.json_response({"model": name, "done": True, "done_reason": "unload"})
        await self._load(name)
        return web.json_response({"model": name, "done": True, "done_reason": "load"})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        name = doc.get("model", "")
        await self._load(name)  # as Ollama does: a request loads its model first
        return await _generator(name).completions(request)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_get("/api/version", lambda r: _ok({"version": "0.0.0-fake"}))
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)


async def _ok(doc: dict[str, Any]) -> web.Response:
    return web.json_response(doc)


def parse(argv: list[str]) -> tuple[str, argparse.Namespace]:
    if not argv:
        raise SystemExit("usage: engine_fakes {vllm,sglang,tabbyapi,ollama} ...")
    kind, rest = argv[0], argv[1:]
    p = argparse.ArgumentParser(prog=kind)
    if kind == "vllm":
        p.add_argument("command", choices=["serve"])
        p.add_argument("model")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--served-model-name")
        p.add_argument("--max-model-len", type=int)
        p.add_argument("--quantization")
        p.add_argument("--tensor-parallel-size", type=int, default=1)
        p.add_argument("--gpu-memory-utilization", type=float)
        p.add_argument("--enable-sleep-mode", action="store_true")
    elif kind == "sglang":
        p.add_argument("--model-path", required=True)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=30000)
        p.add_argument("--served-model-name")
        p.add_argument("--context-length", type=int)
        p.add_argument("--quantization")
        p.add_argument("--tp-size", type=int, default=1)
        p.add_argument("--mem-fraction-static", type=float)
        p.add_argument("--enable-memory-saver", action="store_true")
        p.add_argument("--enable-weights-cpu-backup", action="store_true")
    elif kind == "tabbyapi":
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=5000)
        p.add_argument("--model-dir", default="models")
        p.add_argument("--model-name")
        p.add_argument("--max-seq-len", type=int)
        p.add_argument("--cache-size", type=int)
        p.add_argument("--tensor-parallel")
        p.add_argument("--gpu-split-auto")
        p.add_argument("--disable-auth", default="false")
    elif kind == "ollama":
        p.add_argument("command", choices=["serve"])
    else:
        raise SystemExit(f"unknown engine {kind!r}")
    return kind, p.parse_args(rest)


def main(argv: list[str] | None = None) -> None:
    kind, a = parse(sys.argv[1:] if argv is None else argv)
    app = web.Application()
    if kind == "ollama":
        host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
        Ollama().routes(app)
    else:
        host, port = a.host, str(a.port)
        engine = {"vllm": Vllm, "sglang": Sglang, "tabbyapi": Tabby}[kind](a)
        engine.routes(app)
    say(f"fake {kind} pid {os.getpid()} on {host}:{port}: {' '.join(sys.argv[1:])}")
    web.run_app(app, host=host, port=int(port), print=None, access_log=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
