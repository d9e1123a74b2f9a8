"""What the client fronts that translate (Ollama's, Anthropic's) read out of an
engine's OpenAI-style answer (issue 14): the first choice of a completion, a tool
call's arguments, the message of an error answer, each event of a stream. One
reading for both fronts, and a forgiving one: an engine's answer may be anything, and what is not a
completion is an ``UpstreamError`` (502) in the front's own shape, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

from swapyard.errors import UpstreamError, clip

NOT_A_COMPLETION = "the engine's answer was not a completion"


def obj(v: Any) -> dict[str, Any]:
    """``v`` when it is a JSON object, else an empty one (engines' answers vary)."""
    return v if isinstance(v, dict) else {}


def dicts(v: Any) -> list[dict[str, Any]]:
    """The objects of ``v`` when it is a list (tool calls, choices), else none."""
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def first_choice(doc: Any, model: str) -> dict[str, Any]:
    """The first choice of a (chat or text) completion answer from ``model``'s
    engine; ``UpstreamError`` when ``doc`` holds none (``{"usage": 5}``, ``{"choices": [1]}``)."""
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError(model, NOT_A_COMPLETION)
    return choices[0]


def tool_arguments(raw: Any) -> dict[str, Any]:
    """A tool call's arguments (OpenAI sends JSON text) as an object, as Ollama
    and Anthropic clients read them. Text that is not a JSON object is kept under
    ``"arguments"``, for the client to see what the model wrote; nothing is ``{}``."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"arguments": raw}
    return parsed if isinstance(parsed, dict) else {"arguments": raw}


def engine_message(status: int, body: bytes) -> str:
    """What an engine's error answer says, whatever its shape: OpenAI's
    ``error.message`` (or ``error`` as text), else a ``message`` or FastAPI's
    ``detail`` text, else the body's own text, else its status; at most 500
    characters."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        for said in (obj(err).get("message"), err, doc.get("message"), doc.get("detail")):
            if isinstance(said, str) and said.strip():
                return clip(said, 500)
    text = body.decode("utf-8", "replace").strip()
    return clip(f"HTTP {status}: {text}" if text else f"HTTP {status}", 500)


def stream_event(raw: bytes) -> dict[str, Any] | None:
    """One SSE event of an engine's stream as its JSON object (its ``data:`` lines
    joined as SSE joins them); None for ``[DONE]``, a comment, or anything else."""
    data = b"\n".join(
        ln[5:].removeprefix(b" ") for ln in raw.split(b"\n") if ln.startswith(b"data:")
    ).strip()
    if not data or data == b"[DONE]":
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def stream_error(doc: dict[str, Any]) -> str | None:
    """What an engine's error event says (vLLM sends one mid-stream), or None when
    ``doc`` is not one (a chunk with choices is never one)."""
    err = doc.get("error")
    if err is None or doc.get("choices"):
        return None
    said = obj(err).get("message") if isinstance(err, dict) else err
    return str(said) if said else "the engine reported an error"
