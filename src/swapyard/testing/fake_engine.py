"""A runnable OpenAI-compatible fake engine for the cases a real one cannot produce on demand.

    python -m swapyard.testing.fake_engine --port 8001 [flags]

It serves ``/health`` (503 until loaded), ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` and ``/v1/embeddings``, streaming and not. Its answer is the
words of ``--text`` (prefixed by the model id, so a test can tell engines apart),
one token per word, at ``--tokens-per-second``; a chat request that offers tools
gets a tool call, ``stop`` strings end an answer (``swapyard.testing.fake_answer``).
Any other ``POST /v1/*`` is echoed, and any other route answers what it got
(method, path, JSON body), as ``--echo-body`` makes the completion routes do; with
``--strict-routes`` both are refused with a 404 as a real engine refuses a route
it lacks. Every event a test may want to
see (ready, each request, a client that went away) is printed to stdout, which
swapyard keeps in the engine's log ring.

Its faults are those of real engines: a stall before the first byte or in the
middle of an answer, a body ended by closing the connection (no length, no
chunked encoding), a reset connection, a crash (see each flag's help).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any, NoReturn

from aiohttp import web

from swapyard.testing.fake_answer import Plan, plan

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog and runs far away"
_FOREVER = 3600.0  # a stall lasts until the client goes away (or the engine stops)


class Raw:
    """An answer written straight on the connection, as an HTTP/1.0 server
    (Python's ``http.server``) writes it: no Content-Length, no chunked
    encoding; the body ends when the connection closes (``--close-delimited``).
    aiohttp's own responses always carry one or the other."""

    def __init__(self, request: web.Request, content_type: str, model_id: str) -> None:
        assert request.transport is not None
        self.transport = request.transport
        self.transport.write(
            b"HTTP/1.0 200 OK\r\nContent-Type: " + content_type.encode()
            + b"\r\nX-Fake-Engine: " + model_id.encode() + b"\r\n\r\n"
        )  # fmt: skip

    async def write(self, data: bytes) -> None:
        self.transport.write(data)
        await asyncio.sleep(0)

    async def end(self) -> NoReturn:
        """Close the connection (the end of the body) and wait to be cancelled:
        aiohttp must not write a response of its own on it."""
        self.transport.close()
        await asyncio.sleep(_FOREVER)
        raise ConnectionError("the connection was closed")


def reset(request: web.Request) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def say(*parts: object) -> None:
    print("[fake-engine]", *parts, flush=True)


class FakeEngine:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.tokens_sent = 0
        self.words = args.text.split()

    # -- helpers -------------------------------------------------------------------
    def ready(self) -> bool:
        return not self.args.never_healthy and (
            time.monotonic() - self.started >= self.args.load_delay
        )

    def tokens(self, n: int) -> list[str]:
        out = [f"{self.args.model_id}:"]
        i = 0
        while len(out) < n:
            out.append(self.words[i % len(self.words)])
            i += 1
        return out[:n]

    async def emit_token(self) -> None:
        await asyncio.sleep(1.0 / self.args.tokens_per_second)
        self.tokens_sent += 1
        if self.args.crash_after_tokens and self.tokens_sent >= self.args.crash_after_tokens:
            say(f"crashing after {self.tokens_sent} tokens")
            os._exit(3)

    # -- routes --------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        if not self.ready():
            return web.json_response({"status": "loading model"}, status=503)
        return web.json_response({"status": "ok", "memory_mib": self.args.memory_mib})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.args.model_id, "object": "model"}]}
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        doc = await request.json()
        inputs = doc.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(x))), 0.5, -0.5]}
            for i, x in enumerate(items)
        ]
        usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
        return web.json_response(
            {"object": "list", "data": data, "model": self.args.model_id, "usage": usage},
            headers={"X-Fake-Engine": self.args.model_id},
        )

    async def not_found(self, request: web.Request) -> web.Response:
        """A route this engine does not serve (``--strict-routes``): FastAPI's 404, as
        vLLM and SGLang answer Anthropic's ``/v1/messages``."""
        say(f"no route {request.path_qs}")
        return web.json_response({"detail": "Not Found"}, status=404)

    async def echo(self, request: web.Request) -> web.Response:
        """Any other POST /v1/*: say which engine got it, what path and what type."""
        body = await request.read()
        say(f"request {request.path_qs} {len(body)} bytes")
        return web.json_response(
            {"engine": self.args.model_id, "path": request.path_qs,
             "content_type": request.content_type, "bytes": len(body),
             "saw_client_key": "Authorization" in request.headers
                               or "x-api-key" in request.headers},
            headers={"X-Fake-Engine": self.args.model_id},
        )  # fmt: skip

    async def echo_body(self, request: web.Request) -> web.Response:
        """Any other route, any method (llama.cpp's own, ``/upstream`` tests), and the
        completion routes with ``--echo-body``: the method, path and JSON body it got."""
        body = await request.read()
        say(f"request {request.method} {request.path_qs} {len(body)} bytes")
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        return web.json_response(
            {"engine": self.args.model_id, "method": request.method, "path": request.path_qs,
             "json": doc},
            headers={"X-Fake-Engine": self.args.model_id},
        )  # fmt: skip

    async def completions(self, request: web.Request) -> web.StreamResponse:
        if self.args.echo_body:
            return await self.echo_body(request)
        chat = request.path.endswith("/chat/completions")
        doc = await request.json()
        if self.args.error_status:
            say(f"refusing {request.path} with HTTP {self.args.error_status}")
            return web.json_response(
                {"error": {"message": "simulated engine error", "type": "server_error",
                           "code": self.args.error_status}},
                status=self.args.error_status,
            )  # fmt: skip
        n = int(doc.get("max_tokens") or doc.get("max_completion_tokens") or self.args.max_tokens)
        say(f"request {request.path} stream={bool(doc.get('stream'))} max_tokens={n}")
        answer = plan(doc, self.tokens(n), vars(self.args).get("eos_after", 0)) if chat else None
        toks = answer.tokens if answer is not None else self.tokens(n)
        kind = "chat.completion" if chat else "text_completion"
        cid = f"fake-{int(time.time() * 1000)}"
        made = len(toks) + (len(answer.tool.pieces()) if answer and answer.tool else 0)
        usage = {"prompt_tokens": 5, "completion_tokens": made, "total_tokens": 5 + made}
        if not doc.get("stream"):
            head = {"id": cid, "object": kind, "created": int(time.time()),
                    "model": self.args.model_id, "usage": usage}  # fmt: skip
            return await self.plain(request, head, toks, answer)
        out: web.StreamResponse | Raw
        if self.args.close_delimited:
            out = Raw(request, "text/event-stream", self.args.model_id)
        else:
            out = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "X-Fake-Engine": self.args.model_id}
            )
            await out.prepare(request)
        sent = 0
        so_far = ""
        obj = kind + (".chunk" if chat else "")
        try:
            await self.stall_before_first_byte()
            for i, tok in enumerate(toks):
                await self.fault_at(request, i)
                await self.emit_token()
                piece = tok if i == 0 else " " + tok
                so_far += piece
                text = so_far if self.args.cumulative else piece
                delta = {"content": text} if chat else None
                ch: dict[str, Any] = (
                    {"index": 0, "delta": delta, "finish_reason": None}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": None}
                )
                await self._sse(out, cid, obj, [ch])
                sent += 1
            if answer is not None and answer.tool is not None:
                for i, part in enumerate(answer.tool.pieces()):
                    await self.fault_at(request, i)
                    await self.emit_token()
                    calls = {"tool_calls": [answer.tool.openai(part, first=i == 0)]}
                    step = {"index": 0, "delta": calls, "finish_reason": None}
                    await self._sse(out, cid, obj, [step])
                    sent += 1
            end = answer.end_fields() if answer is not None else {"finish_reason": "length"}
            last: dict[str, Any] = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
            await self._sse(out, cid, obj, [{**last, **end}])
            if (doc.get("stream_options") or {}).get("include_usage"):
                await self._sse(out, cid, obj, [], usage)
            await out.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionError):
            say(f"client disconnected after {sent} tokens")
            raise
        say(f"finished stream of {sent} tokens")
        if isinstance(out, Raw):
            await out.end()
        if self.args.close_after_stream and request.transport is not None:
            # As llama-server does: read no further request on this connection and
            # close it a moment later, while having announced keep-alive.
            await out.write_eof()
            request.transport.pause_reading()
            asyncio.get_running_loop().call_later(0.05, request.transport.close)
        return out

    async def plain(
        self, request: web.Request, head: dict[str, Any], toks: list[str], answer: Plan | None
    ) -> web.StreamResponse:
        """A non-streamed answer (``answer``: a chat one): all its tokens, then the
        head with the body."""
        await self.stall_before_first_byte()
        tool = answer.tool if answer is not None else None
        for i, _ in enumerate([*toks, *(tool.pieces() if tool else ())]):
            await self.fault_at(request, i)
            await self.emit_token()
        text = " ".join(toks)
        end = answer.end_fields() if answer is not None else {"finish_reason": "length"}
        if answer is None:
            head["choices"] = [{"index": 0, "text": text, **end}]
        else:
            content = text or None if tool is not None else text
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if tool is not None:
                message["tool_calls"] = [tool.openai()]
            head["choices"] = [{"index": 0, "message": message, **end}]
        if self.args.close_delimited:
            raw = Raw(request, "application/json", self.args.model_id)
            await raw.write(json.dumps(head).encode())
            await raw.end()
        return web.json_response(head, headers={"X-Fake-Engine": self.args.model_id})

    async def stall_before_first_byte(self) -> None:
        if self.args.stall_before_first_byte:
            say(f"stalling {self.args.stall_before_first_byte:g} s before the first byte")
            await asyncio.sleep(self.args.stall_before_first_byte)

    async def fault_at(self, request: web.Request, i: int) -> None:
        """Before the answer's token ``i``: stall or reset where the flags say."""
        if i and i == self.args.stall_after_tokens:
            say(f"stalling after {i} tokens")
            await asyncio.sleep(_FOREVER)
        if i and i == self.args.reset_after_tokens:
            await asyncio.sleep(1.0 / self.args.tokens_per_second)  # as if generating
            say(f"resetting the connection after {i} tokens")
            reset(request)
            await asyncio.sleep(_FOREVER)  # cancelled as the connection goes

    async def _sse(
        self,
        resp: web.StreamResponse | Raw,
        cid: str,
        obj: str,
        choices: list[dict[str, Any]],
        usage: dict[str, int] | None = None,
    ) -> None:
        doc: dict[str, Any] = {
            "id": cid, "object": obj, "created": int(time.time()),
            "model": self.args.model_id, "choices": choices,
        }  # fmt: skip
        if usage is not None:
            doc["usage"] = usage
        await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")


def _key_check(key: str) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        got = request.headers.get("Authorization", "")
        if got != f"Bearer {key}":
            say(f"refused {request.path}: Authorization {got[:12]!r}")
            return web.json_response({"error": {"message": "invalid API key"}}, status=401)
        return await handler(request)  # type: ignore[no-any-return]

    return check


def _add_faults(p: argparse.ArgumentParser) -> None:
    """The faults of real engines' HTTP (issue 11), each named by who produces it."""
    p.add_argument(
        "--stall-before-first-byte",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait SECONDS before the first byte of an answer: a stream's head goes out, then "
        "nothing (vLLM, SGLang and Ollama send the head at once and read a long prompt for "
        "minutes; a wedged one never sends more); a plain answer sends nothing at all",
    )
    p.add_argument(
        "--stall-after-tokens",
        type=int,
        default=0,
        metavar="N",
        help="after N tokens of an answer, hang without closing the connection (a GPU hang or a "
        "deadlocked scheduler behind an HTTP server that still accepts connections)",
    )
    p.add_argument(
        "--close-delimited",
        action="store_true",
        help="answer as HTTP/1.0 does, with neither Content-Length nor chunked encoding: the "
        "body ends when the connection closes (Python http.server-style engines); a crash "
        "mid-answer then looks like a clean end",
    )
    p.add_argument(
        "--reset-after-tokens",
        type=int,
        default=0,
        metavar="N",
        help="after N tokens of an answer, reset the connection (TCP RST) and stay up (an engine "
        "worker killed behind its front end, a container network or proxy dropping the "
        "connection)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="swapyard-fake-engine", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-id", default="fake")
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--max-tokens", type=int, default=16, help="default when a request says none")
    p.add_argument("--load-delay", type=float, default=0.0, help="seconds until /health is 200")
    p.add_argument("--tokens-per-second", type=float, default=1000.0)
    p.add_argument("--memory-mib", type=int, default=0, help="memory this engine claims to use")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--crash-after-tokens", type=int, default=0, help="exit(3) after N tokens")
    p.add_argument("--never-healthy", action="store_true", help="/health never answers 200")
    p.add_argument("--exit-on-start", type=int, default=None, help="print a log, exit with CODE")
    p.add_argument("--cumulative", action="store_true", help="stream cumulative text, not deltas")
    p.add_argument(
        "--eos-after",
        type=int,
        default=0,
        metavar="N",
        help="end a chat answer after N tokens with finish_reason stop, as a model reaching "
        "its end-of-sequence token does (0: answers run to max_tokens)",
    )
    p.add_argument(
        "--strict-routes",
        action="store_true",
        help="answer any other POST /v1/* with 404 as vLLM does (without it such a request is "
        "echoed: which engine got it, its path, type and size)",
    )
    p.add_argument(
        "--close-after-stream",
        action="store_true",
        help="close the connection after a stream while announcing keep-alive (llama-server)",
    )
    _add_faults(p)
    p.add_argument("--error-status", type=int, default=0, help="answer completions with it")
    p.add_argument(
        "--echo-body", action="store_true", help="answer completions with the body they got"
    )
    p.add_argument("--require-key", default="", help="401 unless `Authorization: Bearer KEY`")
    p.add_argument("--grandchild", action="store_true", help="spawn a child that ignores SIGTERM")
    p.add_argument(
        "--setsid-grandchild",
        action="store_true",
        help="spawn a child that leaves the process group and session (setsid), as real "
        "engines' helpers do (issue 10)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    say(f"pid {os.getpid()} pgid {os.getpgid(0)} model {args.model_id} port {args.port}")
    say(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}")
    if args.exit_on_start is not None:
        say("error: cannot load model weights: file is corrupt (simulated)")
        sys.exit(args.exit_on_start)
    # A background parent with job control off hands its children SIGINT ignored;
    # an engine stops on SIGINT whatever its parent did.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("ignoring SIGTERM")
    if args.grandchild:
        child = subprocess.Popen(
            [sys.executable, "-c",
             "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"],
        )  # fmt: skip
        say(f"grandchild pid {child.pid}")
    if args.setsid_grandchild:
        # Popen returns once the child has called setsid() and exec'd: the pid we
        # print is already outside our group. It keeps our environment.
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True
        )
        say(f"setsid grandchild pid {child.pid}")
    engine = FakeEngine(args)
    app = web.Application(middlewares=[_key_check(args.require_key)] if args.require_key else [])
    app.router.add_get("/health", engine.health)
    app.router.add_get("/v1/models", engine.models)
    app.router.add_post("/v1/chat/completions", engine.completions)
    app.router.add_post("/v1/completions", engine.completions)
    app.router.add_post("/v1/embeddings", engine.embeddings)
    app.router.add_post("/v1/{tail:.+}", engine.not_found if args.strict_routes else engine.echo)
    if not args.strict_routes:
        app.router.add_route("*", "/{tail:.*}", engine.echo_body)
    say("listening")
    web.run_app(
        app, host=args.host, port=args.port, print=None, access_log=None,
        handler_cancellation=True, handle_signals=not args.ignore_sigterm,
        shutdown_timeout=1.0,  # a stop is quick, as an engine's is; not aiohttp's 60 s drain
    )  # fmt: skip


if __name__ == "__main__":
    main()
