"""The example configs that reproduce the users' setups load and validate, and say
what they promise (engines, devices, tensor parallelism, pins)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from swapyard.config import Config, load_config

EXAMPLES = Path(__file__).parent.parent / "examples"
ENV = {
    "TABBY_ADMIN_KEY": "example-admin-key",
    "SWAPYARD_ADMIN_KEY": "admin",
    "OPENWEBUI_API_KEY": "sk-webui",
    "HYDRA_AI_KEY": "sk-front",
    "HYDRA_AI_ADMIN_KEY": "hydra-ai-admin",
}


def load(name: str) -> Config:
    path = EXAMPLES / name
    return load_config(path.read_text(), source=str(path), environ=ENV)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads_and_names_the_setup_it_reproduces(path: Path) -> None:
    text = path.read_text()
    assert "Reproduces the users' setup" in text.splitlines()[0]
    load(path.name)


def test_gb200_six_models_on_sglang_awq_and_tabbyapi_exl2() -> None:
    cfg = load("gb200-sglang-tabbyapi.yaml")
    engines = [m.engine for m in cfg.models.values()]
    assert len(cfg.models) == 6 and engines.count("sglang") == 5 and "tabbyapi" in engines
    assert [d.id for d in cfg.devices] == ["0"] and cfg.devices[0].memory == 95 * 10**9
    mistral = cfg.models["mistral-large-2411-awq"]
    assert "--quantization" in mistral.cmd and "awq_marlin" in mistral.cmd
    assert "--attention-backend" in mistral.cmd  # a macro holding several words
    assert mistral.fast  # the SGLang memory saver


def test_four_gpu_tensor_parallel_sglang() -> None:
    cfg = load("rtx3090x4-sglang-tp4.yaml")
    assert len(cfg.models) == 5 and [d.id for d in cfg.devices] == ["1", "2", "3", "4"]
    for m in cfg.models.values():
        assert m.engine == "sglang" and m.gpus == 4 and m.cumulative_stream
        assert m.cmd[m.cmd.index("--tp-size") + 1] == "4"


def test_tabbyapi_over_two_unequal_gpus_on_its_own_host() -> None:
    cfg = load("hydra-ai-tabbyapi-host.yaml")
    tabby = cfg.models["llama-3.1-70b"]
    assert tabby.gpus == 2 and "--gpu-split" in tabby.cmd and "--gpu-split-auto" not in tabby.cmd
    assert dict(tabby.check_headers) == {"x-admin-key": "example-admin-key"}
    assert {d.id: d.memory for d in cfg.devices} == {"0": 32 * 10**9, "1": 24 * 10**9}
    assert [k.key for k in cfg.auth.keys] == [ENV["HYDRA_AI_KEY"]]  # the front's key
    assert not any(m.remote for m in cfg.models.values())


def test_the_hydra_front_routes_to_its_peer_and_falls_back_to_the_cpu_host() -> None:
    """Issue 15: where LiteLLM ran, one swapyard with hydra-ai as a peer, the Ollama
    hosts as remote models, LiteLLM's fallback chain as fallbacks and a virtual id."""
    cfg = load("hydra-front.yaml")
    (peer,) = cfg.peers.values()
    assert (peer.name, peer.url) == ("hydra-ai", "http://hydra-ai:8080")
    remote = [m for m in cfg.models.values() if m.remote]
    assert {m.proxy for m in remote} == {"http://hydra-compute:11434", "http://hydra-storage:11434"}
    assert cfg.models["qwen2.5-14b"].fallbacks == ("llama3.2-cpu",)
    chain = cfg.virtual["llama-70b"]
    assert chain.models == ("llama-3.1-70b", "qwen2.5-14b", "llama3.2-cpu")  # the peer's first
    assert chain.pick == "in-order" and cfg.virtual["any-chat"].pick == "loaded-first"


def test_gb10_always_on_and_on_demand_slots() -> None:
    cfg = load("gb10-spark-slots.yaml")
    assert cfg.models["scout-17b"].pin
    assert cfg.models["qwen-uncensored"].ttl == 1800
    docker = cfg.models["scout-17b-vllm"]
    assert docker.cmd[:2] == ("docker", "run") and docker.cmd_stop == (
        "docker",
        "stop",
        "swapyard-vllm",
    )
    assert {m.engine for m in cfg.models.values()} == {"sglang", "vllm", "ollama"}
    assert cfg.scheduler.host_memory == 0


SHIPPED = [*sorted(EXAMPLES.glob("*.yaml")), EXAMPLES.parent / "config.example.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_config_check_says_ok_on_each_shipped_file_without_its_keys(path: Path) -> None:
    """As the README shows, on a shell without the service's key variables (issue 14):
    exit 0 and `ok`; each unset variable is a warning naming it."""
    env = {k: v for k, v in os.environ.items() if k not in ENV and k != "EXAMPLE_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "swapyard", "config", "check", str(path)],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{path}: ok — ")
    for line in out.stderr.splitlines():
        assert re.fullmatch(rf"{re.escape(str(path))}: warning: environment variable \w+ is not "
                            r"set here; `swapyard serve` will need it", line), line  # fmt: skip
