"""The context one request may use, as ``/v1/models`` and the Ollama front report it
(issue 14): the engine's context over its slots unless they share one cache, never
above what the model was trained for."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import config
from swapyard.defaults import ensure_default_models
from swapyard.resources.context import served_context


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return ensure_default_models()


def context(model: Path, *args: str) -> tuple[int | None, int | None]:
    cmd = ["llama-server", "-m", str(model), "--port", "${PORT}", *args]
    spec = config({"m": {"cmd": cmd}}).models["m"]
    return served_context(spec)


def test_slots_split_the_context_unless_they_share_one_cache(models: dict[str, Path]) -> None:
    """``-c 1024 -np 2`` leaves 512 tokens a request; with ``-kvu`` each may use 1024."""
    assert context(models["smollm2"], "-c", "1024", "-np", "2") == (512, 8192)
    assert context(models["smollm2"], "-c", "1024", "-np", "2", "-kvu") == (1024, 8192)


def test_context_never_exceeds_what_the_model_was_trained_for(models: dict[str, Path]) -> None:
    """The tiny model is trained for 2048 tokens: a shared 8192 still gives 2048 a request."""
    assert context(models["tiny"], "-c", "8192", "-np", "4", "-kvu") == (2048, 2048)


def test_without_a_context_the_engine_uses_the_models_own(models: dict[str, Path]) -> None:
    """llama-server without ``-c`` serves the context the model was trained for."""
    assert context(models["smollm2"]) == (8192, 8192)
    spec = config({"m": {"cmd": "engine --port ${PORT}"}}).models["m"]
    assert served_context(spec) == (None, None)


def test_a_gguf_cut_short_is_a_value_error_not_a_crash(tmp_path: Path) -> None:
    """Review of issue 14: a model file still being copied raised struct.error from
    the header reader, and the model lists that read it answered 500."""
    from swapyard.resources import gguf

    cut = tmp_path / "half.gguf"
    cut.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little")
                    + (5).to_bytes(8, "little") + b"\x01")  # fmt: skip
    with pytest.raises(ValueError, match="not a whole GGUF file"):
        gguf.read_info(cut)
    assert context(cut, "-c", "1024") == (1024, None)
