"""Status conditions as the Kubernetes API conventions and kstatus want them, shared by every reconciler.

A decision keeps its conditions as a dict type -> condition (``load_conditions``) and changes them with
``set_condition``, which keeps lastTransitionTime when the status did not flip, so rewriting the same
state makes no difference (and no write).

kstatus (sigs.k8s.io/cli-utils v0.37 pkg/kstatus/status ``Compute``, what Flux's health checks use)
reads a custom resource like this, in order: a deletionTimestamp -> Terminating; status.observedGeneration
different from metadata.generation -> InProgress; the first condition in the list that is
``Reconciling=True`` -> InProgress, or ``Stalled=True`` -> Failed (with that condition's message); then
``Ready=True`` -> Current, ``Ready=False``/``Unknown`` -> InProgress; no such condition -> Current.
``set_kstatus`` keeps the three consistent: Reconciling and Stalled are never True together, and an
object that is neither done nor stuck has Ready=False, so it reads InProgress.

Interface (both controllers use it, through ``draft.Draft``):

- ``load_conditions(status, types)`` -> dict type -> condition (copies)
- ``set_condition(conds, type_, status, reason, message, generation=, now=)``
- ``is_true(conds, type_)``, ``seconds_in_state(cond, now)``
- ``set_kstatus(conds, KStatus(...), generation=, now=)``
- ``ordered(conds, types)`` -> the list to write to status.conditions, in a stable order
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from kubetune.reconcile.clock import fmt_time, parse_time

MAX_MESSAGE = 2000
KSTATUS_TYPES = ("Ready", "Reconciling", "Stalled")


def load_conditions(status: dict[str, Any] | None, types: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The conditions of ``types`` found in STATUS, by type (copies: the pass may change them)."""
    return {c["type"]: dict(c) for c in (status or {}).get("conditions") or [] if c.get("type") in types}


def set_condition(
    conds: dict[str, dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    *,
    generation: int,
    now: dt.datetime,
) -> None:
    """Set condition TYPE_ in CONDS; its lastTransitionTime moves only when its status changes."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = conds.get(type_)
    ltt = old.get("lastTransitionTime") if old and old.get("status") == value else fmt_time(now)
    conds[type_] = {
        "type": type_,
        "status": value,
        "observedGeneration": generation,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "lastTransitionTime": ltt,
    }


def is_true(conds: dict[str, dict[str, Any]], type_: str) -> bool:
    c = conds.get(type_)
    return bool(c and c.get("status") == "True")


def seconds_in_state(cond: dict[str, Any] | None, now: dt.datetime) -> float:
    """How long COND has had its status (from lastTransitionTime, so it survives restarts); 0 if unknown."""
    since = parse_time((cond or {}).get("lastTransitionTime"))
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


@dataclass(frozen=True)
class KStatus:
    """What the object's kstatus conditions should say.

    ready: True only when the object does what it is for, with reason and message; None leaves Ready to
    the controller (a ModelServe's Ready is its rollout's). reconciling: (reason, message) while work is in
    progress, None when it is not. stalled: (reason, message) when it cannot progress without a change by
    the user, None otherwise. A stalled object is not reconciling (stalled wins when both are given)."""

    ready: bool | None
    ready_reason: str = ""
    ready_message: str = ""
    reconciling: tuple[str, str] | None = None
    stalled: tuple[str, str] | None = None
    idle_reason: str = "Idle"
    """Reason of Reconciling=False / Stalled=False when neither applies (e.g. Succeeded, Suspended)."""


def set_kstatus(conds: dict[str, dict[str, Any]], ks: KStatus, *, generation: int, now: dt.datetime) -> None:
    """Set Ready (unless KS leaves it), Reconciling and Stalled in CONDS from KS (see the module docstring
    for how kstatus reads them)."""
    if ks.ready is not None:
        set_condition(
            conds, "Ready", ks.ready, ks.ready_reason, ks.ready_message, generation=generation, now=now
        )
    if ks.stalled is not None:
        reason, message = ks.stalled
        set_condition(conds, "Stalled", True, reason, message, generation=generation, now=now)
        set_condition(
            conds, "Reconciling", False, reason, "stalled: " + message, generation=generation, now=now
        )
    elif ks.reconciling is not None:
        reason, message = ks.reconciling
        set_condition(conds, "Reconciling", True, reason, message, generation=generation, now=now)
        set_condition(conds, "Stalled", False, reason, "", generation=generation, now=now)
    else:
        set_condition(conds, "Reconciling", False, ks.idle_reason, "", generation=generation, now=now)
        set_condition(conds, "Stalled", False, ks.idle_reason, "", generation=generation, now=now)


def ordered(conds: dict[str, dict[str, Any]], types: tuple[str, ...]) -> list[dict[str, Any]]:
    """The conditions to write to status.conditions: TYPES first in that order, then the kstatus ones."""
    order = [*types, *(t for t in KSTATUS_TYPES if t not in types)]
    return [conds[t] for t in order if t in conds]
