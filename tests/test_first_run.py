"""A new user's first ``swapyard serve``: no data dir yet, and a data dir that
cannot be made (regression tests for issue 10, an sqlite traceback on first run);
and what the built-in default runs: parallel slots where the memory allows them,
embeddings from smollm2 (issue 14)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from test_cli import SWAPYARD, get_json, wait_listening

from swapyard.config import load_config
from swapyard.defaults import (
    HEADROOM,
    PARALLEL,
    SLOT_CONTEXT,
    default_config_text,
    demo_budget,
    ensure_default_models,
    slots,
)
from swapyard.ports import PortAllocator
from swapyard.resources.needs import estimate_from_files
from swapyard.testing import fake_engine_cmd, running_server


def fresh_account(home: Path) -> dict[str, str]:
    """The environment of an account where swapyard never ran: an empty ``HOME``
    and no data dir chosen (conftest sets ``SWAPYARD_DATA_DIR`` for the suite)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SWAPYARD_DATA_DIR", "XDG_DATA_HOME")}
    env["HOME"] = str(home)
    return env


def three_line_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "my.yaml"
    cfg.write_text(f"models:\n  m:\n    cmd: {fake_engine_cmd('m')}\n")
    return cfg


def test_first_serve_creates_the_data_dir_and_answers(tmp_path: Path) -> None:
    """On a fresh account ``serve`` makes ``~/.local/share/swapyard``, answers a
    chat request and exits 0 on SIGTERM."""
    home = tmp_path / "home"
    home.mkdir()
    cfg = three_line_config(tmp_path)
    port = PortAllocator().allocate()
    proc = subprocess.Popen(
        [*SWAPYARD, "serve", "-c", str(cfg), "--port", str(port)],
        env=fresh_account(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, proc)
        doc = get_json(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert doc["model"] == "m"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        assert "Traceback" not in err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert (home / ".local" / "share" / "swapyard").is_dir()
    assert (home / ".local" / "share" / "swapyard" / "usage.db").is_file()


def test_data_dir_that_cannot_be_made_exits_1_with_one_line(tmp_path: Path) -> None:
    """A regular file where the data dir's parent should be: exit 1 and one line
    naming the path and the reason, no traceback."""
    home = tmp_path / "home"
    (home / ".local").mkdir(parents=True)
    (home / ".local" / "share").write_text("not a directory\n")
    cfg = three_line_config(tmp_path)
    port = PortAllocator().allocate()
    out = subprocess.run(
        [*SWAPYARD, "serve", "-c", str(cfg), "--port", str(port)],
        env=fresh_account(home),
        capture_output=True,
        timeout=30,
    )
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    want = home / ".local" / "share" / "swapyard"
    assert lines[0].startswith("swapyard: ") and str(want) in lines[0]
    assert "Not a directory" in lines[0]


def test_data_dir_that_is_a_file_exits_1_with_one_line(tmp_path: Path) -> None:
    """``$SWAPYARD_DATA_DIR`` naming a regular file: exit 1, one line that says so."""
    home = tmp_path / "home"
    home.mkdir()
    blocker = tmp_path / "data"
    blocker.write_text("")
    cfg = three_line_config(tmp_path)
    env = {**fresh_account(home), "SWAPYARD_DATA_DIR": str(blocker)}
    port = PortAllocator().allocate()
    out = subprocess.run(
        [*SWAPYARD, "serve", "-c", str(cfg), "--port", str(port)],
        env=env,
        capture_output=True,
        timeout=30,
    )
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert err.splitlines() == [
        f"swapyard: cannot use {blocker} for the usage store: it exists and is not a directory"
    ]


def test_slots_rule_wants_twice_the_four_slot_budget_free() -> None:
    """The rule for "the memory for them" (issue 14): four slots from twice the
    budget up, one below it or when either figure is unknown."""
    budget = 400 * 2**20
    assert slots(2 * budget, budget) == PARALLEL == 4
    assert slots(2 * budget - 1, budget) == 1
    assert slots(None, budget) == 1 and slots(2 * budget, None) == 1


@pytest.mark.parametrize("room", ["enough", "short"])
def test_default_slots_follow_free_memory_and_one_model_still_fits_at_a_time(room: str) -> None:
    """With twice the four-slot budget free each model runs ``-np 4 -kvu -c 8192``,
    else ``-np 1 -c 2048``; either way the RAM budget holds each model alone, as
    the scheduler estimates its command, and not both (so A, B, A swaps)."""
    models = ensure_default_models()
    free = HEADROOM * (demo_budget(models, PARALLEL) or 0) - (room == "short")
    cfg = load_config(default_config_text(models, threads=1, available=free))
    n = PARALLEL if room == "enough" else 1
    needs = {}
    for mid, spec in cfg.models.items():
        cmd = spec.cmd
        assert cmd[cmd.index("-np") + 1] == str(n)
        assert cmd[cmd.index("-c") + 1] == str(n * SLOT_CONTEXT)
        assert ("-kvu" in cmd) == (n > 1)
        assert ("--embeddings" in cmd) == (mid == "smollm2")
        needs[mid] = estimate_from_files(spec)
    (budget,) = (d.budget for d in cfg.devices)
    assert all(need is not None and need <= budget for need in needs.values()), needs
    assert sum(n for n in needs.values() if n is not None) > budget
    one_slot = estimate_from_files(
        load_config(default_config_text(models, available=0)).models["smollm2"]
    )
    assert one_slot is not None and needs["smollm2"] is not None
    assert (needs["smollm2"] > one_slot) == (n > 1)  # the estimate counts the 4 x 2048 tokens


@pytest.fixture(params=["xllamacpp", "llama-server"])
def launcher(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The default's engine: the wheel's launcher, or the compiled llama-server."""
    compiled = os.environ.get("SWAPYARD_LLAMA_SERVER")
    monkeypatch.delenv("SWAPYARD_LLAMA_SERVER", raising=False)
    if request.param == "llama-server":
        if not compiled:
            pytest.skip("no compiled llama-server ($SWAPYARD_LLAMA_SERVER)")
        monkeypatch.setenv("SWAPYARD_LLAMA_SERVER", compiled)
    return str(request.param)


@pytest.mark.llamacpp
async def test_default_smollm2_serves_embeddings_and_chat(launcher: str) -> None:
    """The built-in default answers /v1/embeddings from smollm2 (mean pooling) and
    still chats with it, on either engine (issue 14)."""
    cfg = load_config(default_config_text(ensure_default_models(), threads=2))
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:
        body = {"model": "smollm2", "input": ["the sky is blue", "grass is green"]}
        async with http.post(srv.url + "/v1/embeddings", json=body) as r:
            assert r.status == 200, await r.text()
            emb = await r.json()
        chat = {"model": "smollm2", "max_tokens": 8,
                "messages": [{"role": "user", "content": "What color is the sky?"}]}  # fmt: skip
        async with http.post(srv.url + "/v1/chat/completions", json=chat) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
    assert [len(d["embedding"]) for d in emb["data"]] == [576, 576]  # SmolLM2's n_embd
    assert answer["choices"][0]["message"]["content"]
