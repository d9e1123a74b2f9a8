"""What the fake engine answers a completion request with, decided before it
generates a token: the words, or a call of one of the offered tools, and why the
answer ends, the way real engines report it.

- ``finish_reason`` ``length`` when the answer reaches ``max_tokens``; ``stop``
  when a word holds one of the request's ``stop`` strings (the answer ends before
  it, and ``stop_reason`` names the string, as vLLM reports it) or when the model
  reaches its end of sequence (the fake engine's ``--eos-after``).
- A request that offers ``tools`` (``tool_choice`` not ``none``) whose last message
  is not a tool's result gets a call of the named tool (or the first) with
  arguments made from its parameter schema, and ``finish_reason`` ``tool_calls``;
  after the tool's result the model answers in words again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

_VALUES = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def pieces(self, n: int = 3) -> list[str]:
        """The arguments cut in ``n`` fragments, as engines stream them."""
        step = max(1, -(-len(self.arguments) // n))
        return [self.arguments[i : i + step] for i in range(0, len(self.arguments), step)]

    def openai(self, arguments: str | None = None, *, first: bool = True) -> dict[str, Any]:
        """The ``tool_calls`` entry: whole, or one streamed fragment."""
        entry: dict[str, Any] = {"index": 0}
        fn: dict[str, Any] = {"arguments": self.arguments if arguments is None else arguments}
        if first:
            entry |= {"id": self.id, "type": "function"}
            fn["name"] = self.name
        entry["function"] = fn
        return entry


@dataclass(frozen=True, slots=True)
class Plan:
    tokens: list[str]
    finish: str  # "length", "stop" or "tool_calls"
    stop_reason: str | None = None  # the stop string that ended the answer
    tool: ToolCall | None = None

    def end_fields(self) -> dict[str, Any]:
        """Fields of the choice that ends the answer."""
        end: dict[str, Any] = {"finish_reason": self.finish}
        if self.stop_reason is not None:
            end["stop_reason"] = self.stop_reason
        return end


def plan(doc: dict[str, Any], tokens: list[str], eos_after: int = 0) -> Plan:
    """The answer to the request ``doc``, given the words the model would say."""
    tool = _tool_call(doc)
    if tool is not None:
        return Plan([], "tool_calls", tool=tool)
    stops = doc.get("stop") or []
    stops = [stops] if isinstance(stops, str) else [s for s in stops if isinstance(s, str) and s]
    for i, tok in enumerate(tokens):
        hit = next((s for s in stops if s in tok), None)
        if hit is not None:
            return Plan(tokens[:i], "stop", stop_reason=hit)
        if eos_after and i + 1 >= eos_after:
            return Plan(tokens[: i + 1], "stop")
    return Plan(tokens, "length")


def _tool_call(doc: dict[str, Any]) -> ToolCall | None:
    fns = [t.get("function") for t in doc.get("tools") or () if isinstance(t, dict)]
    tools: list[dict[str, Any]] = [
        f for f in fns if isinstance(f, dict) and isinstance(f.get("name"), str)
    ]
    choice = doc.get("tool_choice", "auto")
    messages = doc.get("messages") or [{}]
    if not tools or choice == "none" or messages[-1].get("role") == "tool":
        return None
    fn = tools[0]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        fn = next((t for t in tools if t["name"] == choice["function"].get("name")), fn)
    params = fn.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    args = {
        k: _VALUES.get(str(v.get("type")), "fox")
        for k, v in (props if isinstance(props, dict) else {}).items()
        if isinstance(v, dict)
    }
    call_id = f"call_{fn['name']}_{int(time.time() * 1000) % 100000}"
    return ToolCall(call_id, fn["name"], json.dumps(args))
