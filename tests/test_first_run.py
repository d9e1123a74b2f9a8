"""A new user's first ``swapyard serve``: no data dir yet, and a data dir that
cannot be made. Regression tests for issue 10 (an sqlite traceback on first run)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from test_cli import SWAPYARD, get_json, wait_listening

from swapyard.ports import PortAllocator
from swapyard.testing import fake_engine_cmd


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
