"""The resourceVersions the operator's own writes produced, so the watch events they cause do not queue a
reconcile that would only find what the writing reconcile already decided.

A reconcile that creates a trainer Job and writes the FineTuneJob's status causes two watch events (the
Job's ADDED, the FineTuneJob's MODIFIED); each used to queue one more reconcile (two GETs, a decision, no
write: the decision is idempotent). The writer records the resourceVersion the API server answered with;
the event handler asks ``caused_by_us`` with the event's resourceVersion and skips the enqueue on a match.
Any other event for the object (someone else's change, a restart's initial listing, a resync) still
queues a reconcile, so at worst a match is missed and a reconcile runs, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

Key = tuple[str, str, str]  # kind, namespace, name


class OwnWrites:
    """Thread-safe: reconcile workers record, the event loop asks (each record answers one event)."""

    def __init__(self, max_entries: int = 20_000):
        self.max_entries = max_entries
        self._versions: OrderedDict[tuple[Key, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, kind: str, namespace: str, name: str, resource_version: str | None) -> None:
        if not resource_version:
            return
        with self._lock:
            self._versions[((kind, namespace, name), resource_version)] = None
            while len(self._versions) > self.max_entries:  # events that never came (object deleted)
                self._versions.popitem(last=False)

    def caused_by_us(
        self, kind: str, namespace: str | None, name: str | None, resource_version: str | None
    ) -> bool:
        """Whether the event of this object at RESOURCE_VERSION shows exactly what our own write made."""
        if not (namespace and name and resource_version):
            return False
        with self._lock:
            return self._versions.pop(((kind, namespace, name), resource_version), 0) is None


__all__ = ["OwnWrites"]
