"""Run llama.cpp's HTTP server from the prebuilt ``xllamacpp`` wheel as a process.

    python -m swapyard.engines.xllamacpp_server -m MODEL.gguf --port P [-c N] [-t N]

The flags mirror ``llama-server``'s, so a config can switch between this and the
compiled binary by changing the first words of ``cmd``. The server runs on
llama.cpp's own threads; this process only keeps it alive until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="swapyard-xllamacpp-server")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-c", "--ctx-size", type=int, default=2048)
    p.add_argument("-t", "--threads", type=int, default=max(1, (os.cpu_count() or 2)))
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("-a", "--alias", default=None)
    p.add_argument("--embeddings", action="store_true")
    args = p.parse_args(argv)

    import xllamacpp

    if not os.path.isfile(args.model):
        print(f"error: model file not found: {args.model}", file=sys.stderr, flush=True)
        sys.exit(1)
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.embedding = args.embeddings
    if args.alias:
        params.model_alias = {args.alias}  # a set of names; a bare str would become its letters
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server = xllamacpp.Server(params)
    print(f"xllamacpp server for {args.model} on {args.host}:{args.port}", flush=True)
    done.wait()
    del server


if __name__ == "__main__":
    main()
