"""``swapyard config check`` and ``swapyard service install``."""

from __future__ import annotations

import getpass
import os
import shlex
import sys
from pathlib import Path

import click

from swapyard.errors import ConfigError


@click.group()
def config() -> None:
    """Config file tools."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def check(path: str) -> None:
    """Validate a config file: exit 0 and a summary, or 1 and what is wrong.

    A variable the file reads (a key's ``key_env``, ``${env.NAME}``) that is not
    set here is a warning, not an error: the service's environment may hold it
    (issue 14). ``serve`` still refuses to start without it."""
    from swapyard.config import load_config_file
    from swapyard.config.macros import Recording

    env = Recording(os.environ)
    try:
        cfg = load_config_file(path, environ=env)
    except ConfigError as err:
        click.echo(f"swapyard: {err.message}", err=True)
        sys.exit(1)
    engines: dict[str, int] = {}
    for m in cfg.models.values():
        engines[m.engine] = engines.get(m.engine, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(engines.items()))
    devices = ", ".join(f"{d.id} ({d.budget / 2**30:.1f} GiB)" for d in cfg.devices) or "RAM"
    click.echo(f"{path}: ok — {len(cfg.models)} models ({kinds}); devices: {devices}; "
               f"listening on {cfg.server.host}:{cfg.server.port}"
               + ("; API keys on" if cfg.auth.enabled else ""))  # fmt: skip
    for var in env.unset:
        click.echo(f"{path}: warning: environment variable {var} is not set here; "
                   "`swapyard serve` will need it", err=True)  # fmt: skip


UNIT = """\
[Unit]
Description=swapyard: one OpenAI-compatible endpoint for local LLM engines
Documentation=https://github.com/swapyard/swapyard
After=network-online.target
Wants=network-online.target
# Give up after 5 crashes in 5 minutes rather than loop forever.
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=simple
ExecStart={exec_start}
{user}Environment=PYTHONUNBUFFERED=1
Environment=SWAPYARD_DATA_DIR={data_dir}
# API keys and engine keys (SWAPYARD_ADMIN_KEY=..., one per line), kept out of the unit.
EnvironmentFile=-{env_file}
Restart=on-failure
RestartSec=2s
# SIGTERM to swapyard only: it drains answers and stops its engines itself (so
# `systemctl stop` and `restart` unload every model). Signals go to swapyard alone,
# never to the engines: when swapyard dies (a crash, OOM, kill -9) or is told to
# leave them (`systemctl kill -s USR2 --kill-whom=main swapyard`, exit status 75),
# the engines keep running and the restarted swapyard adopts them, ready at once.
KillMode=process
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}
ExecReload=/bin/kill -HUP $MAINPID
LimitNOFILE=65536

[Install]
WantedBy={wanted_by}
"""


def render_unit(config_path: Path, user_mode: bool, user: str | None, data_dir: Path,
                env_file: Path, stop_timeout: int) -> str:  # fmt: skip
    exec_start = " ".join(
        shlex.quote(a) for a in (sys.executable, "-m", "swapyard", "serve", "-c", str(config_path))
    )
    return UNIT.format(
        exec_start=exec_start,
        user="" if user_mode or not user else f"User={user}\n",
        data_dir=data_dir,
        env_file=env_file,
        stop_timeout=stop_timeout,
        wanted_by="default.target" if user_mode else "multi-user.target",
    )


@click.group()
def service() -> None:
    """Run swapyard as a systemd service."""


@service.command("install")
@click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="The config to serve.",
)
@click.option("--user", "user_mode", is_flag=True, help="A user unit (~/.config/systemd/user).")
@click.option("--dest", type=click.Path(), default=None, help="Where to write the unit.")
@click.option("--print", "just_print", is_flag=True, help="Print the unit, write nothing.")
def install(config_path: str, user_mode: bool, dest: str | None, just_print: bool) -> None:
    """Write a systemd unit for swapyard (restart on failure, clean stops) and
    print how to enable it."""
    from swapyard.config import load_config_file
    from swapyard.models.fetch import data_dir

    try:
        cfg = load_config_file(config_path)
    except ConfigError as err:
        click.echo(f"swapyard: {err.message}", err=True)
        sys.exit(1)
    cfg_abs = Path(config_path).resolve()
    if user_mode:
        unit_dir = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "systemd/user"
        env_file = Path.home() / ".config/swapyard/env"
    else:
        unit_dir, env_file = Path("/etc/systemd/system"), Path("/etc/swapyard/env")
    target = Path(dest) if dest else unit_dir / "swapyard.service"
    text = render_unit(cfg_abs, user_mode, None if user_mode else getpass.getuser(), data_dir(),
                       env_file, int(cfg.server.shutdown_timeout) + 15)  # fmt: skip
    if just_print:
        click.echo(text, nl=False)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    ctl = "systemctl --user" if user_mode else "systemctl"
    click.echo(f"wrote {target}")
    click.echo("enable and start it with:")
    click.echo(f"  {ctl} daemon-reload && {ctl} enable --now swapyard")
    click.echo(f"logs: journalctl {'--user ' if user_mode else ''}-u swapyard -f")


@config.command("reload")
@click.option("--url", default=None, help="swapyard's URL (default: $SWAPYARD_URL, else :8080).")
def reload_cmd(url: str | None) -> None:
    """Ask the running swapyard to read its config file again (as SIGHUP does)."""
    from swapyard.cli.client import Client, ClientError

    try:
        doc = Client(url).post("/api/config/reload")
    except ClientError as err:
        click.echo(f"swapyard: {err}", err=True)
        sys.exit(1)
    parts = [f"{k}: {', '.join(v)}" for k in ("added", "changed", "removed") if (v := doc[k])]
    if doc["unchanged"]:
        parts.append(f"unchanged: {', '.join(doc['unchanged'])}")
    click.echo("config reloaded — " + ("; ".join(parts) or "no models"))
