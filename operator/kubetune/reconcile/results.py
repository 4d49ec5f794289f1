"""Whether the result of a referenced FineTuneJob may be used now: one rule for both kinds that follow
results, a FineTuneJob that starts from another's result (chains.py) and a ModelServe that serves it
(sources.py). Pure, on the raw object as the API server returns it.

- A job that does not exist has nothing to use (``missing``).
- A job whose spec changed since its last run (``observedGeneration`` behind ``generation``) is about to
  run again: its phase counts as Pending.
- Following (a ModelServe always, a FineTuneJob once its own run started): the result the job shows is
  used, even while the job runs again or after a later run failed; a new result replaces it when it comes.
- Otherwise only the result of a job that has Succeeded is used; a Failed job is ``failed``, any other
  is ``waiting``.
- Only promoted results are used: a result that failed its evaluation gate (``status.result.promoted``
  false) is ``not-promoted``, also for a follower (it keeps what it has).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Raw = Mapping[str, Any]
State = Literal["missing", "failed", "waiting", "ready", "not-promoted"]


@dataclass(frozen=True)
class Readiness:
    state: State
    phase: str = "Pending"
    """The referenced job's phase (Pending while its spec changed since its last run)."""
    result: Mapping[str, Any] = field(default_factory=dict)
    """Its status.result as read ({} when it has none)."""

    @property
    def ready(self) -> bool:
        return self.state == "ready"


def phase_of(obj: Raw) -> str:
    """The job's phase, Pending when its spec changed since the status was written (a new run is coming)."""
    status = obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if phase == "Succeeded" and generation is not None and observed is not None and observed != generation:
        return "Pending"
    return phase


def readiness(obj: Raw | None, *, follow: bool) -> Readiness:
    """Whether OBJ's result may be used (FOLLOW: the user of the result keeps up with every new result)."""
    if obj is None:
        return Readiness("missing")
    phase = phase_of(obj)
    result = (obj.get("status") or {}).get("result") or {}
    if result.get("uri") and result.get("promoted") is False:
        return Readiness("not-promoted", phase, result)
    if follow and result.get("uri"):
        return Readiness("ready", phase, result)
    if phase == "Failed":
        return Readiness("failed", phase, result)
    if phase != "Succeeded" or not result.get("uri"):
        return Readiness("waiting", phase, result)
    return Readiness("ready", phase, result)


__all__ = ["Readiness", "phase_of", "readiness"]
