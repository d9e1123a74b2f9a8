"""Macro expansion, argument splitting and secrets from the environment.

Macros: ``${name}`` (the ``macros:`` section), ``${env.NAME}``, ``${MODEL_ID}``, and
the runtime macros ``${PORT}`` and ``${PID}``, which stay in the text until
``render`` fills them in when an engine starts (or stops).

One splitter and one secret helper serve every key (issue 9 merged two of each):

- ``split_args``: a string is expanded, then split with ``shlex.split(...,
  comments=True)``, so an unquoted ``#`` starts a comment in ``cmd``, ``cmd_stop``,
  ``launcher`` and ``extra_args`` alike; a list keeps each item whole. It may
  return no arguments: ``cmd`` and ``cmd_stop`` reject that, ``extra_args`` and
  ``launcher`` take it as "none".
- ``secret``: a variable that is unset or set to the empty string is an error,
  for ``auth`` keys and an engine's ``api_key_env``/``admin_key_env`` alike, so a
  missing secret never turns into no secret. ``${env.NAME}`` in text is not a
  secret: there an empty variable is a value.

A command is shown (in the engine's log, hence in errors and the admin routes)
with its ``${env.NAME}`` macros as written, never their values (issue 11): it is
expanded a second time against ``Hidden(env)``, whose every value is a mark that
``reveal`` turns back into ``${env.NAME}``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet

from swapyard.errors import ConfigError

_MACRO = re.compile(r"\$\{([^}]*)\}")
_MACRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_HIDDEN = re.compile("\x00([^\x00]*)\x00")
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
    allowed_runtime: AbstractSet[str] = frozenset(),
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


def split_args(
    value: str | Sequence[str],
    macros: Mapping[str, str],
    env: Mapping[str, str],
    where: str,
    allowed_runtime: AbstractSet[str] = frozenset(),
) -> tuple[str, ...]:
    """The arguments ``value`` holds, for every key that takes a command or arguments.

    A string is expanded first, then split the way a shell would (quotes group
    words, an unquoted ``#`` starts a comment), so a macro may hold several
    arguments. Each item of a list is expanded and stays one argument. The result
    may be empty; a key that needs a program checks that itself.
    """
    if not isinstance(value, str):
        return tuple(expand(v, macros, env, where, allowed_runtime) for v in value)
    text = expand(value, macros, env, where, allowed_runtime)
    try:
        return tuple(shlex.split(text, comments=True))
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot split into arguments: {exc}") from exc


def secret(var: str | None, env: Mapping[str, str], where: str) -> str | None:
    """The value of the environment variable named ``var``; None when none is named.

    Unset and empty are the same error: a key that names a variable wants a
    secret, and an empty one would quietly mean no key at all.
    """
    if var is None:
        return None
    value = env.get(var)
    if not value:
        raise ConfigError(f"{where}: environment variable {var!r} is not set or is empty")
    return value


class Hidden(Mapping[str, str]):
    """``env`` with every value replaced by a mark of its name (for ``reveal``):
    the same variables are set, so expansion fails or succeeds as it does on ``env``."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def __getitem__(self, name: str) -> str:
        if name not in self._env:
            raise KeyError(name)
        return f"\x00{name}\x00"

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


class Recording(Mapping[str, str]):
    """``env`` in which every variable is set, for ``swapyard config check``
    (issue 14): an unset one reads as a placeholder naming it and is recorded in
    ``unset``, so a file whose keys come from the service's environment checks
    clean on another shell and says which variables ``serve`` will need. A
    variable set to the empty string stays empty (``secret`` refuses it)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.unset: list[str] = []

    def __getitem__(self, name: str) -> str:
        if name in self._env:
            return self._env[name]
        if name not in self.unset:
            self.unset.append(name)
        return f"unset-{name}"

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def reveal(text: str) -> str:
    """``text`` expanded against ``Hidden``, with each mark shown as ``${env.NAME}``."""
    return _HIDDEN.sub(lambda m: "${env." + m.group(1) + "}", text)
