"""Open WebUI 0.12.4 driven end to end against a real swapyard (issue 14): the
model list with each model's loaded state, chats that swap smollm2 → tiny →
smollm2 on the real llama.cpp server, and the loading status shown as the chat's
"thinking" block.

Open WebUI runs as a real process from its own virtual environment
(``scripts/install-open-webui``; ``$SWAPYARD_OPEN_WEBUI`` names its executable),
offline, on loopback, with a fresh data dir, once for this module. Without it the
tier is skipped; with ``$SWAPYARD_REQUIRE_OPEN_WEBUI=1`` (``.ci/run``) a missing
install fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import eventually, eventually_sync, load_counts
from swapyard.defaults import default_config_text, ensure_default_models
from swapyard.ports import PortAllocator

# Open WebUI alone takes ~15-30 s to come up; each test gets the default budget on top.
pytestmark = [pytest.mark.openwebui, pytest.mark.timeout(300)]

QUESTION = "What color is the sky on a clear day?"
START_TIMEOUT = 240.0

# How a client reads a model's loaded state from Open WebUI's model list, which
# carries the fields of swapyard's /v1/models entry: field (dotted path) → its
# value when the model is loaded, and when it is not: swapyard's own, and
# llama.cpp router mode's shape, which Open WebUI's loaded badge reads.
LOADED_FIELDS: dict[str, tuple[str, str]] = {
    "state": ("ready", "stopped"),
    "status.value": ("loaded", "unloaded"),
}


def open_webui_executable() -> str:
    path = os.environ.get("SWAPYARD_OPEN_WEBUI", "")
    if not path:
        why = (
            "Open WebUI is not installed: run scripts/install-open-webui (scripts/test "
            "then finds it), or set SWAPYARD_OPEN_WEBUI to its open-webui executable"
        )
        if os.environ.get("SWAPYARD_REQUIRE_OPEN_WEBUI") == "1":
            pytest.fail(why + " (SWAPYARD_REQUIRE_OPEN_WEBUI=1: this tier must run)")
        pytest.skip(why)
    if not os.access(path, os.X_OK):
        pytest.fail(f"SWAPYARD_OPEN_WEBUI={path} is not an executable")
    return path


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_group(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def start(
    argv: list[str], env: dict[str, str], log: Path, health: str, what: str
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group and wait until ``health`` answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}:\n{log_tail(log)}")
        return http_status(health) == 200

    try:
        eventually_sync(healthy, timeout=START_TIMEOUT, interval=0.25, what=f"{what} healthy")
    except BaseException:
        stop_group(proc)
        raise
    return proc


@pytest.fixture(scope="module")
def swapyard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``swapyard serve`` with its built-in default: smollm2 and tiny on the real
    llama.cpp server, and a memory budget with room for one of them at a time."""
    tmp = tmp_path_factory.mktemp("swapyard")
    cfg = tmp / "config.yaml"
    cfg.write_text(default_config_text(ensure_default_models(), threads=2))
    url = f"http://127.0.0.1:{PortAllocator().allocate()}"
    port = url.rsplit(":", 1)[1]
    argv = [sys.executable, "-m", "swapyard", "serve", "-c", str(cfg), "--port", port]
    proc = start(argv, dict(os.environ), tmp / "swapyard.log", url + "/health", "swapyard")
    try:
        yield url
    finally:
        # swapyard stops its engines on SIGTERM (each in its own group).
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_group(proc)


@dataclass(frozen=True)
class OpenWebUI:
    url: str
    token: str
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def open_webui_env(data_dir: Path, backend: str) -> dict[str, str]:
    """Offline, loopback only, no telemetry, no update check, no embedding model
    download; the one backend is swapyard's OpenAI endpoint (RUNNING_HERE.md)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OLLAMA_"))}
    env.update(
        DATA_DIR=str(data_dir),
        OFFLINE_MODE="true",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WEBUI_AUTH="False",
        WEBUI_SECRET_KEY=uuid.uuid4().hex,
        ENABLE_VERSION_UPDATE_CHECK="false",
        RAG_EMBEDDING_ENGINE="openai",
        BYPASS_EMBEDDING_AND_RETRIEVAL="true",
        RAG_EMBEDDING_MODEL_AUTO_UPDATE="false",
        RAG_RERANKING_MODEL_AUTO_UPDATE="false",
        ENABLE_OLLAMA_API="false",
        OPENAI_API_BASE_URL=backend + "/v1",
        OPENAI_API_KEY="none",
        SCARF_NO_ANALYTICS="true",
        DO_NOT_TRACK="true",
        ANONYMIZED_TELEMETRY="false",
    )
    return env


@pytest.fixture(scope="module")
def exe() -> str:
    """Open WebUI's executable, asked for first: a skip starts nothing."""
    return open_webui_executable()


@pytest.fixture(scope="module")
def owui(exe: str, swapyard: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenWebUI]:
    """Open WebUI pointed at swapyard, signed in (``WEBUI_AUTH=False``: one admin,
    an empty sign-in)."""
    tmp = tmp_path_factory.mktemp("open-webui")
    (tmp / "data").mkdir()
    url = f"http://127.0.0.1:{PortAllocator().allocate()}"
    argv = [exe, "serve", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    env = open_webui_env(tmp / "data", swapyard)
    log = tmp / "open-webui.log"
    t0 = time.monotonic()
    proc = start(argv, env, log, url + "/health", "Open WebUI")
    print(f"Open WebUI healthy after {time.monotonic() - t0:.1f} s")
    try:
        req = urllib.request.Request(
            url + "/api/v1/auths/signin",
            data=json.dumps({"email": "", "password": ""}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            token = json.loads(r.read())["token"]
        yield OpenWebUI(url, token, log)
    finally:
        stop_group(proc)


def loaded_fields(entry: dict[str, Any]) -> dict[str, str]:
    out = {}
    for path in LOADED_FIELDS:
        value: Any = entry
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        out[path] = value
    return out


def shown_as(loaded: bool) -> dict[str, str]:
    return {path: pair[0 if loaded else 1] for path, pair in LOADED_FIELDS.items()}


async def listed(http: aiohttp.ClientSession, owui: OpenWebUI) -> dict[str, dict[str, str]]:
    """Open WebUI's model list: id → the loaded-state fields a client reads there."""
    async with http.get(owui.url + "/api/models", headers=owui.headers) as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    return {m["id"]: loaded_fields(m) for m in doc["data"]}


async def shows(
    http: aiohttp.ClientSession, owui: OpenWebUI, expected: dict[str, dict[str, str]]
) -> None:
    """Open WebUI's model list comes to show ``expected`` (it keeps the backend's
    list for ``MODELS_CACHE_TTL``, 1 s by default, as its page sees it)."""
    seen: list[object] = []

    async def now() -> bool:
        seen.append(await listed(http, owui))
        return seen[-1] == expected

    try:
        await eventually(now, timeout=10, interval=0.2)
    except AssertionError:
        assert seen[-1] == expected  # the last list seen, against the one expected


async def states(http: aiohttp.ClientSession, swapyard: str) -> dict[str, str]:
    async with http.get(swapyard + "/health") as r:
        doc = await r.json()
    return {m: s["state"] for m, s in doc["models"].items()}


async def unload_all(http: aiohttp.ClientSession, swapyard: str) -> None:
    for model in ("smollm2", "tiny"):
        async with http.post(f"{swapyard}/api/models/{model}/unload") as r:
            assert r.status == 200, await r.text()


def reasoning_lines(message: dict[str, Any]) -> list[str]:
    """The lines of the "thinking" block(s) Open WebUI saved with an answer."""
    text = "".join(
        part.get("text", "")
        for item in message.get("output") or []
        if item.get("type") == "reasoning"
        for part in item.get("content") or []
    )
    return text.splitlines()


async def chat_as_browser(
    http: aiohttp.ClientSession, owui: OpenWebUI, model: str
) -> dict[str, Any]:
    """A new chat sent the way Open WebUI's page sends one (a socket session, the
    user message and the assistant message's id, ``stream: true``): Open WebUI runs
    it as a background task, streams it to the page and saves it. Returns the
    assistant message once saved whole, as the page shows it on reload."""
    user_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 24,
        "temperature": 0,
        "parent_id": None,
        "id": reply_id,
        "session_id": uuid.uuid4().hex,
        "user_message": {
            "id": user_id, "role": "user", "content": QUESTION, "parentId": None,
            "childrenIds": [reply_id], "timestamp": int(time.time()),
        },
    }  # fmt: skip
    async with http.post(owui.url + "/api/chat/completions", json=body, headers=owui.headers) as r:
        assert r.status == 200, await r.text()
        started = await r.json()
    assert started["status"] is True and started["task_ids"], started
    chat_url = f"{owui.url}/api/v1/chats/{started['chat_id']}"

    async def saved() -> dict[str, Any] | None:
        async with http.get(chat_url, headers=owui.headers) as r:
            doc = await r.json()
        message: dict[str, Any] = doc["chat"]["history"]["messages"][reply_id]
        return message if message.get("done") else None

    what = f"{model}'s answer saved in the chat"
    message: dict[str, Any] = await eventually(saved, timeout=120, interval=0.2, what=what)
    assert not message.get("error"), (message, log_tail(owui.log))
    return message


async def test_open_webui_lists_the_models_with_their_loaded_state(
    http: aiohttp.ClientSession, owui: OpenWebUI, swapyard: str
) -> None:
    """Open WebUI's model list names swapyard's models and shows which one is
    loaded, live: loading one through swapyard changes what Open WebUI lists."""
    await unload_all(http, swapyard)
    await shows(http, owui, {"smollm2": shown_as(False), "tiny": shown_as(False)})
    async with http.post(swapyard + "/api/models/smollm2/load") as r:
        assert r.status == 200, await r.text()
    await shows(http, owui, {"smollm2": shown_as(True), "tiny": shown_as(False)})


async def test_chats_through_open_webui_swap_smollm2_tiny_smollm2(
    http: aiohttp.ClientSession, owui: OpenWebUI, swapyard: str
) -> None:
    """Three chats from Open WebUI's page, smollm2 then tiny then smollm2: each
    answer arrives, and swapyard swaps the models in and out for them."""
    await unload_all(http, swapyard)
    before = {m: await load_counts(http, swapyard, m) for m in ("smollm2", "tiny")}

    answer = await chat_as_browser(http, owui, "smollm2")
    assert "blue" in answer["content"].lower(), answer
    assert await states(http, swapyard) == {"smollm2": "ready", "tiny": "stopped"}

    answer = await chat_as_browser(http, owui, "tiny")
    assert len(answer["content"].split()) >= 3, answer  # real tokens from random weights
    assert await states(http, swapyard) == {"smollm2": "stopped", "tiny": "ready"}
    await shows(http, owui, {"smollm2": shown_as(False), "tiny": shown_as(True)})

    answer = await chat_as_browser(http, owui, "smollm2")
    assert "blue" in answer["content"].lower(), answer
    assert await states(http, swapyard) == {"smollm2": "ready", "tiny": "stopped"}

    after = {m: await load_counts(http, swapyard, m) for m in ("smollm2", "tiny")}
    cold = {m: after[m].get("cold", 0) - before[m].get("cold", 0) for m in after}
    assert cold == {"smollm2": 2, "tiny": 1}


async def test_loading_status_shows_as_the_chats_thinking_block(
    http: aiohttp.ClientSession, owui: OpenWebUI, swapyard: str
) -> None:
    """A chat with a cold model: swapyard's loading status reaches the page as the
    answer's "thinking" block (Open WebUI reads ``reasoning_content``), the answer
    text stays clean."""
    await unload_all(http, swapyard)
    answer = await chat_as_browser(http, owui, "tiny")
    lines = reasoning_lines(answer)
    assert lines and lines[-1].startswith("Model tiny ready after"), answer
    assert all("tiny" in line for line in lines), lines
    assert "tiny" not in answer["content"] and "ready after" not in answer["content"]


async def test_loading_status_streams_through_open_webuis_api(
    http: aiohttp.ClientSession, owui: OpenWebUI, swapyard: str
) -> None:
    """A script streaming from Open WebUI's chat API (no page session) gets
    swapyard's stream as it comes: the loading status as ``reasoning_content``
    lines, then the answer."""
    await unload_all(http, swapyard)
    body = {
        "model": "smollm2", "stream": True, "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "user", "content": QUESTION}],
    }  # fmt: skip
    status, text = [], ""
    async with http.post(owui.url + "/api/chat/completions", json=body, headers=owui.headers) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            for choice in json.loads(line.removeprefix("data:")).get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    status.append(delta["reasoning_content"].strip())
                text += delta.get("content") or ""
    assert status and status[-1].startswith("Model smollm2 ready after"), status
    assert "blue" in text.lower(), text
