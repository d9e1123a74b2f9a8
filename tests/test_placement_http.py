"""Memory-aware placement end to end: fake engines as real processes that claim
memory, several clients, and a watch on every state change."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import aiohttp

from helpers import config, eventually
from swapyard.events import EngineStateChanged, Event, RequestAdmitted, RequestFinished
from swapyard.process.state import EngineState
from swapyard.testing import fake_engine_cmd, running_server

S = EngineState


class Watch:
    """Counts in-flight requests per model from events, and records any stop of a
    model that had requests in flight at that moment."""

    def __init__(self) -> None:
        self.inflight: Counter[str] = Counter()
        self.busy_stops: list[str] = []
        self.loads: Counter[str] = Counter()
        self.max_ready = 0
        self.ready: set[str] = set()
        self.admitted: set[int] = set()

    def __call__(self, e: Event) -> None:
        if isinstance(e, RequestAdmitted):
            self.inflight[e.model] += 1
            self.admitted.add(e.request_id)
        elif isinstance(e, RequestFinished) and e.record.request_id in self.admitted:
            self.inflight[e.record.model] -= 1
        elif isinstance(e, EngineStateChanged):
            if e.new is S.STOPPING and self.inflight[e.model] > 0:
                self.busy_stops.append(e.model)
            if e.new is S.STARTING:
                self.loads[e.model] += 1
            if e.new is S.READY:
                self.ready.add(e.model)
            elif e.model in self.ready:
                self.ready.discard(e.model)
            self.max_ready = max(self.max_ready, len(self.ready))


MODELS = {
    m: {"cmd": fake_engine_cmd(m, tokens_per_second=200, memory_mib=1400), "memory": "1400MiB"}
    for m in ("a", "b", "c")
}
GPU = {"gpu0": {"memory": "3GiB"}}


async def test_three_models_where_two_fit_serve_an_interleaved_trace() -> None:
    cfg = config(MODELS, devices=GPU, loading_status="off")
    rng = random.Random(7)
    trace = [rng.choice("aabbc") for _ in range(30)]
    watch = Watch()
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:
        srv.router.bus.add_listener(watch)

        async def client(models: list[str]) -> list[tuple[str, str]]:
            out = []
            for m in models:
                body = {"model": m, "messages": [], "max_tokens": 8}
                async with http.post(srv.url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    out.append((m, (await r.json())["choices"][0]["message"]["content"]))
            return out

        results = await asyncio.gather(*(client(trace[i::3]) for i in range(3)))
    answers = [a for chunk in results for a in chunk]
    assert len(answers) == 30
    assert all(text.startswith(f"{m}:") for m, text in answers), answers
    assert watch.busy_stops == []
    assert watch.max_ready == 2  # two fit together, never three
    assert set(watch.loads) == {"a", "b", "c"}


async def test_admin_load_pin_unload_and_the_resident_set() -> None:
    cfg = config(MODELS, devices=GPU, loading_status="off", preload=["c"])
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:

        async def resident() -> dict[str, Any]:
            async with http.get(srv.url + "/api/models") as r:
                doc: dict[str, Any] = await r.json()
                return doc

        async def post(path: str) -> dict[str, Any]:
            async with http.post(srv.url + path) as r:
                assert r.status == 200, await r.text()
                doc: dict[str, Any] = await r.json()
                return doc

        assert (await post("/api/models/a/load"))["state"] == "ready"

        async def c_ready() -> bool:  # the preloaded model comes up on its own
            return (await resident())["models"]["c"]["state"] == "ready"

        await eventually(c_ready)
        doc = await resident()
        assert {m: d["state"] for m, d in doc["models"].items()} == {
            "a": "ready", "b": "stopped", "c": "ready",
        }  # fmt: skip
        assert doc["devices"]["gpu0"] == {
            "budget": 3 * 2**30, "used": 2 * 1400 * 2**20, "free": 3 * 2**30 - 2800 * 2**20,
            "foreign": 0, "total": None, "holders": [],  # not a GPU: nothing else is read
        }  # fmt: skip
        assert doc["models"]["a"]["devices"] == ["gpu0"]
        assert doc["models"]["a"]["memory"]["declared"] == 1400 * 2**20

        assert (await post("/api/models/a/pin"))["pinned"] is True
        body = {"model": "b", "messages": [], "max_tokens": 2}
        async with http.post(srv.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200  # b evicts c, not the pinned a
        doc = await resident()
        assert doc["models"]["a"]["pinned"] and doc["models"]["a"]["state"] == "ready"
        assert doc["models"]["c"]["state"] == "stopped"

        # Unload waits for a running answer to finish; the answer is whole.
        slow = {"model": "a", "messages": [], "max_tokens": 40, "stream": True}
        async with http.post(srv.url + "/v1/chat/completions", json=slow) as r:
            first = await r.content.readany()
            unloading = asyncio.ensure_future(post("/api/models/a/unload"))
            rest = await r.read()
        assert b"[DONE]" in first + rest
        assert (await unloading)["state"] == "stopped"
        assert (await post("/api/models/b/unpin"))["pinned"] is False
        async with http.post(srv.url + "/api/models/nope/load") as r:
            assert r.status == 404


async def test_load_nobody_waits_for_is_abandoned_and_its_engine_stopped() -> None:
    """The client goes away during a slow load: the engine is stopped, not left running."""
    models = {"slow": {"cmd": fake_engine_cmd("slow", load_delay=30), "memory": "100MiB"}}
    cfg = config(models, devices=GPU)
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:
        watch = Watch()
        srv.router.bus.add_listener(watch)
        body = {"model": "slow", "messages": [], "max_tokens": 2}
        task = asyncio.ensure_future(http.post(srv.url + "/v1/chat/completions", json=body))
        await eventually(lambda: srv.router.model("slow").state is S.STARTING)
        task.cancel()  # the client disconnects
        await eventually(lambda: srv.router.model("slow").state is S.STOPPED)
        assert watch.max_ready == 0  # stopped during its load: starting -> stopping


async def test_engine_sees_only_the_gpus_it_was_placed_on() -> None:
    models = {
        "one": {"cmd": fake_engine_cmd("one"), "memory": "20GiB"},
        "tp": {"cmd": fake_engine_cmd("tp"), "memory": "10GiB", "gpus": 2},
    }
    gpus = {str(i): {"memory": "24GiB"} for i in range(3)}
    async with running_server(config(models, devices=gpus)) as srv:
        async with aiohttp.ClientSession() as http:
            for m in ("one", "tp"):
                async with http.post(
                    srv.url + "/v1/chat/completions", json={"model": m, "messages": []}
                ) as r:
                    assert r.status == 200
        seen = {m: [x for x in srv.router.logs(m).tail() if "CUDA_VISIBLE" in x]
                for m in ("one", "tp")}  # fmt: skip
    assert seen["one"] == ["[fake-engine] CUDA_VISIBLE_DEVICES=0"]
    assert seen["tp"] == ["[fake-engine] CUDA_VISIBLE_DEVICES=1,2"]


async def test_full_queue_answers_429_with_retry_after_before_streaming() -> None:
    models = {"slow": {"cmd": fake_engine_cmd("slow", load_delay=30), "memory": "100MiB"}}
    cfg = config(models, devices=GPU, scheduler={"max_queue": 1})
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:
        body = {"model": "slow", "messages": [], "stream": True}
        waiting = await http.post(srv.url + "/v1/chat/completions", json=body)  # queued
        await waiting.content.readany()  # its loading status began
        async with http.post(srv.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "1"
            assert (await r.json())["error"]["code"] == "queue_full"
        waiting.close()


async def test_admin_load_of_a_failed_model_waits_for_its_new_start(tmp_path: Any) -> None:
    flag = f"{tmp_path}/tried"
    fake = fake_engine_cmd("flaky").replace("${PORT}", '"$1"')
    script = f"if [ -f {flag} ]; then exec {fake}; else touch {flag}; exit 4; fi"
    models = {"flaky": {"cmd": ["sh", "-c", script, "sh", "${PORT}"], "memory": "100MiB"}}
    async with running_server(config(models, devices=GPU)) as srv:
        async with aiohttp.ClientSession() as http:
            async with http.post(srv.url + "/api/models/flaky/load") as r:
                assert (await r.json())["state"] == "backoff"  # an explicit load resets it:
            async with http.post(srv.url + "/api/models/flaky/load") as r:
                assert (await r.json())["state"] == "ready"
