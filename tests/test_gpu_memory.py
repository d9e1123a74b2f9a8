"""GPU memory as it really is, end to end on the simulated GPU (issue 12).

The simulated GPU is a ledger file (``SWAPYARD_SIMULATED_GPU``) that swapyard's
device reader reads instead of NVML, and that the protocol fakes of vLLM take
their memory from the way the real engine does: vLLM refuses to start when less
than ``--gpu-memory-utilization`` x total is free (0.9 by default), then holds
that share; asleep it keeps its CUDA context. Real child processes, real sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import config, eventually
from swapyard.cli.ops import ps_rows
from swapyard.resources.gpu import Ledger, NvmlReader, reset_reader
from swapyard.testing import running_server

G = 2**30
MiB = 2**20
TOTAL = 140 * G
FAKES = [sys.executable, "-m", "swapyard.testing.engine_fakes"]


@pytest.fixture
def gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    """One simulated 140 GiB GPU, seen by swapyard and by the engines it starts."""
    ledger = Ledger.create(tmp_path / "gpu.json", {"0": TOTAL})
    monkeypatch.setenv("SWAPYARD_SIMULATED_GPU", str(ledger.path))
    reset_reader()
    yield ledger
    reset_reader()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def foreign() -> Iterator[subprocess.Popen[bytes]]:
    """A process swapyard did not start (it will hold GPU memory in the ledger)."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def hf_dir(root: Path, weights: int, ctx: int = 8192) -> str:
    """A model folder as vLLM and the estimate read it: config.json and a sparse
    safetensors file of ``weights`` bytes (KV cache: 128 KiB per token)."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 8, "max_position_embeddings": ctx}  # fmt: skip
    (root / "config.json").write_text(json.dumps(cfg))
    with open(root / "model.safetensors", "wb") as f:
        f.truncate(weights)
    return str(root)


def gpu_config(models: dict[str, Any], learn: bool = True, **sched: Any) -> Any:
    """A config as a user writes it: memory learning on (the tests' default is off)."""
    return config(models, scheduler={"learn_memory": learn, **sched})


def vllm(model_dir: str, **extra: Any) -> dict[str, Any]:
    """An ``engine: vllm`` model on the fake (nothing about memory declared)."""
    return {"engine": "vllm", "model": model_dir, "launcher": [*FAKES, "vllm"],
            "start_timeout": 30, "env": {"FAKE_LOAD_S": "0"}, **extra}  # fmt: skip


def vllm_by_hand(model_dir: str, **extra: Any) -> dict[str, Any]:
    """``vllm serve`` written as a plain command: vLLM's own default share (0.9)."""
    return {"cmd": [*FAKES, "vllm", "serve", model_dir, "--port", "${PORT}"],
            "start_timeout": 30, "env": {"FAKE_LOAD_S": "0"}, **extra}  # fmt: skip


async def ask(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, dict[str, Any]]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        return r.status, dict(await r.json())


async def models(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/api/models") as r:
        assert r.status == 200
        return dict(await r.json())


def held(gpu: Ledger) -> dict[int, int]:
    """pid → bytes held on GPU 0, as the ledger (the stand-in for NVML) says."""
    return {p.pid: p.used for p in gpu.read()["0"].processes}


def starts(srv: Any, model: str) -> int:
    return sum("[swapyard] starting:" in line for line in srv.router.logs(model).tail(200))


async def test_two_undeclared_vllm_models_each_get_the_share_swapyard_placed(
    gpu: Ledger, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Nothing declared: vLLM's default 0.9 would take the GPU for one model.
    swapyard tells each engine its share instead, and both serve."""
    cfg = gpu_config({"a": vllm(hf_dir(tmp_path / "a", 16 * G)),
                      "b": vllm(hf_dir(tmp_path / "b", 16 * G))})  # fmt: skip
    async with running_server(cfg) as srv:
        for m in ("a", "b"):
            status, doc = await ask(http, srv.url, m)
            assert status == 200, doc
        doc = await models(http, srv.url)
        for m in ("a", "b"):
            args = doc["models"][m]["engine_args"]
            assert args[0] == "--gpu-memory-utilization"
            scheduled = doc["models"][m]["memory"]["scheduled"]
            assert float(args[1]) * TOTAL >= scheduled > float(args[1]) * TOTAL - 0.002 * TOTAL
            pid = doc["models"][m]["pid"]
            assert abs(held(gpu)[pid] - float(args[1]) * TOTAL) < G  # it took that share
        assert doc["models"]["a"]["state"] == doc["models"]["b"]["state"] == "ready"
        rows = {r[0]: r for r in ps_rows(doc)}  # `swapyard ps` shows the flag it chose
        assert rows["a"][-1] == " ".join(doc["models"]["a"]["engine_args"])


async def test_a_measurement_replaces_the_estimate_so_the_next_start_evicts_first(
    gpu: Ledger, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """``vllm serve`` by hand takes 0.9 of the GPU, far above its estimate. Once
    measured, the scheduler places it with what it holds: the next model evicts
    it before starting, and starts once, without a failure."""
    cfg = gpu_config({"a": vllm_by_hand(hf_dir(tmp_path / "a", 16 * G)),
                      "b": vllm_by_hand(hf_dir(tmp_path / "b", 16 * G))})  # fmt: skip
    async with running_server(cfg) as srv:
        assert (await ask(http, srv.url, "a"))[0] == 200

        async def measured() -> dict[str, Any] | None:
            mem: dict[str, Any] = (await models(http, srv.url))["models"]["a"]["memory"]
            return mem if mem["measured"] else None

        mem = await eventually(measured, what="a measured")
        assert mem["measured"] > 0.85 * TOTAL > 2 * mem["estimated"]
        assert mem["scheduled"] == mem["measured"] and mem["source"] == "measured"
        status, doc = await ask(http, srv.url, "b")
        assert status == 200, doc
        assert starts(srv, "b") == 1  # no failed start before the eviction
        assert (await models(http, srv.url))["models"]["a"]["state"] == "stopped"


async def test_memory_held_by_another_process_is_subtracted_and_shown(
    gpu: Ledger, http: aiohttp.ClientSession, tmp_path: Path, foreign: subprocess.Popen[bytes]
) -> None:
    """60 GiB held by a process swapyard did not start: room is what is left, so
    the second model evicts the first instead of failing; the foreign share and
    who holds it are on /api/models; a model that only fits without it is told so."""
    assert gpu.allocate(foreign.pid, "0", 60 * G)
    cfg = gpu_config({
        "a": vllm(hf_dir(tmp_path / "a", 16 * G), memory="45GiB"),
        "b": vllm(hf_dir(tmp_path / "b", 16 * G), memory="45GiB"),
        "big": vllm(hf_dir(tmp_path / "big", 16 * G), memory="100GiB"),
    })  # fmt: skip
    async with running_server(cfg) as srv:
        assert (await ask(http, srv.url, "a"))[0] == 200
        status, doc = await ask(http, srv.url, "b")
        assert status == 200, doc
        state = await models(http, srv.url)
        assert state["models"]["a"]["state"] in ("stopping", "stopped")
        dev = state["devices"]["0"]
        assert dev["foreign"] == 60 * G and dev["total"] == TOTAL
        others = [h for h in dev["holders"] if h["model"] is None]
        assert [(h["pid"], h["name"], h["used"]) for h in others] == [
            (foreign.pid, "sleep", 60 * G),
        ]  # fmt: skip
        assert dev["free"] == dev["budget"] - dev["used"] - 60 * G
        status, doc = await ask(http, srv.url, "big")
        assert status == 503 and doc["error"]["code"] == "insufficient_memory"
        assert "processes swapyard did not start hold 0: 60.0 GiB" in doc["error"]["message"]
        async with http.get(srv.url + "/metrics") as r:
            assert 'swapyard_device_memory_bytes{device="0",kind="foreign"} 6.442450944e+10' in (
                await r.text()
            )


async def test_a_start_that_runs_out_of_memory_is_retried_once_after_evicting_idle_models(
    gpu: Ledger, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Without learning, the figures say both fit; vLLM's free-memory check says
    otherwise. The idle model is stopped and the start tried again: the client
    gets its answer."""
    cfg = gpu_config(
        {"a": vllm_by_hand(hf_dir(tmp_path / "a", 16 * G)),
         "b": vllm_by_hand(hf_dir(tmp_path / "b", 16 * G))},
        learn=False,
    )  # fmt: skip
    async with running_server(cfg) as srv:
        assert (await ask(http, srv.url, "a"))[0] == 200
        status, doc = await ask(http, srv.url, "b")
        assert status == 200, doc
        assert starts(srv, "b") == 2
        tail = "\n".join(srv.router.logs("b").tail(200))
        assert "is less than desired GPU memory utilization" in tail
        assert (await models(http, srv.url))["models"]["a"]["state"] == "stopped"


async def test_a_second_out_of_memory_start_says_what_was_free_and_who_holds_the_gpu(
    gpu: Ledger, http: aiohttp.ClientSession, tmp_path: Path, foreign: subprocess.Popen[bytes]
) -> None:
    assert gpu.allocate(foreign.pid, "0", 30 * G)
    cfg = gpu_config(
        {"a": vllm(hf_dir(tmp_path / "a", 8 * G)),
         "b": vllm_by_hand(hf_dir(tmp_path / "b", 16 * G))},  # wants 0.9 x 140 free
        learn=False,
    )  # fmt: skip
    async with running_server(cfg) as srv:
        assert (await ask(http, srv.url, "a"))[0] == 200
        status, doc = await ask(http, srv.url, "b")
        assert status == 503, doc
        err = doc["error"]
        assert err["code"] == "engine_out_of_memory", err
        msg = err["message"]
        assert "less than desired GPU memory utilization" in msg
        assert "GPU 0: " in msg and "free of 140.0 GiB" in msg and "it needs" in msg
        assert f"pid {foreign.pid} (sleep) 30.0 GiB, not started by swapyard" in msg
        assert starts(srv, "b") == 2  # retried once, after stopping a
        assert (await models(http, srv.url))["models"]["a"]["state"] == "stopped"


async def test_a_sleeping_vllm_is_placed_with_what_it_really_keeps(
    gpu: Ledger, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Two models that do not fit together: the first sleeps. It keeps its CUDA
    context (~0.7 GiB), not 10 % of its need; swapyard measures that after the
    sleep and places with it."""
    cfg = gpu_config({"a": vllm(hf_dir(tmp_path / "a", 70 * G)),
                      "b": vllm(hf_dir(tmp_path / "b", 70 * G))},
                     host_memory="512GiB")  # fmt: skip
    async with running_server(cfg) as srv:
        assert (await ask(http, srv.url, "a"))[0] == 200
        assert (await ask(http, srv.url, "b"))[0] == 200

        async def asleep_measured() -> dict[str, Any] | None:
            m: dict[str, Any] = (await models(http, srv.url))["models"]["a"]
            return m if m["state"] == "sleeping" and m["memory"]["asleep_measured"] else None

        a = await eventually(asleep_measured, what="a measured asleep")
        kept = a["memory"]["asleep_measured"]
        assert 0.5 * G < kept < G  # its context, whatever the model's size
        assert a["memory"]["asleep"] == kept
        assert held(gpu)[a["pid"]] == kept
        await asyncio.sleep(0)


def test_gpu_check_runs_its_steps_on_the_simulated_gpu_and_says_when_there_is_no_gpu(
    tmp_path: Path,
) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    env = {k: v for k, v in os.environ.items() if k != "SWAPYARD_SIMULATED_GPU"}
    if NvmlReader.open() is None:  # CI: no GPU, and it says so
        none = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip
        assert none.returncode == 0 and "no NVIDIA GPU here" in none.stdout
    sim = subprocess.run([sys.executable, str(script), "--simulated"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]
    assert "0 check(s) failed" in sim.stdout
    assert "--gpu-memory-utilization 0.1243" in sim.stdout  # step 1: the share it chose


async def test_a_declared_budget_already_leaves_room_for_other_processes(
    gpu: Ledger, http: aiohttp.ClientSession, tmp_path: Path, foreign: subprocess.Popen[bytes]
) -> None:
    """``devices: {0: 60GiB}`` on the 140 GiB GPU leaves 80 GiB to others: 70 GiB
    held by another process costs swapyard nothing; 90 GiB would cost it 10."""
    assert gpu.allocate(foreign.pid, "0", 70 * G)
    cfg = config(
        {"a": vllm(hf_dir(tmp_path / "a", 16 * G), memory="50GiB")},
        devices={"0": {"memory": "60GiB"}},
        scheduler={"learn_memory": True},
    )  # fmt: skip
    async with running_server(cfg) as srv:
        status, doc = await ask(http, srv.url, "a")
        assert status == 200, doc
        assert (await models(http, srv.url))["devices"]["0"]["foreign"] == 0
        async with http.post(srv.url + "/api/models/a/unload") as r:
            assert r.status == 200
        await eventually(lambda: held(gpu).keys() == {foreign.pid}, what="a's memory released")
        assert gpu.allocate(foreign.pid, "0", 20 * G)  # 90 GiB: 10 beyond what was left aside
        status, doc = await ask(http, srv.url, "a")
        assert status == 503 and doc["error"]["code"] == "insufficient_memory", doc
        assert "hold 0: 10.5 GiB" in doc["error"]["message"]  # 90 - (140 - 0.5 - 60)
