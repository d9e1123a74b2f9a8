"""Model memory: estimated from GGUF headers, measured on running engines, learned
and persisted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import config, eventually, spec
from swapyard.config import load_config
from swapyard.defaults import default_config_text, ensure_default_models
from swapyard.resources import gguf
from swapyard.resources.measure import group_rss
from swapyard.resources.store import MeasuredStore
from swapyard.testing import fake_engine_cmd, running_server

MiB = 2**20


async def resident(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/api/models") as r:
        doc: dict[str, Any] = await r.json()
        return doc


async def wait_measured(http: aiohttp.ClientSession, url: str, model: str) -> dict[str, Any]:
    async def measured() -> dict[str, Any] | None:
        mem: dict[str, Any] = (await resident(http, url))["models"][model]["memory"]
        return mem if mem["measured"] else None

    return await eventually(measured, what=f"{model} measured")


@pytest.mark.llamacpp
async def test_gguf_estimate_matches_what_llama_cpp_really_uses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both figures are printed (`pytest -s`); the estimate is within 30 % of the
    resident memory of the real llama.cpp process."""
    cfg = load_config(default_config_text(ensure_default_models(), threads=2))
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:
        for model in ("tiny", "smollm2"):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 8}  # fmt: skip
            async with http.post(srv.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
            mem = await wait_measured(http, srv.url, model)
            est, measured = mem["estimated"], mem["measured"]
            with capsys.disabled():
                print(
                    f"\n{model}: estimated {est / MiB:.1f} MiB, measured {measured / MiB:.1f} MiB"
                )
            assert 0.7 <= measured / est <= 1.3
            assert mem["scheduled"] == max(est, measured)  # resident memory: only if larger


def test_gguf_header_gives_the_llama_hyperparameters() -> None:
    info = gguf.read_info(ensure_default_models()["smollm2"])
    assert info.architecture == "llama"
    assert info.arch("block_count") == 30 and info.arch("embedding_length") == 576
    est = gguf.estimate(info, context=2048)
    assert est.kv_cache == 30 * 2048 * 3 * (64 + 64) * 2  # layers x ctx x kv heads x dims x f16
    assert est.weights == info.file_size - info.data_offset
    assert gguf.estimate(info, context=4096).kv_cache == 2 * est.kv_cache


def test_not_a_gguf_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 40)
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf.read_info(bad)


def test_model_file_and_context_come_from_the_command() -> None:
    argv = ("llama-server", "--port", "${PORT}", "-m", "/m/q.gguf", "--ctx-size", "8192")
    assert gguf.model_file_and_context(argv) == ("/m/q.gguf", 8192)
    assert gguf.model_file_and_context(("vllm", "serve", "x")) == (None, None)


def test_measured_store_persists_per_model_and_command(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    a = spec("engine --port ${PORT} -m a.gguf")
    MeasuredStore(path).put(a, 123 * MiB)
    assert MeasuredStore(path).get(a) == 123 * MiB
    changed = spec("engine --port ${PORT} -m b.gguf")
    assert MeasuredStore(path).get(changed) is None


def test_group_rss_of_this_process_group_is_positive() -> None:
    import os

    assert group_rss(os.getpgid(0)) > 10 * MiB
    assert group_rss(2**22 + 12345) == 0


async def test_unknown_need_is_learned_after_load_and_then_packs() -> None:
    """Without a declaration or a GGUF to read, a model runs alone; once its real
    use is measured, a model that declares its need fits beside it."""
    models = {"a": {"cmd": fake_engine_cmd("a")},
              "b": {"cmd": fake_engine_cmd("b"), "memory": "100MiB"}}  # fmt: skip
    cfg = config(models, devices={"ram": {"memory": "1GiB"}}, scheduler={"learn_memory": True})
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:
        body = {"model": "a", "messages": [], "max_tokens": 2}
        async with http.post(srv.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
        mem = await wait_measured(http, srv.url, "a")
        assert 5 * MiB < mem["measured"] < 500 * MiB
        assert mem["estimated"] is None and mem["declared"] is None

        async def a_scheduled() -> Any:
            return (await resident(http, srv.url))["models"]["a"]["memory"]["scheduled"]

        await eventually(a_scheduled)
        async with http.post(srv.url + "/v1/chat/completions", json={**body, "model": "b"}) as r:
            assert r.status == 200
        states = {m: d["state"] for m, d in (await resident(http, srv.url))["models"].items()}
        assert states == {"a": "ready", "b": "ready"}
