"""What a FineTuneJob reconcile must read besides what the watches deliver, declared before the decision
(pure: finetunejob.py reads it, finetunejob_decision.py decides from it).

Everything else a decision reads comes from the watch index (the FineTuneJob, its Jobs and their pods, the
FineTuneJobs of its chain). Two things are not watched, and are read only when the decision may need them:

- the Secrets and PersistentVolumeClaims the trainer pods will use (``references``): whenever the
  FineTuneJob may create a trainer Job now, i.e. it has no Job that is not being deleted, its spec is valid
  and its chain (if any) is resolved;
- the fit check's inputs (``fit``: the model's config.json and the GPU nodes), on the same condition, for a
  GPU run whose status holds no estimate for this run yet;
- the FailedCreate Events of a Job that has made no pods (``job_events``): once it had time to make them
  (``finetunejob_pods.NO_PODS_LOOK_AFTER_SECONDS`` after its creation or a preemption), while it is neither
  finished nor suspended.

These are supersets of what the decision uses; reading a little more than needed costs a GET, reading less
would leave the decision without what it must check.

The unwatched children the operator made (RBAC, ConfigMap, Service) are read again once what it remembers of
them is older than the resync period (drift repair), except for a FineTuneJob that finished with its current
spec (``finished_with_this_spec``): nothing reads its children any more, and an edit of its spec (a new
generation) ends the exception.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob, validate_document
from kubetune.render.finetunejob import run_id

from . import chains
from .clock import parse_time
from .finetunejob_decision import references
from .finetunejob_pods import NO_PODS_LOOK_AFTER_SECONDS, failed_create_since
from .finetunejob_readings import condition_true

Raw = Mapping[str, Any]
FINISHED = ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget")


@dataclass(frozen=True)
class Reads:
    secrets: tuple[str, ...] | None = None
    """Secrets to read (None: the decision needs none now)."""
    pvcs: tuple[str, ...] | None = None
    job_events: tuple[str, ...] = ()
    """Uids of Jobs whose FailedCreate Events to list."""
    fit: bool = False
    """Read the fit check's inputs."""


def finished_with_this_spec(obj: Raw) -> bool:
    """Whether the FineTuneJob Succeeded or Failed, and its spec has not changed since the status said so."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    return status.get("phase") in ("Succeeded", "Failed") and status.get("observedGeneration") == meta.get(
        "generation"
    )


def reads(
    obj: Raw,
    jobs: Sequence[Raw],
    pods: Mapping[str, Sequence[Raw]],
    chain_jobs: Mapping[str, Raw | None],
    now: dt.datetime,
) -> Reads:
    ftj = _may_start(obj, jobs, chain_jobs)
    secrets = pvcs = None
    if ftj is not None:
        secrets, pvcs = _references(ftj, obj, chain_jobs)
    return Reads(secrets, pvcs, tuple(_jobs_without_pods(obj, jobs, pods, now)), _fit(ftj, obj))


def _may_start(obj: Raw, jobs: Sequence[Raw], chain_jobs: Mapping[str, Raw | None]) -> FineTuneJob | None:
    """The FineTuneJob when the decision may create a trainer Job now (valid, no Job that is not being
    deleted, its chain resolved), else None."""
    if any(not j["metadata"].get("deletionTimestamp") for j in jobs):
        return None  # a Job exists: its pods were checked before it was made
    result = validate_document({k: v for k, v in obj.items() if k != "status"})
    if not result.ok:
        return None
    ftj: FineTuneJob = result.obj  # type: ignore[assignment]
    if chains.references(ftj) and not _verdict(ftj, obj, chain_jobs).ready:
        return None
    return ftj


def _verdict(ftj: FineTuneJob, obj: Raw, chain_jobs: Mapping[str, Raw | None]) -> chains.Verdict:
    started = (obj.get("status") or {}).get("jobName") is not None
    return chains.resolve(ftj, chain_jobs, started=started)


def _references(
    ftj: FineTuneJob, obj: Raw, chain_jobs: Mapping[str, Raw | None]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    chain_uris = _verdict(ftj, obj, chain_jobs).chain.uris() if chains.references(ftj) else ()
    uses, claims = references(ftj, chain_uris)
    return tuple(dict.fromkeys(u.name for u in uses)), tuple(claims)


def _fit(ftj: FineTuneJob | None, obj: Raw) -> bool:
    """Whether the fit check may run now: a GPU run that may start, not yet estimated for this run."""
    if ftj is None or ftj.spec.resources.gpus_per_node < 1:
        return False
    estimate = (obj.get("status") or {}).get("estimate") or {}
    return bool(estimate.get("configHash") != run_id(ftj))


def _jobs_without_pods(
    obj: Raw, jobs: Sequence[Raw], pods: Mapping[str, Sequence[Raw]], now: dt.datetime
) -> list[str]:
    if (obj.get("spec") or {}).get("suspend"):
        return []
    preemptions = (obj.get("status") or {}).get("preemptions")
    found = []
    for job in jobs:
        uid = job["metadata"].get("uid")
        if (
            not uid
            or pods.get(uid)
            or (job.get("spec") or {}).get("suspend")
            or job["metadata"].get("deletionTimestamp")
        ):
            continue
        if any(condition_true(job, t) for t in FINISHED):  # type: ignore[arg-type]
            continue
        since = parse_time(failed_create_since(job, preemptions))
        if since is not None and (now - since).total_seconds() >= NO_PODS_LOOK_AFTER_SECONDS:
            found.append(uid)
    return found


__all__ = ["Reads", "finished_with_this_spec", "reads"]
