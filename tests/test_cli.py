"""``swapyard serve`` as a real subprocess: config errors, port taken, and a clean
SIGTERM/SIGINT shutdown that stops every engine it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from helpers import eventually_sync, group_members, pid_alive
from swapyard.ports import PortAllocator
from swapyard.testing import fake_engine_cmd

SWAPYARD = [sys.executable, "-m", "swapyard"]


def write_config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def get_json(url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc: dict[str, object] = json.loads(r.read())
        return doc


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    def listening() -> bool:
        assert proc.poll() is None, proc.communicate()[1].decode()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    eventually_sync(listening, timeout=timeout, what="swapyard listening")


def test_bad_config_exits_1_naming_file_and_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "models:\n  m:\n    cmd: x ${PORT}\n    tll: 3\n")
    out = subprocess.run([*SWAPYARD, "serve", "-c", str(cfg)], capture_output=True, timeout=30)
    assert out.returncode == 1
    err = out.stderr.decode()
    assert str(cfg) in err and "unknown key 'tll'" in err and "model 'm'" in err


def test_port_taken_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"models:\n  m:\n    cmd: {fake_engine_cmd('m')}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [*SWAPYARD, "serve", "-c", str(cfg), "--port", str(port)],
            capture_output=True,
            timeout=30,
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_engine_before_exit(tmp_path: Path, sig: signal.Signals) -> None:
    """Even an engine that ignores SIGTERM (and its grandchild) is gone when swapyard exits."""
    cmd = fake_engine_cmd("m", ignore_sigterm=True, grandchild=True)
    cfg = write_config(
        tmp_path,
        f"server: {{shutdown_timeout: 4s}}\nmodels:\n  m:\n    cmd: {cmd}\n    stop_timeout: 0.5\n",
    )
    port = PortAllocator().allocate()
    proc = subprocess.Popen(
        [*SWAPYARD, "serve", "-c", str(cfg), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}"
        doc = get_json(url + "/v1/chat/completions", {"model": "m", "messages": []})
        assert doc["model"] == "m"
        engine_pid = get_json(url + "/health")["models"]["m"]["pid"]  # type: ignore[index]
        assert isinstance(engine_pid, int) and pid_alive(engine_pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert group_members(engine_pid) == []
        assert "shutting down" in err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_serve_runs_on_uvloop_unless_asked_for_asyncio(tmp_path: Path, loop: str) -> None:
    """`serve` runs on uvloop by default (benchmarks/README.md measures both loops);
    `--loop asyncio` gives the standard loop. Regression: issue 9."""
    cfg = write_config(tmp_path, f"models:\n  m:\n    cmd: {fake_engine_cmd('m')}\n")
    port = PortAllocator().allocate()
    argv = [*SWAPYARD, "serve", "-c", str(cfg), "--port", str(port), "--loop", loop]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    want = "uvloop" if loop == "auto" else "asyncio"
    assert f"(event loop: {want})" in err.decode()


def test_version_and_help() -> None:
    out = subprocess.run([*SWAPYARD, "--version"], capture_output=True, timeout=30)
    assert out.returncode == 0 and b"swapyard" in out.stdout
    out = subprocess.run([*SWAPYARD, "serve", "--help"], capture_output=True, timeout=30)
    assert b"--config" in out.stdout and b"--port" in out.stdout


KEYED = """\
auth:
  admin_key_env: SY_TEST_ADMIN_KEY
  keys:
    - {{name: webui, key_env: SY_TEST_WEBUI_KEY}}
models:
  m:
    cmd: {cmd} --label ${{env.SY_TEST_LABEL}}
"""


def without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def test_config_check_warns_of_each_unset_variable_and_exits_0(tmp_path: Path) -> None:
    """Keys the service's environment holds need not be set where the file is
    checked (issue 14): `ok`, then one warning per variable naming `serve`."""
    cfg = write_config(tmp_path, KEYED.format(cmd=fake_engine_cmd("m")))
    names = ("SY_TEST_ADMIN_KEY", "SY_TEST_WEBUI_KEY", "SY_TEST_LABEL")
    out = subprocess.run([*SWAPYARD, "config", "check", str(cfg)], capture_output=True,
                         text=True, timeout=30, env=without(*names))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{cfg}: ok — 1 models")
    assert sorted(out.stderr.splitlines()) == [
        f"{cfg}: warning: environment variable {name} is not set here; "
        "`swapyard serve` will need it"
        for name in sorted(names)
    ]


def test_config_check_is_quiet_when_the_variables_are_set(tmp_path: Path) -> None:
    """With every variable set there is nothing to warn of, and no value is shown."""
    cfg = write_config(tmp_path, KEYED.format(cmd=fake_engine_cmd("m")))
    env = {**os.environ, "SY_TEST_ADMIN_KEY": "adm-1234", "SY_TEST_WEBUI_KEY": "sk-5678",
           "SY_TEST_LABEL": "x"}  # fmt: skip
    out = subprocess.run([*SWAPYARD, "config", "check", str(cfg)], capture_output=True,
                         text=True, timeout=30, env=env)  # fmt: skip
    assert out.returncode == 0 and out.stderr == ""
    assert "adm-1234" not in out.stdout and "sk-5678" not in out.stdout


def test_serve_still_refuses_a_config_whose_key_variable_is_unset(tmp_path: Path) -> None:
    """What `config check` only warns of stops `serve`: exit 1 naming the variable."""
    cfg = write_config(tmp_path, KEYED.format(cmd=fake_engine_cmd("m")))
    env = {**without("SY_TEST_WEBUI_KEY"), "SY_TEST_ADMIN_KEY": "a", "SY_TEST_LABEL": "x"}
    out = subprocess.run([*SWAPYARD, "serve", "-c", str(cfg), "--port", "1"],
                         capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert out.returncode == 1
    assert "'SY_TEST_WEBUI_KEY' is not set" in out.stderr
