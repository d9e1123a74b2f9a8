"""Run llama.cpp's HTTP server from the prebuilt ``xllamacpp`` wheel as a process.

    python -m swapyard.engines.xllamacpp_server -m MODEL.gguf --port P [llama-server flags]

It takes llama-server's flags (the table in ``xllamacpp_flags``), so a config can
switch between this and the compiled binary by changing the first words of
``cmd``; a flag it cannot map makes it exit 2 with one line naming the flag,
before anything is loaded. The server runs on llama.cpp's own threads; this
process only keeps it alive until SIGTERM/SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

PROG = "swapyard-xllamacpp-server"
# Where this launcher's defaults differ from CommonParams' (see xllamacpp_flags).
CONTEXT = 2048
PORT = 8080  # llama-server's; CommonParams says 0


def _usage() -> str:
    from swapyard.engines.xllamacpp_flags import FLAGS, Option

    rows = [", ".join(f.names) + (" VALUE" if isinstance(f, Option) else "") for f in FLAGS]
    return f"usage: {PROG} -m MODEL.gguf [--port P] [FLAG ...]\nllama-server flags taken:\n  " + (
        "\n  ".join(rows)
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(_usage())
        return
    from swapyard.engines.xllamacpp_flags import FlagError, apply, parse

    try:
        parsed = parse(args)
    except FlagError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.n_ctx = CONTEXT
    params.port = PORT
    params.cpuparams.n_threads = max(1, os.cpu_count() or 2)
    apply(params, parsed)
    if params.cpuparams_batch.n_threads <= 0:  # -tb follows -t, as in llama-server
        params.cpuparams_batch.n_threads = params.cpuparams.n_threads
    model = params.model.path
    if not model:
        print(f"{PROG}: error: -m MODEL.gguf is required", file=sys.stderr, flush=True)
        sys.exit(2)
    if not os.path.isfile(model):
        print(f"{PROG}: error: model file not found: {model}", file=sys.stderr, flush=True)
        sys.exit(1)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server = xllamacpp.Server(params)
    where = ",".join(params.hostnames)
    print(f"xllamacpp server for {model} on {where}:{params.port}", flush=True)
    done.wait()
    del server


if __name__ == "__main__":
    main()
