"""The status a decision is drafting, the same way for both kinds: conditions (conditions.py), kstatus, the
Events a change of them deserves, and when to look again.

A decision (finetunejob_decision.py, modelserve_decision.py) starts a ``Draft`` from the object it read,
sets conditions as it goes, and ends with ``finish_kstatus``; the conditions keep their lastTransitionTime
while their status does not flip, so deciding the same state again changes nothing (and writes nothing).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from .clock import parse_time
from .conditions import KSTATUS_TYPES, KStatus, is_true, load_conditions, set_condition, set_kstatus
from .status import Event

MIN_REQUEUE_SECONDS = 0.05


class Draft:
    """Conditions of TYPES (plus kstatus') as read from OBJ's status, changed by the decision at NOW."""

    def __init__(self, obj: Mapping[str, Any], types: tuple[str, ...], now: dt.datetime) -> None:
        self.obj = obj
        self.meta: Mapping[str, Any] = obj["metadata"]
        self.gen = int(self.meta.get("generation") or 1)
        self.now = now
        types = (*types, *(t for t in KSTATUS_TYPES if t not in types))
        self.conds = load_conditions(obj.get("status") or {}, types)
        self.old_conds = {t: dict(c) for t, c in self.conds.items()}
        self.events: list[Event] = []
        self.requeue: list[float] = []

    # -- conditions --

    def set(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        set_condition(self.conds, type_, status, reason, message, generation=self.gen, now=self.now)

    def is_true(self, type_: str) -> bool:
        return is_true(self.conds, type_)

    def reason(self, type_: str) -> str | None:
        c = self.conds.get(type_)
        return c.get("reason") if c else None

    def default(self, type_: str, reason: str, message: str) -> None:
        """Set TYPE_ (False) only when the object has no such condition yet."""
        if type_ not in self.conds:
            self.set(type_, False, reason, message)

    def mark_observed(self, *types: str) -> None:
        """TYPES were evaluated against this generation (they keep status, reason and message)."""
        for type_ in types:
            if type_ in self.conds:
                self.conds[type_]["observedGeneration"] = self.gen

    def finish_kstatus(self, ks: KStatus) -> None:
        set_kstatus(self.conds, ks, generation=self.gen, now=self.now)

    # -- Events and timers --

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def event_on_change(self, type_: str, reason: str, message: str, condition: str) -> None:
        """One Event when CONDITION takes this reason and message, not one per decision."""
        was = self.old_conds.get(condition) or {}
        if was.get("reason") != reason or was.get("message") != message:
            self.event(type_, reason, message)

    def after(self, seconds: float) -> None:
        """Look again after SECONDS (the earliest of all such asks wins)."""
        self.requeue.append(max(MIN_REQUEUE_SECONDS, seconds))

    @property
    def requeue_after(self) -> float | None:
        return min(self.requeue) if self.requeue else None

    def since(self, stamp: str | None) -> float | None:
        """Seconds from STAMP (an API timestamp) to now; None when there is none."""
        t = parse_time(stamp)
        return None if t is None else (self.now - t).total_seconds()


__all__ = ["Draft"]
