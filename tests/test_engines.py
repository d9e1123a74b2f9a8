"""Engine kinds: generated launch commands against the documented flags, and each
GPU engine's adapter driven through start, ready, request, fast swap out, fast swap
in and stop against its protocol-faithful fake (real processes, real sockets)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import aiohttp
import pytest

from helpers import config, eventually, load_counts
from swapyard.engines import EngineFields, adapter
from swapyard.engines.base import Control, FastSwapFailed
from swapyard.engines.llamacpp import LlamaCpp
from swapyard.errors import ConfigError
from swapyard.ports import PortAllocator
from swapyard.process.state import EngineState
from swapyard.router import model_terms
from swapyard.testing import running_server
from swapyard.testing.engine_fakes import parse

FAKES = [sys.executable, "-m", "swapyard.testing.engine_fakes"]


def launch_argv(kind: str, **fields: Any) -> list[str]:
    f = EngineFields(kind, "m1", **fields)
    return list(adapter(kind).launch(f).cmd)


def test_vllm_command_uses_the_documented_flags() -> None:
    argv = launch_argv(
        "vllm", model="Qwen/Qwen2.5-7B-Instruct-AWQ", context=8192, quantization="awq",
        tensor_parallel=2, gpu_memory_fraction=0.85, extra_args=("--enforce-eager",),
    )  # fmt: skip
    assert argv == [
        "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--host", "127.0.0.1",
        "--port", "${PORT}", "--served-model-name", "m1", "--max-model-len", "8192",
        "--quantization", "awq", "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.85", "--enable-sleep-mode", "--enforce-eager",
    ]  # fmt: skip
    launch = adapter("vllm").launch(EngineFields("vllm", "m1", model="x"))
    assert launch.env == {"VLLM_SERVER_DEV_MODE": "1"}
    assert launch.check_endpoint == "/health"
    off = launch_argv("vllm", model="x", fast_swap=False)
    assert "--enable-sleep-mode" not in off


def test_sglang_command_uses_the_documented_flags() -> None:
    argv = launch_argv(
        "sglang", model="/models/qwen-awq", context=32768, quantization="awq_marlin",
        tensor_parallel=4, gpu_memory_fraction=0.8,
    )  # fmt: skip
    assert argv == [
        "python3", "-m", "sglang.launch_server", "--model-path", "/models/qwen-awq",
        "--host", "127.0.0.1", "--port", "${PORT}", "--served-model-name", "m1",
        "--context-length", "32768", "--quantization", "awq_marlin", "--tp-size", "4",
        "--mem-fraction-static", "0.8", "--enable-memory-saver",
        "--enable-weights-cpu-backup",
    ]  # fmt: skip


def test_tabbyapi_command_and_readiness() -> None:
    argv = launch_argv(
        "tabbyapi", model="/srv/models/Llama-3.3-70B-exl2-4.0bpw", context=16384,
        tensor_parallel=2, launcher=("/opt/tabbyAPI/venv/bin/python", "/opt/tabbyAPI/main.py"),
    )  # fmt: skip
    assert argv == [
        "/opt/tabbyAPI/venv/bin/python", "/opt/tabbyAPI/main.py", "--host", "127.0.0.1",
        "--port", "${PORT}", "--model-dir", "/srv/models",
        "--model-name", "Llama-3.3-70B-exl2-4.0bpw", "--max-seq-len", "16384",
        "--tensor-parallel", "true", "--gpu-split-auto", "true", "--disable-auth", "true",
    ]  # fmt: skip
    keyed = adapter("tabbyapi").launch(EngineFields("tabbyapi", "m1", model="a/b", admin_key="k"))
    assert "--disable-auth" not in keyed.cmd
    assert keyed.check_endpoint == "/v1/model"
    assert dict(keyed.check_headers) == {"x-admin-key": "k"}


def test_ollama_and_llamacpp_and_remote_launches() -> None:
    ol = adapter("ollama").launch(EngineFields("ollama", "m1", model="qwen2.5:7b", context=8192))
    assert list(ol.cmd) == ["ollama", "serve"]
    assert dict(ol.env) == {
        "OLLAMA_HOST": "127.0.0.1:${PORT}", "OLLAMA_KEEP_ALIVE": "-1",
        "OLLAMA_CONTEXT_LENGTH": "8192",
    }  # fmt: skip
    assert ol.check_endpoint == "/api/tags" and ol.upstream_model == "qwen2.5:7b"
    remote = adapter("ollama").launch(
        EngineFields("ollama", "m1", model="llama3:8b", base_url="http://gpu2:11434")
    )
    assert remote.cmd == () and remote.proxy == "http://gpu2:11434"
    argv = launch_argv("llamacpp", model="/m/a.gguf", context=4096, launcher=("llama-server",))
    assert argv == [
        "llama-server", "-m", "/m/a.gguf", "--host", "127.0.0.1", "--port", "${PORT}",
        "--alias", "m1", "-c", "4096",
    ]  # fmt: skip
    oa = adapter("openai").launch(
        EngineFields("openai", "m1", model="gpt-4o-mini", base_url="https://api.x/v1", api_key="s")
    )
    assert oa.proxy == "https://api.x" and oa.check_endpoint == "/v1/models"
    assert dict(oa.upstream_headers) == {"Authorization": "Bearer s"}


@pytest.mark.parametrize("kind", ["vllm", "sglang", "tabbyapi"])
def test_generated_commands_are_accepted_by_the_engines_parsers(kind: str) -> None:
    """The fakes parse with the real engines' flag sets and refuse unknown flags."""
    f = EngineFields(kind, "m1", model="/models/x", context=4096, tensor_parallel=2)
    argv = list(adapter(kind).launch(f).cmd)
    first = {"vllm": "serve", "sglang": "--model-path", "tabbyapi": "--host"}[kind]
    start = argv.index(first)  # what follows the program
    rest = [a.replace("${PORT}", "8000") for a in argv[start:]]
    got_kind, ns = parse([kind, *rest])
    assert got_kind == kind and ns.port == 8000
    with pytest.raises(SystemExit):
        parse([kind, *rest, "--no-such-flag"])


def test_config_errors_name_the_engine_problem() -> None:
    with pytest.raises(ConfigError, match=r"models\.a\.engine: engine vllm needs `model:`"):
        config({"a": {"engine": "vllm"}})
    with pytest.raises(ConfigError, match="required key 'cmd' is missing"):
        config({"a": {}})
    with pytest.raises(ConfigError, match=r"models\.a\.model: only used with an engine kind"):
        config({"a": {"cmd": "x", "model": "y"}})
    with pytest.raises(ConfigError, match="environment variable 'NOPE_KEY' is not set"):
        config({"a": {"engine": "openai", "base_url": "http://h/v1", "api_key_env": "NOPE_KEY"}})
    with pytest.raises(ConfigError, match="reads the quantization from the GGUF"):
        config({"a": {"engine": "llamacpp", "model": "/x.gguf", "quantization": "q4"}})


def test_raw_cmd_overrides_the_engine_launch() -> None:
    cfg = config({"a": {"engine": "vllm", "model": "x", "cmd": "my-wrapper --port ${PORT}"}})
    m = cfg.models["a"]
    assert m.cmd == ("my-wrapper", "--port", "${PORT}")
    assert m.engine == "vllm" and m.fast  # the fast swap still uses vLLM's routes
    assert (
        config({"a": {"engine": "vllm", "model": "x", "tensor_parallel": 2}}).models["a"].gpus == 2
    )


def test_llamacpp_load_phases_come_from_its_log() -> None:
    a = LlamaCpp()
    assert a.log_progress("load_tensors: loading model tensors, this can take a while") == (
        0.2, "loading tensors",
    )  # fmt: skip
    assert a.log_progress("common_init_from_params: warming up the model with an empty run")
    assert a.log_progress("slot update_slots: id 0 | task 1 | prompt done") is None


# -- the adapters against their fakes -------------------------------------------------------


def two_models(kind: str, extra: dict[str, Any] | None = None, **env: str) -> dict[str, Any]:
    """Two models of ``kind`` on fakes, memory for one awake and one asleep."""
    models = {}
    for name in ("m1", "m2"):
        m: dict[str, Any] = {
            "engine": kind, "memory": "6GiB", "start_timeout": 20,
            "env": {"FAKE_LOAD_S": "0.3", "FAKE_WAKE_S": "0.05", **env},
        }  # fmt: skip
        if kind == "ollama":
            m["model"] = f"{name}:7b"
            m["launcher"] = [*FAKES, "ollama"]
        else:
            m["model"] = f"/models/{name}"
            m["launcher"] = [*FAKES, kind]
        models[name] = {**m, **(extra or {})}
    return models


def fake_cfg(models: dict[str, Any], **sched: Any) -> Any:
    return config(
        models,
        devices={"gpu0": {"memory": "10GiB"}},
        scheduler={"host_memory": "64GiB", **sched},
        loading_status="off",
    )


async def ask(http: aiohttp.ClientSession, url: str, model: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with http.post(url + "/v1/chat/completions", json={**body, **extra}) as r:
        text = await r.text()
        assert r.status == 200, text
        return dict(json.loads(text))


@pytest.mark.parametrize("kind", ["vllm", "sglang", "tabbyapi", "ollama"])
async def test_adapter_start_request_fast_swap_out_and_in_stop(
    http: aiohttp.ClientSession, kind: str
) -> None:
    async with running_server(fake_cfg(two_models(kind))) as srv:
        r = srv.router
        doc = await ask(http, srv.url, "m1")
        assert doc["choices"][0]["message"]["content"].startswith(
            "m1" if kind != "ollama" else "m1:7b"
        )
        pid1 = r.model("m1").engine.pid
        await ask(http, srv.url, "m2")  # no room for both awake: m1 is put to sleep
        await eventually(lambda: r.model("m1").state is EngineState.SLEEPING)
        assert r.model("m1").engine.pid == pid1  # same process, asleep
        asleep = model_terms(srv.router.config.models["m1"], 6 * 2**30).sleep_need
        assert asleep is not None
        assert r.snapshot().devices["gpu0"].used == 6 * 2**30 + asleep
        doc = await ask(http, srv.url, "m1")  # m2 sleeps, m1 wakes in place
        await eventually(lambda: r.model("m2").state is EngineState.SLEEPING)
        assert r.model("m1").engine.pid == pid1
        assert await load_counts(http, srv.url, "m1") == {"cold": 1, "wake": 1}  # woke in place
        assert doc["choices"][0]["message"]["content"]
        await r.unload("m2")  # a sleeping model is stopped for good
        await eventually(lambda: r.model("m2").state is EngineState.STOPPED)


async def test_vllm_sleep_level_2_reloads_weights_on_wake(http: aiohttp.ClientSession) -> None:
    """The fake refuses to generate after a level-2 sleep unless the weights were
    reloaded: the answer proves the wake sequence."""
    cfg = fake_cfg(two_models("vllm", {"sleep_level": 2}))
    async with running_server(cfg) as srv:
        await ask(http, srv.url, "m1")
        await ask(http, srv.url, "m2")
        await eventually(lambda: srv.router.model("m1").state is EngineState.SLEEPING)
        await ask(http, srv.url, "m1")
        assert any("reloaded weights" in ln for ln in srv.router.logs("m1").tail())


async def test_a_refused_fast_swap_falls_back_to_stop_and_start(
    http: aiohttp.ClientSession,
) -> None:
    """Without VLLM_SERVER_DEV_MODE, vLLM has no /sleep route: swapyard stops it."""
    cfg = fake_cfg(two_models("vllm", None, VLLM_SERVER_DEV_MODE="0"))
    async with running_server(cfg) as srv:
        await ask(http, srv.url, "m1")
        await ask(http, srv.url, "m2")
        await eventually(lambda: srv.router.model("m1").state is EngineState.STOPPED)
        assert any("fast swap out failed" in ln for ln in srv.router.logs("m1").tail())
        await ask(http, srv.url, "m1")  # cold start again


async def test_tabbyapi_load_progress_is_relayed_in_the_loading_status(
    http: aiohttp.ClientSession,
) -> None:
    models = two_models("tabbyapi", FAKE_WAKE_S="2.5")
    cfg = config(models, devices={"gpu0": {"memory": "10GiB"}}, scheduler={"host_memory": "64GiB"})
    async with running_server(cfg) as srv:
        await ask(http, srv.url, "m1")
        await ask(http, srv.url, "m2")
        await eventually(lambda: srv.router.model("m1").state is EngineState.SLEEPING)
        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with http.post(srv.url + "/v1/chat/completions", json=body) as resp:
            text = await resp.text()
        status = [
            json.loads(ln[6:])["choices"][0]["delta"].get("reasoning_content", "")
            for ln in text.splitlines()
            if ln.startswith("data: {") and "reasoning_content" in ln
        ]
        assert any(s.startswith("Waking model m1") and "module" in s for s in status), status
        assert "m1" in text


async def test_engine_with_no_room_to_sleep_is_stopped(http: aiohttp.ClientSession) -> None:
    cfg = fake_cfg(two_models("sglang"), host_memory="1GiB")  # SGLang keeps weights in RAM
    async with running_server(cfg) as srv:
        await ask(http, srv.url, "m1")
        await ask(http, srv.url, "m2")
        await eventually(lambda: srv.router.model("m1").state is EngineState.STOPPED)


async def start_fake(argv: list[str], env: dict[str, str]) -> tuple[Any, str]:
    port = PortAllocator().allocate()
    argv = [a.replace("${PORT}", str(port)) for a in argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:

        async def healthy() -> bool:
            async with http.get(base + "/health") as r:
                return r.status == 200

        try:
            await eventually(healthy, ignoring=(aiohttp.ClientError,), what="the fake's /health")
        except AssertionError:
            proc.kill()
            raise
    return proc, base


async def test_sglang_refuses_to_release_while_busy_and_the_adapter_gives_up(
    http: aiohttp.ClientSession,
) -> None:
    f = EngineFields("sglang", "m1", model="/models/m1", launcher=(*FAKES, "sglang"))
    proc, base = await start_fake(list(adapter("sglang").launch(f).cmd), {"FAKE_TPS": "5"})
    try:
        body = {"model": "m1", "messages": [], "max_tokens": 10}  # ~2 s of generation
        busy = asyncio.ensure_future(http.post(base + "/v1/chat/completions", json=body))
        await asyncio.sleep(0.3)
        fast = adapter("sglang").fast(f)
        assert fast is not None
        with pytest.raises(FastSwapFailed, match="requests are running"):
            await fast.sleep(Control(http, base, f))  # refused, retried once, refused
        (await busy).release()
        await fast.sleep(Control(http, base, f))  # idle now: released
        async with http.post(base + "/v1/chat/completions", json=body) as r:
            assert r.status == 503  # released memory: no generation
        await fast.wake(Control(http, base, f), lambda *_: None)
    finally:
        proc.terminate()
        await proc.wait()


async def test_tabbyapi_admin_routes_need_the_admin_key(http: aiohttp.ClientSession) -> None:
    f = EngineFields("tabbyapi", "m1", model="/models/m1", launcher=(*FAKES, "tabbyapi"),
                     admin_key="right")  # fmt: skip
    launch = adapter("tabbyapi").launch(f)
    proc, base = await start_fake(list(launch.cmd), {"FAKE_TABBY_ADMIN_KEY": "right"})
    try:
        fast = adapter("tabbyapi").fast(f)
        assert fast is not None
        with pytest.raises(FastSwapFailed, match="401"):
            await fast.sleep(Control(http, base, f, {"x-admin-key": "wrong"}))
        await fast.sleep(Control(http, base, f, launch.check_headers))
        async with http.get(base + "/v1/model", headers=launch.check_headers) as r:
            assert r.status == 400  # not ready: no model loaded
        seen: list[float | None] = []
        await fast.wake(Control(http, base, f, launch.check_headers), lambda p, _: seen.append(p))
        assert seen[-1] == 1.0 and len(seen) == 10  # module 1..10 of 10
    finally:
        proc.terminate()
        await proc.wait()
