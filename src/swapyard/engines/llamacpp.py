"""llama.cpp's ``llama-server``: flags and ``/health`` from its README.

The program is, in order: ``launcher`` from the config, ``$SWAPYARD_LLAMA_SERVER``,
``llama-server`` on ``PATH``, or the server from the ``xllamacpp`` wheel run as a
child (``xllamacpp_server``: llama-server's flags, those it cannot map refused by
name). llama.cpp has no sleep mode; its load phases are read from its log and
shown in the loading status.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys

from swapyard.engines.base import PORT, BaseAdapter, EngineFields, Launch, flag

_PHASES = (
    (re.compile(r"llama_model_loader: loaded meta data"), 0.1, "reading the model's metadata"),
    (re.compile(r"load_tensors: loading model tensors"), 0.2, "loading tensors"),
    (re.compile(r"load_tensors: .*buffer size"), 0.5, "tensors loaded"),
    (re.compile(r"llama_context: constructing"), 0.6, "creating the context"),
    (re.compile(r"llama_kv_cache"), 0.7, "allocating the KV cache"),
    (re.compile(r"warming up the model"), 0.85, "warming up"),
    (re.compile(r"model loaded|server is listening|all slots are idle"), 1.0, "model loaded"),
)


def default_launcher() -> tuple[str, ...]:
    if env := os.environ.get("SWAPYARD_LLAMA_SERVER"):
        return (env,)
    if path := shutil.which("llama-server"):
        return (path,)
    if importlib.util.find_spec("xllamacpp") is not None:
        return (sys.executable, "-m", "swapyard.engines.xllamacpp_server")
    return ("llama-server",)


class LlamaCpp(BaseAdapter):
    kind = "llamacpp"

    def launch(self, f: EngineFields) -> Launch:
        if not f.model:
            raise ValueError("engine llamacpp needs `model:` (the path of a .gguf file)")
        if f.quantization is not None:
            raise ValueError("llamacpp reads the quantization from the GGUF file; drop it")
        if f.gpu_memory_fraction is not None:
            raise ValueError("llamacpp has no gpu_memory_fraction; use extra_args (-ngl N)")
        args = [*(f.launcher or default_launcher()), "-m", f.model]
        args += ["--host", "127.0.0.1", "--port", PORT, "--alias", f.served_name]
        flag(args, "-c", f.context)
        if f.tensor_parallel > 1:
            args += ["--split-mode", "row"]
        # llama-server serves /v1/messages and /v1/messages/count_tokens (llama.cpp #17570).
        return Launch(tuple(args + list(f.extra_args)), stream_usage=True, messages_api=True)

    def log_progress(self, line: str) -> tuple[float | None, str] | None:
        for pattern, fraction, text in _PHASES:
            if pattern.search(line):
                return fraction, text
        return None
