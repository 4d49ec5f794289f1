"""Status conditions as the Kubernetes API conventions want them, shared by every reconciler.

A pass keeps its conditions as a dict type -> condition; ``set_condition`` keeps lastTransitionTime
when the status did not change, so rewriting the same state makes no difference.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetune.reconcile.kube import fmt_time

MAX_MESSAGE = 2000


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
