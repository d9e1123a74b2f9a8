"""Every operator CLI command against a running swapyard (``CliRunner`` in a
thread, since the server runs on the test's event loop), and ``scan`` on the real
GGUF models and on generated safetensors folders with each quantization config."""

from __future__ import annotations

import asyncio
import json
import statistics
import struct
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result

from helpers import config
from swapyard.cli.main import cli
from swapyard.defaults import ensure_default_models
from swapyard.testing import fake_engine_cmd, running_server

MODELS = {
    "a": {"cmd": fake_engine_cmd("a", tokens_per_second=200, load_delay=0.3)},
    "b": {"cmd": fake_engine_cmd("b", tokens_per_second=200)},
}


async def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)


async def test_ps_load_unload_logs_usage_bench(http: aiohttp.ClientSession) -> None:
    t_start = time.time()  # the usage store is shared by the tests of a session
    async with running_server(config(MODELS, loading_status="off")) as srv:
        url = ["--url", srv.url]
        r = await run("ps", *url)
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert lines[0].split()[:3] == ["MODEL", "ENGINE", "STATE"]
        assert lines[1].split()[:3] == ["a", "command", "stopped"]

        r = await run("load", "a", *url)
        assert r.exit_code == 0 and "a: ready after" in r.output, r.output
        assert "loading a [" in r.output  # the progress line while it loads
        r = await run("ps", "--json", *url)
        assert json.loads(r.output)["models"]["a"]["state"] == "ready"

        r = await run("logs", "a", "-n", "3", *url)
        assert r.exit_code == 0 and "[swapyard] starting -> ready" in r.output

        r = await run("bench", "a", "-n", "4", "-c", "2", "--max-tokens", "8", "--json", *url)
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        s = doc["summary"]["a"]
        assert s["requests"] == 4 and s["errors"] == 0
        assert all(x["completion_tokens"] == 8 for x in doc["requests"])
        for x in doc["requests"]:  # first token, then n-1 intervals, within the total
            span = (x["completion_tokens"] - 1) / x["tok_s"]
            assert 0 < x["ttft_s"] < x["ttft_s"] + span <= x["total_s"] + 1e-6, x
        assert s["tok_s_p50"] == statistics.median(x["tok_s"] for x in doc["requests"])
        r = await run("bench", "a", "-n", "2", "--max-tokens", "4", *url)
        assert "TTFT P50 s" in r.output and r.output.splitlines()[1].startswith("a ")

        r = await run("usage", "--since", str(t_start), *url)
        assert r.exit_code == 0 and r.output.splitlines()[0].startswith("MODEL")
        assert any(ln.split()[:2] == ["a", "6"] for ln in r.output.splitlines()), r.output

        r = await run("unload", "--all", *url)
        assert r.exit_code == 0 and "a: stopped" in r.output
        r = await run("unload", "nope", *url)
        assert (r.exit_code == 1 and "model_not_found" in r.output) or "nope" in r.output

    r = await run("ps", "--url", "http://127.0.0.1:9")  # nothing listens there
    assert r.exit_code == 1 and "cannot reach swapyard" in r.output


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("models:\n  m:\n    engine: vllm\n    model: Qwen/Qwen2.5-7B\n")
    r = CliRunner().invoke(cli, ["config", "check", str(good)])
    assert r.exit_code == 0 and "ok — 1 models (1 vllm)" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    engine: vllm\n    modle: x\n")
    r = CliRunner().invoke(cli, ["config", "check", str(bad)])
    assert r.exit_code == 1 and "unknown key 'modle'" in r.output and "bad.yaml" in r.output


def test_service_install_writes_a_unit(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  m:\n    cmd: x --port ${PORT}\n")
    dest = tmp_path / "swapyard.service"
    r = CliRunner().invoke(cli, ["service", "install", "-c", str(cfg), "--dest", str(dest)])
    assert r.exit_code == 0, r.output
    unit = dest.read_text()
    assert f"serve -c {cfg.resolve()}" in unit
    assert "Restart=on-failure" in unit and "KillMode=process" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "WantedBy=multi-user.target" in unit
    assert "systemctl daemon-reload && systemctl enable --now swapyard" in r.output


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    sizes = {"F16": 2, "BF16": 2, "F32": 4, "I32": 4, "F8_E4M3": 1, "U8": 1}
    header: dict[str, Any] = {}
    off = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * off)


QUANTS: dict[str, tuple[dict[str, Any] | None, str, str]] = {
    # folder: (quantization_config, weight dtype, expected engine)
    "plain": (None, "BF16", "vllm"),
    "awq": ({"quant_method": "awq", "bits": 4}, "I32", "vllm"),
    "gptq": ({"quant_method": "gptq", "bits": 4}, "I32", "vllm"),
    "fp8": ({"quant_method": "fp8"}, "F8_E4M3", "vllm"),
    "ct": ({"quant_method": "compressed-tensors"}, "F8_E4M3", "vllm"),
    "exl2": ({"quant_method": "exl2", "bits": 4.0}, "I32", "tabbyapi"),
}


def test_scan_finds_real_gguf_and_each_safetensors_quantization(tmp_path: Path) -> None:
    for name, (q, dtype, _) in QUANTS.items():
        d = tmp_path / "hf" / name
        d.mkdir(parents=True)
        cfg: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
        }
        if q:
            cfg["quantization_config"] = q
        (d / "config.json").write_text(json.dumps(cfg))
        name_w = "layers.0.qweight" if dtype == "I32" else "layers.0.weight"
        write_safetensors(
            d / "model.safetensors", {name_w: (dtype, [64, 8 if dtype == "I32" else 64])}
        )
    models = ensure_default_models()
    r = CliRunner().invoke(cli, ["scan", str(tmp_path / "hf"), str(models["smollm2"].parent),
                                 "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    found = {Path(f["path"]).name: f for f in json.loads(r.output)}
    smol = found[models["smollm2"].name]
    assert smol["format"] == "gguf" and smol["architecture"] == "llama"
    assert 130e6 < smol["params"] < 140e6 and smol["quantization"] == "Q4_1"
    assert smol["engine"] == "llamacpp" and smol["entry"]["engine"] == "llamacpp"
    for name, (q, _, engine) in QUANTS.items():
        f = found[name]
        assert f["engine"] == engine, (name, f)
        assert f["params"] == 64 * 64, (name, f["params"])
        if q:
            assert (f["quantization"] or "").startswith(q["quant_method"])
        assert f["memory"] and f["memory"] > 0
    assert found["exl2"]["format"] == "exl2"
    assert any("TabbyAPI" in w for w in found["exl2"]["warnings"])
    assert any("compressed-tensors" in w for w in found["ct"]["warnings"])
    r = CliRunner().invoke(cli, ["scan", str(tmp_path / "hf")])
    assert "# config entries" in r.output and "engine: tabbyapi" in r.output


@pytest.mark.parametrize("argv", [["scan", "/nonexistent-dir"], ["config", "check", "/nope.yaml"]])
def test_bad_paths_fail_clearly(argv: list[str]) -> None:
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code != 0
