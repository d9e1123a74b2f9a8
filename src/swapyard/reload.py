"""What a config reload changes, model by model (a pure diff; the router's task
carries it out).

A model is *unchanged* when its effective spec — what determines its process,
``process.registry.spec_hash`` — is the same: it keeps running and serving, and
the rest of its settings (ttl, aliases, timeouts, pin, priority...) apply at
once. A *changed* model is drained (running answers finish) and started again
with the new spec on its next use (at once if pinned or preloaded). A *removed*
model is drained and stopped; an *added* one appears in ``/v1/models``.
"""

from __future__ import annotations

from dataclasses import dataclass

from swapyard.config import Config
from swapyard.process.registry import spec_hash


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]


def diff(old: Config, new: Config) -> ConfigDiff:
    added, changed, unchanged = [], [], []
    for mid, spec in new.models.items():
        before = old.models.get(mid)
        if before is None:
            added.append(mid)
        elif spec_hash(before) != spec_hash(spec):
            changed.append(mid)
        else:
            unchanged.append(mid)
    removed = [mid for mid in old.models if mid not in new.models]
    return ConfigDiff(tuple(added), tuple(removed), tuple(changed), tuple(unchanged))
