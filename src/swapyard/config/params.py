"""Per-model request parameters and variants (issue 14), as frozen values.

A model's ``params`` change every JSON body swapyard sends its engine; a
*variant* is another id over the same engine with its own parameters over the
model's, so several presets share one loaded engine (llama-swap's
``setParams``/``setParamsByID``/``stripParams``). ``Config.resolve`` maps a
variant to its model: the scheduler and the engines only ever see models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: objects merge key by key at any depth, anything else
    (lists, strings, numbers) in ``top`` replaces ``base``'s whole."""
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = _merged(old, value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Params:
    """A model's request parameters (issue 14), applied to every JSON body
    swapyard sends its engine: ``strip`` removes those top-level keys, then
    ``defaults`` fill what the request leaves out, then ``override`` sets its
    keys whatever the request said. Objects (``chat_template_kwargs``...) merge
    key by key, the request's keys winning over defaults and losing to overrides."""

    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    override: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    strip: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.defaults or self.override or self.strip)

    def apply(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """A new body: ``doc`` with these parameters applied (``doc`` is not changed)."""
        out = {k: v for k, v in doc.items() if k not in self.strip}
        out = _merged(self.defaults, out)
        return _merged(out, self.override)

    def over(self, base: Params) -> Params:
        """These parameters over ``base``'s (a variant's over its model's): every
        key these name, in any list, takes ``base``'s out of all three."""
        mine = {*self.defaults, *self.override, *self.strip}
        keep = {
            "defaults": {k: v for k, v in base.defaults.items() if k not in mine},
            "override": {k: v for k, v in base.override.items() if k not in mine},
        }
        return Params(
            defaults=MappingProxyType({**keep["defaults"], **self.defaults}),
            override=MappingProxyType({**keep["override"], **self.override}),
            strip=tuple(dict.fromkeys((*(k for k in base.strip if k not in mine), *self.strip))),
        )

    def as_json(self) -> dict[str, Any]:
        return {"defaults": dict(self.defaults), "override": dict(self.override),
                "strip": list(self.strip)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """Another id for a model's engine with its own request parameters (issue 14):
    requests for it run on ``model``'s engine, which never loads twice."""

    id: str
    model: str  # the model whose engine serves it
    params: Params = Params()  # already over the model's own
    name: str | None = None
    aliases: tuple[str, ...] = ()
