"""The protocol fakes of vLLM, SGLang and TabbyAPI take GPU memory as the real
engines do: real fake processes on 127.0.0.1 allocating from a simulated GPU (a
ledger in tmp_path) — they pre-allocate, refuse to start with the engines' own
messages, keep the CUDA context while asleep, and fail a wake that does not fit."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import swapyard
from helpers import eventually
from swapyard.ports import PortAllocator
from swapyard.resources.gpu import SIMULATED_ENV, Ledger
from swapyard.testing.gpu_memory import CudaMemory, Footprint, LedgerMemory, from_env

MiB, GiB = 2**20, 2**30
TOTAL = 80 * GiB
CONTEXT = 700 * MiB  # FAKE_CONTEXT_MIB's default: what a sleeping engine keeps
SRC = str(Path(swapyard.__file__).parents[1])
VLLM_SLEEPS = ("--enable-sleep-mode",)


@dataclass
class Fake:
    proc: asyncio.subprocess.Process
    base: str
    log: Path
    gpu: Ledger

    async def healthy(self, http: aiohttp.ClientSession) -> Fake:
        async def ok() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.log.read_text()}")
            async with http.get(self.base + "/health") as r:
                return r.status == 200

        await eventually(ok, ignoring=(aiohttp.ClientError,), what=f"{self.base}/health")
        return self

    async def failure(self) -> str:
        """The last line the fake printed, once it has exited with 1."""
        rc = await asyncio.wait_for(self.proc.wait(), 20)
        out = self.log.read_text()
        assert rc == 1, out
        return out.strip().splitlines()[-1]

    def held(self, device: str = "0") -> int:
        procs = self.gpu.read()[device].processes
        return sum(p.used for p in procs if p.pid == self.proc.pid)


class Fakes:
    """Starts fakes and foreign memory holders on one simulated GPU; stops them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.gpu = Ledger.create(tmp / "gpu.json", {"0": TOTAL, "1": TOTAL})
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, kind: str, *args: str, **env: str) -> Fake:
        port = PortAllocator().allocate()
        log = self.tmp / f"{kind}-{port}.log"
        base_env = {
            k: v for k, v in os.environ.items() if k not in ("FAKE_GPU", "CUDA_VISIBLE_DEVICES")
        }
        path = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "swapyard.testing.engine_fakes", kind,
                *[a.replace("${PORT}", str(port)) for a in args],
                env={**base_env, SIMULATED_ENV: str(self.gpu.path), "PYTHONPATH": path,
                     "FAKE_LOAD_S": "0", **env},
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        return Fake(proc, f"http://127.0.0.1:{port}", log, self.gpu)

    async def foreign(self, nbytes: int, device: str = "0") -> int:
        """A live process of someone else's holding ``nbytes``; its pid."""
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        self.procs.append(proc)
        assert self.gpu.allocate(proc.pid, device, nbytes)
        return proc.pid

    def free(self, device: str = "0") -> int:
        return self.gpu.read()[device].free

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    f = Fakes(tmp_path)
    try:
        yield f
    finally:
        await f.close()


def vllm(*args: str) -> list[str]:
    return ["serve", "/models/m1", "--port", "${PORT}", *args]


def model_folder(tmp: Path, shards: list[int], **config: Any) -> Path:
    """A Hugging Face folder: ``config.json`` and sparse safetensors of these sizes."""
    folder = tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for i, size in enumerate(shards):
        with (folder / f"model-{i:05d}.safetensors").open("wb") as f:
            f.truncate(size)
    return folder


# A 7B-like model: 15 GiB of weights, 32 × 8 × 128 × 2 × 2 = 128 KiB of KV per token.
SEVEN_B = {
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "hidden_size": 4096, "max_position_embeddings": 32768,
}  # fmt: skip


# -- the mode, and what a model needs -----------------------------------------------------


def test_memory_mode_comes_from_the_environment(tmp_path: Path) -> None:
    """Ledger when SWAPYARD_SIMULATED_GPU is set (on the first visible device), CUDA
    with FAKE_GPU=cuda (torch imported only on use), else no memory behaviour."""
    assert from_env({}) is None
    assert isinstance(from_env({"FAKE_GPU": "cuda"}), CudaMemory)
    sim = str(tmp_path / "gpu.json")
    mem = from_env({SIMULATED_ENV: sim, "FAKE_GPU": "cuda", "CUDA_VISIBLE_DEVICES": "2,0"})
    assert isinstance(mem, LedgerMemory) and mem.device == "2"
    only = from_env({SIMULATED_ENV: sim})
    assert isinstance(only, LedgerMemory) and only.device == "0"
    with pytest.raises(SystemExit, match="FAKE_GPU='rocm'"):
        from_env({"FAKE_GPU": "rocm"})


def test_footprint_comes_from_the_model_folder_else_the_knobs(tmp_path: Path) -> None:
    """Weights are the safetensors' sizes; KV heads default to the attention heads and
    the head dim to hidden/heads; anything not a model folder takes the knobs."""
    cfg = {"text_config": {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}}
    need = Footprint.of(str(model_folder(tmp_path, [3 * MiB, 5 * MiB], **cfg)), {})
    assert (need.weights, need.kv_per_token, need.max_context) == (8 * MiB, 2 * 4 * 16 * 4, 4096)
    assert need.activation == 256 * MiB and need.context == CONTEXT
    knobs = {"FAKE_WEIGHTS_MIB": "1024", "FAKE_KV_PER_TOKEN_KIB": "8", "FAKE_CONTEXT_MIB": "10"}
    need = Footprint.of("Qwen/Qwen2.5-7B", {**knobs, "FAKE_ACTIVATION_MIB": "3"})
    assert (need.weights, need.kv_per_token, need.context, need.activation) == (
        GiB, 8192, 10 * MiB, 3 * MiB,
    )  # fmt: skip


# -- vLLM --------------------------------------------------------------------------------


async def test_vllm_takes_its_utilization_and_a_second_one_is_refused_on_free_memory(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """A default vLLM holds 0.9 × total; a second finds less free than it wants and
    exits with vLLM's start-up message."""
    a = await (await fakes.start("vllm", *vllm())).healthy(http)
    assert a.held() == int(0.9 * TOTAL)
    b = await fakes.start("vllm", *vllm())
    assert await b.failure() == (
        "ValueError: Free memory on device cuda:0 (7.32/80.00 GiB) on startup is less than "
        "desired GPU memory utilization (0.90, 72.00 GiB). Decrease GPU memory utilization "
        "or reduce GPU memory used by other processes."
    )
    assert fakes.gpu.read()["0"].used == a.held()  # what b booked died with it


async def test_two_vllms_at_0_3_utilization_both_run(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    a = await (await fakes.start("vllm", *vllm("--gpu-memory-utilization", "0.3"))).healthy(http)
    b = await (await fakes.start("vllm", *vllm("--gpu-memory-utilization", "0.3"))).healthy(http)
    assert a.held() == b.held() == int(0.3 * TOTAL)


async def test_vllm_takes_memory_on_the_first_visible_device(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """swapyard names the device in CUDA_VISIBLE_DEVICES; the fake sees it as cuda:0."""
    a = await fakes.start(
        "vllm", *vllm("--gpu-memory-utilization", "0.5"), CUDA_VISIBLE_DEVICES="1"
    )
    await a.healthy(http)
    assert (a.held("1"), a.held("0")) == (int(0.5 * TOTAL), 0)


async def test_vllm_refuses_a_max_model_len_its_cache_cannot_hold(
    fakes: Fakes, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """20 GiB at 0.25 less 15 GiB of weights, a 0.75 GiB activation peak and the
    context leave 3.57 GiB of KV cache: short of the 4 GiB 32768 tokens need, enough
    for 16384."""
    model = str(model_folder(tmp_path, [10 * GiB, 5 * GiB], **SEVEN_B))
    args = ["serve", model, "--port", "${PORT}", "--gpu-memory-utilization", "0.25"]
    a = await fakes.start("vllm", *args)
    assert await a.failure() == (
        "ValueError: To serve at least one request with the models's max seq len (32768), "
        "(4.00 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(3.57 GiB). Based on the available memory, the estimated maximum model length is "
        "29216. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
        "initializing the engine."
    )
    b = await fakes.start("vllm", *args, "--max-model-len", "16384")
    await b.healthy(http)
    assert b.held() == 20 * GiB


async def test_vllm_refuses_when_the_weights_leave_no_room_for_the_cache(
    fakes: Fakes, tmp_path: Path
) -> None:
    model = str(model_folder(tmp_path, [15 * GiB], **SEVEN_B))
    a = await fakes.start("vllm", "serve", model, "--port", "${PORT}",
                          "--gpu-memory-utilization", "0.2")  # fmt: skip
    assert await a.failure() == (
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine."
    )


async def test_vllm_start_fails_with_cuda_oom_when_others_take_the_memory_while_it_loads(
    fakes: Fakes, tmp_path: Path
) -> None:
    """The free check passes, then someone takes the memory during the load: the KV
    cache allocation fails as cudaMalloc does."""
    a = await fakes.start("vllm", *vllm("--gpu-memory-utilization", "0.5"), FAKE_LOAD_S="3")
    await eventually(lambda: a.held() == CONTEXT + 512 * MiB, what="context and weights taken")
    await fakes.foreign(fakes.free() - GiB)
    assert await a.failure() == (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 38.82 GiB. "
        "GPU 0 has a total capacity of 80.00 GiB of which 1.00 GiB is free."
    )


async def test_vllm_sleep_keeps_the_context_and_a_wake_that_does_not_fit_stays_asleep(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """Level 1 frees all but the context; wake takes it back; with the memory taken
    by someone else, wake answers 500 with CUDA's message and the engine stays asleep."""
    args = vllm("--gpu-memory-utilization", "0.5", *VLLM_SLEEPS)
    a = await (await fakes.start("vllm", *args, VLLM_SERVER_DEV_MODE="1")).healthy(http)
    assert a.held() == 40 * GiB
    async with http.post(a.base + "/sleep?level=1") as r:
        assert r.status == 200
    assert a.held() == CONTEXT
    async with http.post(a.base + "/wake_up") as r:
        assert r.status == 200
    assert a.held() == 40 * GiB
    async with http.post(a.base + "/sleep?level=1") as r:
        assert r.status == 200
    await fakes.foreign(fakes.free() - 100 * MiB)
    async with http.post(a.base + "/wake_up") as r:
        assert r.status == 500
        assert (await r.json())["error"]["message"] == (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 0.25 GiB. "
            "GPU 0 has a total capacity of 80.00 GiB of which 0.10 GiB is free."
        )
    assert a.held() == CONTEXT
    async with http.get(a.base + "/is_sleeping") as r:
        assert (await r.json()) == {"is_sleeping": True}
    body = {"model": "/models/m1", "messages": [], "max_tokens": 2}
    async with http.post(a.base + "/v1/chat/completions", json=body) as r:
        assert r.status == 503


# -- SGLang ------------------------------------------------------------------------------


async def test_sglang_takes_its_fraction_less_what_others_hold(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """No free check up front: the KV pool is what is free beyond (1 − 0.88) × what
    was free at its start (after its CUDA context)."""
    await fakes.foreign(10 * GiB)
    a = await (
        await fakes.start("sglang", "--model-path", "/models/m1", "--port", "${PORT}")
    ).healthy(http)
    ctx = 700 * MiB
    assert abs(a.held() - (ctx + 0.88 * (TOTAL - 10 * GiB - ctx))) < MiB


async def test_sglang_refuses_to_start_when_others_leave_it_no_kv_pool(fakes: Fakes) -> None:
    """Others hold 70 GiB of 80: 0.04 of the 9.3 GiB free at its start is less than
    its weights and activation (0.5 GiB), which leaves SGLang's KV pool nothing."""
    await fakes.foreign(70 * GiB)
    a = await fakes.start(
        "sglang", "--model-path", "/models/m1", "--port", "${PORT}", "--mem-fraction-static", "0.04"
    )
    assert await a.failure() == (
        "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."
    )


async def test_sglang_release_keeps_the_context_and_resume_fails_when_it_does_not_fit(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    args = ["--model-path", "/models/m1", "--port", "${PORT}", "--mem-fraction-static", "0.5",
            "--enable-memory-saver", "--enable-weights-cpu-backup"]  # fmt: skip
    a = await (await fakes.start("sglang", *args)).healthy(http)
    awake = a.held()
    assert abs(awake - (CONTEXT + 0.5 * (TOTAL - CONTEXT))) < MiB  # half of what was free
    async with http.post(a.base + "/release_memory_occupation", json={}) as r:
        assert r.status == 200
    assert a.held() == CONTEXT
    holder = await fakes.foreign(fakes.free() - GiB)
    async with http.post(a.base + "/resume_memory_occupation", json={}) as r:
        assert r.status == 500
        assert "torch.OutOfMemoryError: CUDA out of memory." in (await r.json())["error"]["message"]
    assert a.held() == CONTEXT
    fakes.gpu.release(holder, "0")
    async with http.post(a.base + "/resume_memory_occupation", json={}) as r:
        assert r.status == 200
    assert a.held() == awake


# -- TabbyAPI ----------------------------------------------------------------------------


def tabby(*args: str) -> list[str]:
    return ["--port", "${PORT}", "--model-dir", "/models", "--model-name", "m1",
            "--disable-auth", "true", *args]  # fmt: skip


async def test_tabby_fails_to_start_with_cuda_oom_when_its_cache_does_not_fit(
    fakes: Fakes,
) -> None:
    """1 GiB free: the context (0.68 GiB) and weights (0.25 GiB) fit, the 4096-token
    cache (0.25 GiB) does not."""
    await fakes.foreign(TOTAL - GiB)
    a = await fakes.start("tabbyapi", *tabby())
    assert await a.failure() == (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 0.25 GiB. "
        "GPU 0 has a total capacity of 80.00 GiB of which 0.07 GiB is free."
    )


async def test_tabby_unload_keeps_the_context_and_a_load_that_does_not_fit_reports_an_error(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """The cache is --cache-size tokens; a load without room streams an error event
    and leaves no model loaded; a load over a loaded model frees it first."""
    a = await (await fakes.start("tabbyapi", *tabby("--cache-size", "8192"))).healthy(http)
    assert a.held() == CONTEXT + 256 * MiB + 8192 * 64 * 1024
    async with http.post(a.base + "/v1/model/unload") as r:
        assert r.status == 200
    assert a.held() == CONTEXT
    holder = await fakes.foreign(fakes.free() - 100 * MiB)
    async with http.post(a.base + "/v1/model/load", json={"model_name": "m1"}) as r:
        events = [
            json.loads(ln[6:]) for ln in (await r.text()).splitlines() if ln.startswith("data: ")
        ]
    oom = (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 0.25 GiB. "
        "GPU 0 has a total capacity of 80.00 GiB of which 0.10 GiB is free."
    )
    assert events == [{"error": {"message": oom}}]
    async with http.get(a.base + "/v1/model") as r:
        assert r.status == 400
    assert a.held() == CONTEXT
    fakes.gpu.release(holder, "0")
    for _ in range(2):  # a load over a loaded model replaces it
        async with http.post(a.base + "/v1/model/load", json={"model_name": "m1"}) as r:
            assert '"status": "finished"' in await r.text()
        assert a.held() == CONTEXT + 256 * MiB + 8192 * 64 * 1024


# -- death -------------------------------------------------------------------------------


async def test_a_killed_fake_releases_its_memory(fakes: Fakes, http: aiohttp.ClientSession) -> None:
    """As with CUDA, what a process held is free once it is gone."""
    a = await (await fakes.start("vllm", *vllm())).healthy(http)
    assert fakes.gpu.read()["0"].used == int(0.9 * TOTAL)
    a.proc.kill()
    await a.proc.wait()
    assert fakes.gpu.read()["0"].used == 0


# -- real CUDA memory (a machine with a GPU and PyTorch) -------------------------------------


def smi() -> tuple[int, int]:
    """(used, total) MiB of the first GPU, as nvidia-smi reads it."""
    out = subprocess.run(
        ["nvidia-smi", "-i", "0", "--query-gpu=memory.used,memory.total",
         "--format=csv,noheader,nounits"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    used, total = (int(x) for x in out.split(","))
    return used, total


CUDA_HERE = importlib.util.find_spec("torch") is not None and shutil.which("nvidia-smi") is not None


@pytest.mark.skipif(not CUDA_HERE, reason="needs an NVIDIA GPU and PyTorch")
async def test_cuda_mode_takes_sleeps_and_frees_real_device_memory(
    fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """FAKE_GPU=cuda: vLLM's fake holds ≈ util × total of real memory (torch's own
    context for the runtime part), keeps ≈ the context asleep, takes it back on wake,
    refuses a second default start, and frees it all when killed."""
    cuda = {SIMULATED_ENV: "", "FAKE_GPU": "cuda", "VLLM_SERVER_DEV_MODE": "1"}
    base, total = smi()
    a = await fakes.start("vllm", *vllm("--gpu-memory-utilization", "0.5", *VLLM_SLEEPS), **cuda)
    await a.healthy(http)
    assert abs(smi()[0] - base - total / 2) < 1024, (base, smi(), total)
    async with http.post(a.base + "/sleep?level=1") as r:
        assert r.status == 200
    assert smi()[0] - base < 1536  # the context only
    async with http.post(a.base + "/wake_up") as r:
        assert r.status == 200
    assert abs(smi()[0] - base - total / 2) < 1024
    b = await fakes.start("vllm", *vllm(), **cuda)
    assert (await b.failure()).startswith("ValueError: Free memory on device cuda:0 (")
    a.proc.kill()
    await a.proc.wait()
    await eventually(lambda: smi()[0] - base < 256, what="the GPU memory freed")
