"""The engine's body for each name an Ollama request may be served by (issue 15).

``exchange.serve`` tries the name the client sent, then its fallbacks (or a
virtual id's members): each may run on another engine kind, or on a peer. A
model of this host gets the options its engine kind takes (``ollama_convert``);
a name this host does not run (a peer's model, sent to the peer's own OpenAI
routes) gets the standard fields only, as a remote OpenAI-style server would:
every swapyard serves chat completions, whatever its engine.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from swapyard.api.exchange import Call
from swapyard.api.ollama_convert import CHAT, COMPLETIONS, GENERIC, INFILL, chat_body, generate_body
from swapyard.api.ollama_reply import Clock, Mode, Reply
from swapyard.api.state import AppState
from swapyard.process.state import EngineState
from swapyard.surface import RouterSurface

Kind = Literal["chat", "generate"]


def load_time(router: RouterSurface, model: str | None, t0: float) -> float:
    """How long this request waited for ``model`` (this host's) to load: since
    ``t0`` until it became ready, if it did after ``t0``."""
    if model is None:
        return 0.0
    engine = router.model(model).engine
    if engine.state is EngineState.READY and engine.state_since > t0:
        return engine.state_since - t0
    return 0.0


class Shape:
    """``build``: the call and its answer's translation for each name ``serve``
    tries (the module's docstring); each engine kind's body is made once."""

    def __init__(
        self, state: AppState, doc: dict[str, Any], sent: str, kind: Kind, stream: bool, t0: float
    ) -> None:
        self.state, self.doc, self.sent, self.kind = state, doc, sent, kind
        self.stream, self.t0 = stream, t0
        self._bodies: dict[str, tuple[str, dict[str, Any], bytes]] = {}

    def build(self, name: str) -> tuple[Call, Reply]:
        model = self.state.config.resolve(name)
        engine = self.state.config.models[model].engine if model is not None else GENERIC
        if engine not in self._bodies:
            if self.kind == "chat":
                path, body = CHAT, chat_body(self.doc, self.sent, engine, self.stream)
            else:
                path, body = generate_body(self.doc, self.sent, engine, self.stream)
            self._bodies[engine] = path, body, json.dumps(body, ensure_ascii=False).encode()
        path, body, raw = self._bodies[engine]
        modes: dict[str, Mode] = {COMPLETIONS: "completion", INFILL: "infill"}
        router, t0 = self.state.router, self.t0
        clock = Clock(t0, lambda: load_time(router, model, t0))
        think = self.doc.get("think")
        reply = Reply(self.doc["model"], modes.get(path, self.kind), self.stream, clock,
                      think if isinstance(think, bool) else None)  # fmt: skip
        return Call(self.sent, path, raw, body, stream=self.stream), reply
