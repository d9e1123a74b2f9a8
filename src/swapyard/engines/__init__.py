"""Engine adapters: how each engine kind is launched, checked and fast-swapped."""

from __future__ import annotations

from swapyard.engines.base import ENGINE_KINDS, Adapter, BaseAdapter, EngineFields, Launch
from swapyard.engines.llamacpp import LlamaCpp
from swapyard.engines.ollama import Ollama
from swapyard.engines.remote import OpenAiRemote
from swapyard.engines.sglang import Sglang
from swapyard.engines.tabbyapi import TabbyApi
from swapyard.engines.vllm import Vllm

__all__ = ["ENGINE_KINDS", "Adapter", "EngineFields", "Launch", "adapter"]

_ADAPTERS: dict[str, Adapter] = {
    a.kind: a for a in (LlamaCpp(), Vllm(), Sglang(), TabbyApi(), Ollama(), OpenAiRemote())
}
_COMMAND = BaseAdapter()


def adapter(kind: str) -> Adapter:
    """The adapter for an engine kind (``command``: no launch of its own)."""
    return _ADAPTERS.get(kind, _COMMAND)
