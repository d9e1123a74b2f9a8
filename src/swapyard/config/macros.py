"""Macro expansion: ``${name}``, ``${env.NAME}``, ``${MODEL_ID}`` and the runtime
macros ``${PORT}`` and ``${PID}``, which stay in the text until ``render`` fills
them in when an engine starts (or stops).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from swapyard.errors import ConfigError

_MACRO = re.compile(r"\$\{([^}]*)\}")
_MACRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Macros only known when the engine is started (or stopped), per field.
RUNTIME_MACROS = {"cmd": {"PORT"}, "proxy": {"PORT"}, "cmd_stop": {"PORT", "PID"}}


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill runtime macros (``${PORT}``, ``${PID}``) into a template."""
    return _MACRO.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def user_macros(
    source: str, raw: Mapping[str, str | int | float], env: Mapping[str, str]
) -> dict[str, str]:
    """The ``macros:`` section expanded in order: a macro may use the ones above it."""
    done: dict[str, str] = {}
    for name, value in raw.items():
        where = f"{source}: macros.{name}"
        if not _MACRO_NAME.match(name) or name in {"PORT", "PID", "MODEL_ID"}:
            raise ConfigError(f"{where}: invalid or reserved macro name {name!r}")
        done[name] = expand(str(value), done, env, where, allowed_runtime={"PORT", "PID"})
    return done


def expand(
    text: str,
    macros: Mapping[str, str],
    env: Mapping[str, str],
    where: str,
    allowed_runtime: set[str],
) -> str:
    """``text`` with every macro but ``allowed_runtime`` filled in; errors name ``where``."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in allowed_runtime:
            return m.group(0)
        if name.startswith("env."):
            var = name[4:]
            if var not in env:
                raise ConfigError(f"{where}: environment variable {var!r} is not set")
            return env[var]
        if name in macros:
            return macros[name]
        if name in {"PORT", "PID"}:
            raise ConfigError(f"{where}: ${{{name}}} cannot be used here")
        raise ConfigError(f"{where}: unknown macro ${{{name}}}")

    out = _MACRO.sub(sub, text)
    for m in _MACRO.finditer(out):  # runtime macros brought in by a user macro
        if m.group(1) not in allowed_runtime:
            raise ConfigError(f"{where}: ${{{m.group(1)}}} cannot be used here")
    return out


def argv(
    value: str | list[str],
    macros: Mapping[str, str],
    env: Mapping[str, str],
    where: str,
    allowed_runtime: set[str],
) -> tuple[str, ...]:
    if isinstance(value, str):
        # Expand first, then split, so a macro may hold several arguments (quote a
        # value that must stay one argument).
        text = expand(value, macros, env, where, allowed_runtime)
        try:
            parts = shlex.split(text, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{where}: cannot split into arguments: {exc}") from exc
    else:
        parts = [expand(p, macros, env, where, allowed_runtime) for p in value]
    if not parts:
        raise ConfigError(f"{where}: expected a command, got an empty one")
    return tuple(parts)
