"""Anthropic Messages ⇄ OpenAI chat completions, whole documents (issue 14).

``to_chat`` turns a ``/v1/messages`` request into a chat completion request for an
engine that does not speak Anthropic's API; ``to_message`` turns the engine's
whole answer back into a Messages answer. The streamed answer is
``anthropic_stream``'s. Both are pure: no I/O, no state beyond one request.

What is translated, and how:

- ``system`` (a string or text blocks) → a system message; a ``system`` role
  inside ``messages`` (sent by newer agents) likewise.
- content blocks: ``text``; ``image`` (base64 → a ``data:`` URL, or a URL) →
  ``image_url``; ``tool_use`` → the assistant's ``tool_calls`` (``input`` as JSON
  text); ``tool_result`` → a ``tool`` message (its images follow in a user
  message; ``is_error`` prefixes ``Error:``); ``thinking`` blocks the client sends
  back are dropped (an engine has no use for another engine's signatures).
  Any other block is refused with a 400 naming it.
- ``tools`` (``input_schema`` → ``parameters``), ``tool_choice`` (``auto``, ``any``
  → ``required``, ``tool`` → that function, ``none``; ``disable_parallel_tool_use``
  → ``parallel_tool_calls: false``); a tool without ``input_schema`` (Anthropic's
  server tools, which only Anthropic can run) is refused with a 400.
- ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stream`` as they are;
  ``stop_sequences`` → ``stop``; ``metadata`` is ignored; ``thinking`` asks nothing
  of the engine, but when enabled the engine's reasoning comes back as
  ``thinking`` blocks (without it, as Anthropic does, none are sent).
- The answer's ``stop_reason``: ``length`` → ``max_tokens``, a tool call →
  ``tool_use``, ``content_filter`` → ``refusal``, ``stop`` → ``stop_sequence`` when the
  engine names which stop string matched (vLLM's ``stop_reason``), else ``end_turn``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from swapyard.api.chat_shapes import dicts, first_choice, obj, tool_arguments
from swapyard.errors import RequestError

__all__ = ["Ask", "error_doc", "new_id", "obj", "stop_reason", "to_chat", "to_message", "usage_of"]

# Anthropic's error types by HTTP status (docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    529: "overloaded_error",
}  # fmt: skip
_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k")


@dataclass(frozen=True, slots=True)
class Ask:
    """What translating the answer needs to know of the request."""

    model: str  # the name the client asked for, said back in the answer
    stops: tuple[str, ...] = ()
    thinking: bool = False  # the client asked for thinking blocks


def error_doc(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for an answer with HTTP ``status``."""
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _bad(where: str, why: str) -> RequestError:
    return RequestError(f"{where}: {why}", param=where)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise _bad(where, "expected a string or a list of content blocks")
    return content


def _text_of(content: Any, where: str) -> str:
    """The text of a string or of text blocks (system prompts)."""
    texts = []
    for j, b in enumerate(_blocks(content, where)):
        if b.get("type") != "text":
            raise _bad(f"{where}.{j}", f"expected a text block, got {b.get('type')!r}")
        texts.append(str(b.get("text", "")))
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64":
        url = f"data:{src.get('media_type', 'image/png')};base64,{src.get('data', '')}"
    elif isinstance(src, dict) and src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        raise _bad(where, "an image needs a base64 or url source")
    return {"type": "image_url", "image_url": {"url": url}}


def _parts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text when there is no image: every engine's template takes that."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[Any]]:
    """A ``tool`` message, and the images of the result (for a user message)."""
    texts, images = [], []
    for j, b in enumerate(_blocks(block.get("content", ""), f"{where}.content")):
        if b.get("type") == "text":
            texts.append(str(b.get("text", "")))
        elif b.get("type") == "image":
            images.append(_image(b, f"{where}.content.{j}"))
        else:
            raise _bad(f"{where}.content.{j}", f"cannot translate a {b.get('type')!r} block")
    text = "\n".join(texts)
    if block.get("is_error"):
        text = "Error: " + text
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise _bad(where, "a tool_result needs its tool_use_id")
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results first (they answer the assistant's calls),
    then what the user says."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out, parts = [], []
    for j, b in enumerate(_blocks(content, f"{where}.content")):
        at, kind = f"{where}.content.{j}", b.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(b.get("text", ""))})
        elif kind == "image":
            parts.append(_image(b, at))
        elif kind == "tool_result":
            message, images = _tool_result(b, at)
            out.append(message)
            parts += images
        else:
            raise _bad(at, f"swapyard cannot translate a {kind!r} block for this engine")
    if parts:
        out.append({"role": "user", "content": _parts(parts)})
    return out


def _assistant(content: Any, where: str) -> dict[str, Any]:
    texts, calls = [], []
    for j, b in enumerate(_blocks(content, f"{where}.content")):
        kind = b.get("type")
        if kind == "text":
            texts.append(str(b.get("text", "")))
        elif kind == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise _bad(f"{where}.content.{j}", "a tool_use needs an id and a name")
            args = json.dumps(b.get("input") or {}, ensure_ascii=False)
            calls.append({"id": b["id"], "type": "function",
                          "function": {"name": b["name"], "arguments": args}})  # fmt: skip
        elif kind not in ("thinking", "redacted_thinking"):
            raise _bad(f"{where}.content.{j}", f"cannot translate a {kind!r} block")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["content"] = message["content"] or None
        message["tool_calls"] = calls
    return message


def _tools(doc: dict[str, Any]) -> list[dict[str, Any]]:
    tools = doc.get("tools") or []
    if not isinstance(tools, list):
        raise _bad("tools", "expected a list")
    out = []
    for j, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"tools.{j}", "a tool needs a name")
        if not isinstance(t.get("input_schema"), dict):
            raise _bad(f"tools.{j}", f"{t.get('type', t['name'])!r} has no input_schema: "
                       "only Anthropic runs its own server tools")  # fmt: skip
        fn = {"name": t["name"], "parameters": t["input_schema"]}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind in ("auto", "none"):
        chat["tool_choice"] = kind
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad("tool_choice", f"unknown tool_choice {kind!r}")
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def to_chat(doc: dict[str, Any]) -> tuple[dict[str, Any], Ask]:
    """The chat completion request for the Messages request ``doc`` (whose
    ``model`` is known to be a string); ``RequestError`` names what cannot be
    translated."""
    messages: list[dict[str, Any]] = []
    if doc.get("system") is not None:
        messages.append({"role": "system", "content": _text_of(doc["system"], "system")})
    turns = doc.get("messages")
    if not isinstance(turns, list):
        raise _bad("messages", "expected a list of messages")
    for i, m in enumerate(turns):
        where = f"messages.{i}"
        role = m.get("role") if isinstance(m, dict) else None
        if role == "user":
            messages += _user(m.get("content"), where)
        elif role == "assistant":
            messages.append(_assistant(m.get("content"), where))
        elif role == "system":
            messages.append({"role": "system", "content": _text_of(m.get("content"), where)})
        else:
            raise _bad(f"{where}.role", f"expected user or assistant, got {role!r}")
    chat: dict[str, Any] = {"model": doc["model"], "messages": messages}
    chat |= {k: doc[k] for k in _SAMPLING if doc.get(k) is not None}
    if doc.get("stream") is True:
        chat["stream"] = True
    stops = doc.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop_sequences", "expected a list of strings")
    if stops:
        chat["stop"] = stops
    if tools := _tools(doc):
        chat["tools"] = tools
    _tool_choice(doc.get("tool_choice"), chat)
    thinking = doc.get("thinking")
    asks = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    return chat, Ask(doc["model"], tuple(stops), asks)


def stop_reason(
    ask: Ask, finish: Any, matched: Any = None, called: bool = False
) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for OpenAI's ``finish_reason``
    (``matched``: the stop string an engine names, ``called``: a tool was called)."""
    if finish == "length":
        return "max_tokens", None
    if called or finish in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish == "content_filter":
        return "refusal", None
    if isinstance(matched, str) and matched in ask.stops:
        return "stop_sequence", matched
    return "end_turn", None


def usage_of(usage: Any, counted: int = 0) -> dict[str, int]:
    """Anthropic's usage for OpenAI's (``counted``: output pieces seen, when the
    engine sent no usage); prompt tokens read from a cache are counted apart."""
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": counted}
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out = {"input_tokens": max(0, prompt - cached),
           "output_tokens": _int(usage.get("completion_tokens"))}  # fmt: skip
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def to_message(ask: Ask, doc: Any) -> dict[str, Any]:
    """The Messages answer for the engine's chat completion ``doc``;
    ``UpstreamError`` when ``doc`` is not one (issue 14: a 502, not a 500)."""
    choice = first_choice(doc, ask.model)
    msg = obj(choice.get("message"))
    content: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if ask.thinking and isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if isinstance(msg.get("content"), str) and msg["content"]:
        content.append({"type": "text", "text": msg["content"]})
    calls = dicts(msg.get("tool_calls"))
    for call in calls:
        fn = obj(call.get("function"))
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                        "name": str(fn.get("name", "")),
                        "input": tool_arguments(fn.get("arguments"))})  # fmt: skip
    if not content:
        content.append({"type": "text", "text": ""})
    reason, sequence = stop_reason(
        ask, choice.get("finish_reason"), choice.get("stop_reason"), bool(calls)
    )
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "model": ask.model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage_of(doc.get("usage"))}  # fmt: skip
