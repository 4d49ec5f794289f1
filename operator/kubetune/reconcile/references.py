"""Which objects refer to which, kept from watch events: an event of one object wakes the objects that
refer to it (the FineTuneJobs that start from a job's result, the ModelServes that serve it), but only
when what they read of it changed (``Readings``).

In memory and pure: the handlers feed it every event of the referring kind (``note``) and ask it on every
event of the referred kind (``woken``). Used on kopf's event loop only, so it needs no lock.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Raw = Mapping[str, Any]


class Readings:
    """What the objects that refer to a FineTuneJob read of it: whether it exists (and which one, its uid),
    its spec and generation (a new run is coming; its own references, for cycles), its phase and its
    result. The trainer's progress reports and the operator's condition updates change none of it, so they
    wake nobody. Kept as a digest per object."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], str] = {}

    @staticmethod
    def of(body: Raw) -> str:
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        read = [
            meta.get("uid"),
            meta.get("generation"),
            status.get("observedGeneration"),
            status.get("phase"),
            status.get("result"),
            body.get("spec"),
        ]
        return hashlib.sha256(json.dumps(read, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def changed(self, namespace: str, name: str, body: Raw | None) -> bool:
        """Whether what is read of the object changed since its last event (BODY None: it was deleted)."""
        key = (namespace, name)
        before = self._seen.pop(key, None)
        if body is None:
            return before is not None
        now = self.of(body)
        self._seen[key] = now
        return before != now

    def forget(self, namespace: str, name: str) -> None:
        self._seen.pop((namespace, name), None)


class ReferenceIndex:
    """(namespace, referrer name) -> the names it refers to, read from the referrer's object by REFERS_TO."""

    def __init__(self, refers_to: Callable[[Raw], Iterable[str]]) -> None:
        self._refers_to = refers_to
        self._refs: dict[tuple[str, str], set[str]] = {}
        self._referrers: dict[tuple[str, str], set[str]] = defaultdict(set)  # (ns, referred) -> referrers
        self._readings = Readings()

    def note(self, namespace: str, name: str, obj: Raw | None) -> None:
        """Record what NAME refers to now, from its object OBJ (None: it was deleted, so nothing)."""
        names = set(self._refers_to(obj)) if obj else set()
        for old in self._refs.pop((namespace, name), set()) - names:
            referrers = self._referrers[(namespace, old)]
            referrers.discard(name)
            if not referrers:
                del self._referrers[(namespace, old)]
        if names:
            self._refs[(namespace, name)] = names
            for new in names:
                self._referrers[(namespace, new)].add(name)

    def of(self, namespace: str, name: str) -> list[str]:
        """The objects in NAMESPACE that refer to NAME, sorted."""
        return sorted(self._referrers.get((namespace, name), ()))

    def woken(self, namespace: str, name: str, obj: Raw | None) -> list[str]:
        """The referrers to wake for an event of NAME (OBJ None: it was deleted): those that refer to it,
        when what they read of it changed. Only referenced objects are remembered."""
        referrers = self.of(namespace, name)
        if not referrers:
            self._readings.forget(namespace, name)
            return []
        return referrers if self._readings.changed(namespace, name, obj) else []
