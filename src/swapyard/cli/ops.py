"""CLI commands that talk to a running swapyard: ps, load, unload, logs, usage."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import click

from swapyard.cli.client import Client, ClientError, fmt_bytes, fmt_secs, table


def _client(url: str | None) -> Client:
    return Client(url)


def fail(err: Exception) -> None:
    click.echo(f"swapyard: {err}", err=True)
    sys.exit(1)


def ps_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for mid, m in doc["models"].items():
        mem = m["memory"]
        est, meas = fmt_bytes(mem.get("estimated")), fmt_bytes(mem.get("measured"))
        state = m["state"] + (" (pinned)" if m["pinned"] else "")
        if m.get("state") == "sleeping" and mem.get("asleep") is not None:
            state += f" (keeps {fmt_bytes(mem['asleep'])})"
        if m.get("progress") and m["state"] == "starting":
            frac, what = m["progress"]
            state += f" {what}" + (f" {frac:.0%}" if frac is not None else "")
        rows.append([
            mid, m.get("engine", "-"), state, fmt_bytes(mem.get("scheduled")), est, meas,
            ",".join(m["devices"]) or "-", fmt_secs(m.get("idle_s")), str(m["in_flight"]),
            str(m["queued"]), str(m.get("pid") or "-"), " ".join(m.get("engine_args") or ()) or "-",
        ])  # fmt: skip
    return rows


@click.command()
@click.option("--url", default=None, help="swapyard's URL (default $SWAPYARD_URL or :8080).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def ps(url: str | None, as_json: bool) -> None:
    """Models: state, memory (scheduled, estimated, measured), devices, idle time,
    requests in flight and queued, the share swapyard told the engine; devices:
    budget, what swapyard's models hold, what other processes hold, free; with
    peers, each other host's models as it last said (or why it is down)."""
    try:
        doc = _client(url).get("/api/models")
    except ClientError as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    headers = ["MODEL", "ENGINE", "STATE", "MEMORY", "ESTIMATED", "MEASURED", "DEVICES",
               "IDLE", "IN-FLIGHT", "QUEUED", "PID", "CHOSEN"]  # fmt: skip
    click.echo(table(headers, ps_rows(doc)))
    devs = [[d, fmt_bytes(v["budget"]), fmt_bytes(v["used"]), fmt_bytes(v.get("foreign", 0)),
             fmt_bytes(v["free"])] for d, v in doc["devices"].items()]  # fmt: skip
    click.echo("\n" + table(["DEVICE", "BUDGET", "USED", "OTHERS", "FREE"], devs))
    for d, v in doc["devices"].items():
        others = [h for h in v.get("holders") or () if not h.get("model")]
        for h in others:
            click.echo(f"  {d}: pid {h['pid']} ({h['name']}) holds {fmt_bytes(h['used'])}, "
                       "not started by swapyard")  # fmt: skip
    if doc.get("peers"):
        click.echo("\n" + table(["HOST", "MODEL", "STATE", "MEMORY", "IN-FLIGHT", "QUEUED"],
                                 peer_rows(doc["peers"])))  # fmt: skip


def peer_rows(peers: dict[str, Any]) -> list[list[str]]:
    """Issue 15: each peer's models as it last said; a down host in one row, with why."""
    rows = []
    for name, p in peers.items():
        if not p["up"]:
            rows.append([name, "-", f"down {fmt_secs(p['for_s'])}: {p['error']}", "-", "-", "-"])
            continue
        for mid, m in p["models"].items():
            rows.append([name, mid, m["state"], fmt_bytes(m.get("memory")), str(m["in_flight"]),
                         str(m["queued"])])  # fmt: skip
    return rows


def _bar(fraction: float | None, width: int = 24) -> str:
    if fraction is None:
        return "[" + " " * width + "]"
    n = int(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * n + "." * (width - n) + "]"


@click.command()
@click.argument("model")
@click.option("--url", default=None)
def load(model: str, url: str | None) -> None:
    """Load MODEL now and keep it; a progress line while it loads."""
    c = _client(url)
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["doc"] = c.post(f"/api/models/{model}/load")
        except ClientError as err:
            result["err"] = err

    t = threading.Thread(target=call, daemon=True)
    t0 = time.monotonic()
    t.start()
    tty = sys.stderr.isatty()
    while t.is_alive():
        t.join(0.2)
        if not t.is_alive():
            break
        try:
            m = c.get("/api/models")["models"].get(model, {})
        except ClientError:
            continue
        frac, what = m.get("progress") or (None, m.get("state", ""))
        line = f"loading {model} {_bar(frac)} {time.monotonic() - t0:5.1f}s {what}"
        click.echo(("\r" if tty else "") + line[:100].ljust(100 if tty else 0), err=True,
                   nl=not tty)  # fmt: skip
    if tty:
        click.echo("", err=True)
    if "err" in result:
        fail(result["err"])
    doc = result["doc"]
    if doc["state"] != "ready":
        fail(ClientError(f"{model} is {doc['state']}"))
    click.echo(f"{model}: ready after {time.monotonic() - t0:.1f}s")


@click.command()
@click.argument("model", required=False)
@click.option("--all", "everything", is_flag=True, help="Unload every model.")
@click.option("--url", default=None)
def unload(model: str | None, everything: bool, url: str | None) -> None:
    """Stop MODEL (or --all) once its running answers finish."""
    c = _client(url)
    try:
        if everything:
            names = [m for m, s in c.get("/api/models")["models"].items()
                     if s["state"] not in ("stopped", "failed")]  # fmt: skip
        elif model:
            names = [model]
        else:
            raise click.UsageError("name a model, or --all")
        for name in names:
            doc = c.post(f"/api/models/{name}/unload")
            click.echo(f"{name}: {doc['state']}")
    except ClientError as err:
        fail(err)


@click.command()
@click.argument("model", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=100, show_default=True)
@click.option("--url", default=None)
def logs(model: str | None, follow: bool, lines: int, url: str | None) -> None:
    """MODEL's engine log (without MODEL: swapyard's own log)."""
    c = _client(url)
    path = f"/api/models/{model}/logs" if model else "/api/logs"
    try:
        if follow:
            for line in c.events(f"{path}?follow=1&lines={lines}"):
                click.echo(line)
        else:
            click.echo(c.get(f"{path}?lines={lines}"), nl=False)
    except ClientError as err:
        fail(err)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        pass


@click.command()
@click.option("--since", default="24h", show_default=True, help="e.g. 1h, 7d, or a Unix time")
@click.option("--by", type=click.Choice(["model", "key"]), default="model", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--url", default=None)
def usage(since: str, by: str, as_json: bool, url: str | None) -> None:
    """Requests, tokens, errors, TTFT and tok/s from the usage store."""
    try:
        doc = _client(url).get(f"/api/usage?since={since}&by={by}")
    except ClientError as err:
        fail(err)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    rows = [[r["name"], str(r["requests"]), str(r["errors"]), str(r["prompt_tokens"]),
             str(r["completion_tokens"]),
             f"{r['avg_ttft_s']:.2f}s" if r["avg_ttft_s"] is not None else "-",
             f"{r['avg_tok_s']:.1f}" if r["avg_tok_s"] is not None else "-",
             str(r["waited_for_load"] or 0)] for r in doc["rows"]]  # fmt: skip
    headers = [by.upper(), "REQUESTS", "ERRORS", "PROMPT TOK", "COMPLETION TOK", "AVG TTFT",
               "AVG TOK/S", "WAITED FOR LOAD"]  # fmt: skip
    click.echo(table(headers, rows) if rows else f"no requests in the last {since}")
