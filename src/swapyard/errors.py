"""One exception tree for swapyard, rendered as OpenAI-shaped errors at the boundary.

::

    SwapyardError                      (500, produced by swapyard unless said otherwise)
    ├── ConfigError                    bad config: file, key and why
    ├── RequestError                   (4xx) the client's request is wrong; nothing changes
    │   ├── InvalidJSON                400 malformed JSON body
    │   ├── MissingModel               400 no `model` in the body / form
    │   ├── UnknownModel               404 names the models that exist (the asked name cut)
    │   ├── BodyTooLarge               413 body over `server.max_body_bytes`
    │   ├── NotFound                   404 no such route
    │   └── QueueFull                  429 the queue is at `max_queue`; carries Retry-After
    ├── EngineError                    (5xx) the engine could not serve the request
    │   ├── EngineStartError           503 never became ready; its last log lines in ``detail``
    │   │   ├── EngineExitedEarly      the process exited before its health check passed
    │   │   ├── EngineStartTimeout     health never passed within `start_timeout`
    │   │   └── PortInUse              the engine's fixed port is held by another process
    │   ├── InsufficientMemory         503 the model can never fit; says need and budget
    │   ├── EngineStopped              503 the engine was stopped while the request waited
    │   ├── EngineCrashed              503 the engine exited while serving (log in ``detail``)
    │   ├── EngineBackoff              503 it failed recently; Retry-After: when it may start
    │   ├── EngineFailed               503 it failed `start_limit` times: off until loaded again
    │   ├── UpstreamUnavailable        502 connecting to the engine failed (source: engine)
    │   ├── UpstreamDied               502 the engine dropped the response mid-way, or a stream
    │   │                                  ended without `[DONE]` (source: engine)
    │   ├── UpstreamTimeout            504 the engine went silent past `response_timeout`,
    │   │                                  `first_byte_timeout` or `idle_timeout` (source: engine)
    │   ├── UpstreamError              502 the engine answered an error after a stream began
    │   │                                  (or a 5xx before it, where a fallback may serve it)
    │   ├── WaitExceeded               503 not admitted within a fallback's `wait` (issue 15)
    │   ├── PeerRefused                502 a peer's error answer (429/5xx) to a try a fallback
    │   │                                  follows: its own envelope, its fallback conditions
    │   └── NotKnownYet                503 a name no host serves while a peer is not yet
    │                                      contacted; Retry-After (issue 15)
    ├── LoopDetected                   508 a request came back to the swapyard it went through
    ├── ShuttingDown                   503 swapyard is stopping; a stream still running when
    │                                      the drain ends gets it as its last event
    └── InternalError                  500 a bug: the log has the traceback under its request id

Client and OS exceptions (aiohttp, OSError) are caught where they happen, in the
process actor and the proxy, and re-raised as one of these with ``from exc``.
``to_openai()`` renders the ``{"error": {...}}`` envelope, with ``source`` saying
whether swapyard or the engine produced it.

``message`` is what any client may read: short, naming the model and the cause.
``detail`` (an engine's last log lines) is for operators only: ``/api/models``
shows it with the model's last error; no envelope carries it (issue 11: a log
tail holds the engine's command line, and whatever the config put there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

Source = Literal["swapyard", "engine"]
ECHO_LIMIT = 64  # characters of a client's own text (a model name) said back to it


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (and "…"): an error never echoes a
    client's megabyte back to it."""
    return text if len(text) <= limit else text[:limit] + "…"


class SwapyardError(Exception):
    """Base of every error swapyard raises on purpose."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    source: ClassVar[Source] = "swapyard"

    def __init__(
        self, message: str, *, param: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.detail = detail

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error (never its ``detail``)."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
                "source": self.source,
            }
        }


class ConfigError(SwapyardError):
    """The config file is invalid; the message names the file, the key and why."""

    code = "invalid_config"


class RequestError(SwapyardError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(RequestError):
    code = "invalid_json"


class MissingModel(RequestError):
    code = "missing_model"

    def __init__(self, message: str = "the request has no `model` field") -> None:
        super().__init__(message, param="model")


class UnknownModel(RequestError):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str, available: Sequence[str]) -> None:
        names = ", ".join(sorted(available)) or "(none configured)"
        super().__init__(
            f"model {clip(model)!r} does not exist; available models: {names}", param="model"
        )
        self.model = model
        self.available = tuple(available)


class BodyTooLarge(RequestError):
    status = 413
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes")
        self.limit = limit


class Unauthorized(RequestError):
    """No API key, or not one of ours (401)."""

    status = 401
    code = "invalid_api_key"


class Forbidden(RequestError):
    """A valid key that may not do this: a model outside its allow-list, or an
    admin route with a plain key (403)."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class QueueFull(RequestError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(f"too many requests waiting: {message}")
        self.retry_after = retry_after


class EngineError(SwapyardError):
    status = 503
    type = "engine_error"
    code = "engine_unavailable"

    def __init__(self, model: str, message: str, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.model = model


def _log_detail(log_tail: Sequence[str]) -> str:
    tail = "\n".join(log_tail) if log_tail else "(no output)"
    return f"last log lines:\n{tail}"


class EngineStartError(EngineError):
    """The engine never became ready; ``log_tail`` holds its last output lines
    (in ``detail``, for operators; the message says the model and the reason)."""

    code = "engine_start_failed"

    def __init__(self, model: str, reason: str, log_tail: Sequence[str] = ()) -> None:
        self.reason = reason
        self.log_tail = tuple(log_tail)
        super().__init__(
            model, f"model {model!r} failed to start: {reason}", _log_detail(self.log_tail)
        )


class EngineExitedEarly(EngineStartError):
    code = "engine_exited"


class EngineStartTimeout(EngineStartError):
    code = "engine_start_timeout"


class PortInUse(EngineStartError):
    code = "port_in_use"


class EngineCrashed(EngineError):
    code = "engine_crashed"

    def __init__(self, model: str, reason: str, log_tail: Sequence[str] = ()) -> None:
        self.log_tail = tuple(log_tail)
        super().__init__(model, f"model {model!r} crashed: {reason}", _log_detail(self.log_tail))


class EngineBackoff(EngineError):
    """The model's engine failed moments ago and backs off before the next start;
    ``cause`` is that failure (its ``detail`` keeps the last log lines)."""

    code = "engine_backoff"

    def __init__(self, model: str, cause: SwapyardError, retry_after: float) -> None:
        self.cause = cause
        self.retry_after = retry_after
        super().__init__(
            model,
            f"model {model!r} failed moments ago and may start again in {retry_after:.1f} s; "
            f"it failed with: {cause.message}",
            cause.detail,
        )


class EngineFailed(EngineError):
    """The model's engine hit its start limit: no start until an explicit load or a
    config reload."""

    code = "engine_failed"

    def __init__(self, model: str, failures: int, window: float, cause: SwapyardError) -> None:
        self.cause = cause
        super().__init__(
            model,
            f"model {model!r} failed {failures} times within {window:g} s and will not be "
            f"started again until it is loaded on purpose (swapyard load {model}) or the config "
            f"is reloaded; the last failure: {cause.message}",
            cause.detail,
        )


class InsufficientMemory(EngineError):
    code = "insufficient_memory"

    def __init__(self, model: str, reason: str, now: bool = False) -> None:
        """``now``: it would fit but for memory held by other processes."""
        when = "does not fit in memory now" if now else "can never fit in memory"
        super().__init__(model, f"model {model!r} {when}: {reason}")


class EngineOutOfMemory(EngineStartError):
    """The engine exited during its start for lack of GPU memory (its log says so:
    CUDA out of memory, vLLM's free-memory check, SGLang's ``Not enough memory``)."""

    code = "engine_out_of_memory"


class EngineStopped(EngineError):
    code = "engine_stopped"


class UpstreamUnavailable(EngineError):
    status = 502
    code = "upstream_unavailable"
    source = "engine"


class UpstreamDied(EngineError):
    status = 502
    code = "upstream_died"
    source = "engine"


class UpstreamTimeout(EngineError):
    """The engine sent nothing for too long: no response head, no first body byte,
    or a gap mid-answer (the message names the key that ran out)."""

    status = 504
    code = "upstream_timeout"
    source = "engine"


class ShuttingDown(SwapyardError):
    status = 503
    code = "shutting_down"


class UpstreamError(EngineError):
    status = 502
    code = "upstream_error"
    source = "engine"


class WaitExceeded(EngineError):
    """A request that has a fallback was not admitted to ``model``'s engine within
    its ``fallback_on`` wait (issue 15): the next candidate serves it."""

    code = "wait_exceeded"

    def __init__(self, model: str, wait: float) -> None:
        super().__init__(model, f"model {model!r} could not take the request within {wait:g} s")


class PeerRefused(EngineError):
    """A peer answered an error (429, 5xx) before the first byte of a try that a
    fallback follows (issue 15); ``conditions``: the fallback conditions its
    ``code`` stands for. Rendered as the peer's own envelope."""

    code = "peer_refused"
    source = "engine"
    status = 502

    def __init__(self, model: str, envelope: dict[str, Any], conditions: frozenset[str]) -> None:
        said = envelope.get("error")
        message = said.get("message") if isinstance(said, dict) else said
        super().__init__(model, str(message)[:500])
        self.envelope = envelope
        self.conditions = conditions

    def to_openai(self) -> dict[str, Any]:
        return self.envelope


class NotKnownYet(EngineError):
    """A name neither this swapyard nor any peer it reached serves, while some
    peer has not been contacted yet (its first moments): retry shortly (issue 15)."""

    code = "model_not_known_yet"

    def __init__(self, model: str, peers: Sequence[str], retry_after: float) -> None:
        names = ", ".join(repr(p) for p in peers)
        super().__init__(
            model,
            f"model {clip(model)!r} is not served here, and peers {names} have not been "
            f"contacted yet: retry in {retry_after:g} s",
        )
        self.retry_after = retry_after


class LoopDetected(SwapyardError):
    """A request carries this swapyard's own id in ``X-Swapyard-Via``: it went
    round a loop of peers back to where it passed (issue 15)."""

    status = 508
    type = "invalid_request_error"
    code = "loop_detected"


class InternalError(SwapyardError):
    """An exception nobody raised on purpose: the client gets this envelope and
    ``request_id``; the log gets the traceback under the same id."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"internal error in swapyard (request id {request_id}); "
            "the server log has the details under this id"
        )
        self.request_id = request_id
