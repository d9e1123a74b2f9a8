"""Ollama requests as OpenAI ones (issue 14): ``/api/chat`` and ``/api/generate``
bodies become ``/v1/chat/completions`` (or ``/v1/completions``) bodies, and
``keep_alive`` becomes seconds. Pure functions; a bad value is a ``RequestError``
that names the field.

``options`` (Ollama's sampler settings) map to the OpenAI fields every engine
takes (``temperature``, ``top_p``, ``seed``, ``stop``, ``presence_penalty``,
``frequency_penalty``, ``num_predict`` → ``max_tokens``); the others go where the
engine kind takes them: llama.cpp's own names to llama.cpp (and to ``command``
engines, which are llama-server more often than not), ``top_k``, ``min_p`` and
``repeat_penalty`` → ``repetition_penalty`` to vLLM, SGLang and TabbyAPI. Remote
OpenAI-style servers and Ollama's own ``/v1`` get the standard ones only (OpenAI
refuses unknown fields). Load-time options (``num_ctx``, ``num_gpu``,
``num_thread``, ``num_batch``, ``use_mmap``...) are the engine's command line
and are ignored here, as is anything unknown.

``think``: ``true``/``false`` becomes ``chat_template_kwargs.enable_thinking`` for
llama.cpp, ``command``, vLLM and SGLang engines; the others (TabbyAPI, Ollama, a
remote OpenAI-style server) get nothing for it and think as their model does,
though with ``false`` the answer leaves out any reasoning they send. A level
(``"low"``, ``"medium"``, ``"high"``, for gpt-oss) is OpenAI's ``reasoning_effort``
for every engine.
"""

from __future__ import annotations

import json
import math
import re
from datetime import timedelta
from typing import Any

from swapyard.errors import RequestError

STANDARD = {
    "temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
}  # fmt: skip
LLAMACPP = {
    "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
    "tfs_z": "tfs_z", "mirostat": "mirostat", "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta", "penalize_newline": "penalize_nl", "num_keep": "n_keep",
}  # fmt: skip
VLLM_LIKE = {"top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repetition_penalty"}
EXTENDED = {"llamacpp": LLAMACPP, "command": LLAMACPP, "vllm": VLLM_LIKE,
            "sglang": VLLM_LIKE, "tabbyapi": VLLM_LIKE}  # fmt: skip
CHAT, COMPLETIONS, INFILL = "/v1/chat/completions", "/v1/completions", "/infill"
# The kind whose body any OpenAI-compatible server takes: the standard fields only
# (issue 15: for a model this swapyard does not run, such as a peer's).
GENERIC = "openai"
# Fill in the middle: llama-server's /v1/completions ignores OpenAI's `suffix`
# (its answer continues the prefix alone); its own /infill takes both.
INFILL_ENGINES = frozenset({"llamacpp", "command"})
# `think: true/false` → `chat_template_kwargs.enable_thinking`, which the chat
# templates that think (Qwen3, DeepSeek) read: only engines that take the field.
# A remote OpenAI-style server refuses unknown fields (issue 14); TabbyAPI and
# Ollama's /v1 do not read it.
THINK_ENGINES = frozenset({"llamacpp", "command", "vllm", "sglang"})
KEPT_FOR = timedelta(days=292 * 365)  # Ollama's "forever" (its largest duration)
KEPT_SECONDS = KEPT_FOR.total_seconds()
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}  # fmt: skip
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_IMAGE_MAGIC = {"iVBOR": "png", "/9j/": "jpeg", "R0lGOD": "gif", "UklGR": "webp"}


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive``: a number of seconds or a Go duration (``"5m"``,
    ``"1h30m"``, ``"-1"``); None when absent. Negative: keep loaded, and so is
    anything longer than ``KEPT_FOR`` (Ollama's own largest duration): ``-1.0``.
    A value that is no finite number (``"inf"``, ``NaN``, JSON's ``1e400``) is a
    ``RequestError`` (issue 14: such a TTL broke ``/api/ps`` for every client)."""
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is None or not math.isfinite(seconds):
        shown = str(value)[:40]
        raise RequestError(
            f'`keep_alive` must be a duration such as "5m" or seconds, not {shown!r}',
            param="keep_alive",
        )
    return -1.0 if seconds > KEPT_SECONDS else seconds


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer past any float, as JSON's 1e400 is
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return float(text)  # seconds, as OLLAMA_KEEP_ALIVE takes them
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if parts and "".join(n + u for n, u in parts) == body:
        return sign * sum(float(n) * _UNITS[u] for n, u in parts)
    return None


def sampling(options: Any, engine: str) -> dict[str, Any]:
    """OpenAI request fields for Ollama's ``options`` on an engine of kind ``engine``."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise RequestError("`options` must be an object", param="options")
    names = {**STANDARD, **EXTENDED.get(engine, {})}
    out = {names[k]: v for k, v in options.items() if k in names and v is not None}
    n = options.get("num_predict")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:  # -1, -2: no limit
        out["max_tokens"] = n
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    return out


def response_format(fmt: Any) -> dict[str, Any] | None:
    """``format: "json"`` → JSON mode; a JSON schema → structured output."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise RequestError('`format` must be "json" or a JSON schema', param="format")


def image_part(data: Any) -> dict[str, Any]:
    """An Ollama image (base64, no header) as an OpenAI ``image_url`` content part."""
    if not isinstance(data, str) or not data:
        raise RequestError("`images` must hold base64-encoded images", param="images")
    if data.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": data}}
    kind = next((k for m, k in _IMAGE_MAGIC.items() if data.startswith(m)), "jpeg")
    return {"type": "image_url", "image_url": {"url": f"data:image/{kind};base64,{data}"}}


def _content(text: Any, images: Any) -> Any:
    if text is not None and not isinstance(text, str):
        raise RequestError("a message's `content` must be a string", param="messages")
    if not images:
        return text or ""
    if not isinstance(images, list):
        raise RequestError("`images` must be a list", param="images")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [image_part(i) for i in images]


def _tool_calls(calls: Any, prefix: str) -> list[dict[str, Any]]:
    """Ollama tool calls (arguments as objects) as OpenAI ones (JSON strings, ids)."""
    if not isinstance(calls, list):
        raise RequestError("`tool_calls` must be a list", param="messages")
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RequestError("a tool call needs `function.name`", param="messages")
        args = fn.get("arguments", {})
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        out.append({"id": str(call.get("id") or f"{prefix}_{i}"), "type": "function",
                    "function": {"name": fn["name"], "arguments": text}})  # fmt: skip
    return out


def messages(items: Any) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI ones. A ``tool`` message answers the latest
    assistant tool call of its ``tool_name`` (else the next one not answered), as
    OpenAI's ``tool_call_id`` needs; ``thinking`` of earlier turns is left out."""
    if not isinstance(items, list):
        raise RequestError("`messages` must be a list", param="messages")
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # the last assistant turn's calls not yet answered
    for n, msg in enumerate(items):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise RequestError("each message needs a `role`", param="messages")
        role = msg["role"]
        new: dict[str, Any] = {
            "role": role,
            "content": _content(msg.get("content"), msg.get("images")),
        }
        if role == "assistant" and msg.get("tool_calls"):
            new["tool_calls"] = _tool_calls(msg["tool_calls"], f"call_{n}")
            pending = list(new["tool_calls"])
        if role == "tool":
            cid = msg.get("tool_call_id")
            if not isinstance(cid, str):
                name = msg.get("tool_name") or msg.get("name")
                match = next((c for c in pending if c["function"]["name"] == name), None)
                match = match or (pending[0] if pending else None)
                cid = match["id"] if match is not None else f"call_{n}"
                if match is not None:
                    pending.remove(match)
            new["tool_call_id"] = cid
        out.append(new)
    return out


def _common(doc: dict[str, Any], model: str, engine: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, **sampling(doc.get("options"), engine)}
    if (fmt := response_format(doc.get("format"))) is not None:
        body["response_format"] = fmt
    body["stream"] = stream
    think = doc.get("think")
    if isinstance(think, bool) and engine in THINK_ENGINES:
        body["chat_template_kwargs"] = {"enable_thinking": think}
    elif isinstance(think, str) and think:  # gpt-oss: "low", "medium", "high"
        body["reasoning_effort"] = think
    return body


def chat_body(doc: dict[str, Any], model: str, engine: str, stream: bool) -> dict[str, Any]:
    """An ``/api/chat`` body as a ``/v1/chat/completions`` one."""
    body = _common(doc, model, engine, stream)
    body["messages"] = messages(doc.get("messages") or [])
    if doc.get("tools"):
        if not isinstance(doc["tools"], list):
            raise RequestError("`tools` must be a list", param="tools")
        body["tools"] = doc["tools"]  # Ollama's tools are OpenAI's
    return body


def generate_body(
    doc: dict[str, Any], model: str, engine: str, stream: bool
) -> tuple[str, dict[str, Any]]:
    """An ``/api/generate`` body as an engine path and body.

    Ollama renders ``system`` and ``prompt`` through the model's template; a chat
    completion with those two messages has the engine do the same with the
    model's own chat template (and keeps images and thinking). ``raw`` asks for no
    template at all: ``/v1/completions`` with the prompt as it is. A ``suffix``
    (fill in the middle, code completion) goes to llama.cpp's ``/infill`` on
    llama.cpp engines, else as OpenAI's ``suffix`` field. Ollama's own
    ``template`` and ``context`` cannot be applied to another engine: ignored."""
    prompt = doc.get("prompt") or ""
    if not isinstance(prompt, str):
        raise RequestError("`prompt` must be a string", param="prompt")
    body = _common(doc, model, engine, stream)
    suffix = doc.get("suffix")
    if suffix and engine in INFILL_ENGINES:
        body.pop("chat_template_kwargs", None)
        body.pop("response_format", None)
        return INFILL, {**body, "input_prefix": prompt, "input_suffix": str(suffix)}
    if doc.get("raw") is True or suffix:
        body.pop("chat_template_kwargs", None)
        body["prompt"] = prompt
        if suffix:
            body["suffix"] = str(suffix)
        return COMPLETIONS, body
    msgs: list[dict[str, Any]] = []
    if isinstance(doc.get("system"), str) and doc["system"]:
        msgs.append({"role": "system", "content": doc["system"]})
    msgs.append({"role": "user", "content": _content(prompt, doc.get("images"))})
    body["messages"] = msgs
    return CHAT, body
