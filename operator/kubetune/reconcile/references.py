"""Which objects refer to which, kept from watch events: an event of one object wakes the objects that
refer to it (the FineTuneJobs that start from a job's result, the ModelServes that serve it).

In memory and pure: the handlers feed it every event of the referring kind, and ask it on every event of
the referred kind. Used on kopf's event loop only, so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

Raw = Mapping[str, Any]


class ReferenceIndex:
    """(namespace, referrer name) -> the names it refers to, read from the referrer's object by REFERS_TO."""

    def __init__(self, refers_to: Callable[[Raw], Iterable[str]]) -> None:
        self._refers_to = refers_to
        self._refs: dict[tuple[str, str], set[str]] = {}

    def note(self, namespace: str, name: str, obj: Raw | None) -> None:
        """Record what NAME refers to now, from its object OBJ (None: it was deleted, so nothing)."""
        names = set(self._refers_to(obj)) if obj else set()
        if names:
            self._refs[(namespace, name)] = names
        else:
            self._refs.pop((namespace, name), None)

    def of(self, namespace: str, name: str) -> list[str]:
        """The objects in NAMESPACE that refer to NAME, sorted."""
        return sorted(ref for (ns, ref), names in self._refs.items() if ns == namespace and name in names)
