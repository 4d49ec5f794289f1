"""The writes every controller makes the same way: its object's status and Events.

Status: ``write_status`` sends the merge patch ``status.status_patch`` computes (nothing when nothing
changed) to the status subresource.

Events: ``EventRecorder.emit`` writes core/v1 Events and drops one that this process already wrote for
the same object (type, reason, message) within ``window`` seconds, so a state that is reconciled again
and again (a refused child retried with backoff) gives one Event, not one per retry. Decisions emit
Events on transitions (a condition that changed), which already survives restarts; the window is the
second line of defence.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from .client import ApiException, Kube
from .status import Event, status_patch


def write_status(
    kube: Kube, obj: dict[str, Any], new: dict[str, Any], fields: Iterable[str]
) -> dict[str, Any] | None:
    """Patch OBJ's status subresource to NEW's FIELDS when they differ; OBJ's status (and resourceVersion)
    is updated in place so a second write in the same pass compares with what was written. Returns the patch sent (None: no
    write). An object deleted meanwhile is not an error."""
    fields = tuple(fields)
    patch = status_patch(obj, new, fields)
    if patch is None:
        return None
    meta = obj["metadata"]
    try:
        written = kube.patch(
            obj["kind"], meta.get("namespace"), meta["name"], {"status": patch}, subresource="status"
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None
    # the version the write made (its watch event carries it: see reconcile/own_writes.py)
    version = ((written or {}).get("metadata") or {}).get("resourceVersion")
    if version:
        meta["resourceVersion"] = version
    status = obj.setdefault("status", {})
    for k in fields:
        if new.get(k) is None:
            status.pop(k, None)
        else:
            status[k] = new[k]
    return patch


class EventRecorder:
    """Writes Events about objects, at most once per (object, type, reason, message) per WINDOW seconds."""

    def __init__(
        self,
        kube: Kube,
        window: float = 600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self._seen: OrderedDict[tuple[str, str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def _fresh(self, key: tuple[str, str, str, str]) -> bool:
        """True when KEY was not emitted within the window (and records it as emitted now)."""
        now = self.clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last < self.window:
                return False
            self._seen[key] = now
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return True

    def emit(self, obj: dict[str, Any], events: Iterable[tuple[str, str, str]]) -> list[Event]:
        """Write EVENTS (type, reason, message) about OBJ, skipping repeats; returns those written."""
        meta = obj["metadata"]
        owner = meta.get("uid") or f"{meta.get('namespace')}/{meta['name']}"
        written = []
        for ev in map(Event._make, events):
            if self._fresh((owner, ev.type, ev.reason, ev.message)):
                self.kube.event(obj, ev.type, ev.reason, ev.message)
                written.append(ev)
        return written


__all__ = ["EventRecorder", "write_status"]
