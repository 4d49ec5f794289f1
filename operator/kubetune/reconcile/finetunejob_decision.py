"""What a FineTuneJob needs, decided once and without I/O: ``decide(observed, opts, now) -> Decision``.

Inputs (``Observed``, finetunejob_draft.py): the FineTuneJob as read, every trainer Job it owns and their
pods, the run id the live ConfigMap carries, the FineTuneJobs its chain refers to, and what the shell read
because this decision may need it (the Secrets and PVCs the pods will need when a Job may be created, the
FailedCreate Events of a Job that made no pods: finetunejob_observe.py says when); the writes the API server
refused in this reconcile. The clock is ``now``.

Outputs (``Decision``): the children to apply (the desired objects; the write path skips those live already
with the same content) and to delete, Job patches (suspend), the operator's status fields with their
conditions, the Events, when to look again and whether the queue should back off (something the user
must change).

The status a decision returns assumes its writes succeed; when one is refused the shell decides once more
with the refusal in ``Observed.refusals``, which puts it into the conditions instead.

The decision in pieces: this module (the flow: validation, chains, a new run, the end of a run, TTL, and the
status: phase, kstatus, Events), finetunejob_attempts.py (children and Jobs of each attempt),
finetunejob_pods.py (pods, preemptions, deadlines), finetunejob_draft.py (the types and shared steps).

Conditions: Validated, Running, Succeeded, Failed, Suspended, WaitingForModel (what happened), plus Ready,
Reconciling and Stalled for kstatus (see ``conditions.py`` and docs/operations.md for the mapping).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetune.api.fit import REASON_DOES_NOT_FIT, estimate_status
from kubetune.api.v1alpha1 import FineTuneJob, pvc_claims, validate_document
from kubetune.render.common import RUN_ID_LABEL
from kubetune.render.finetunejob import RenderOptions, SecretUse, run_id, secret_uses
from kubetune.render.tracking import tracking_secrets

from . import chains
from .conditions import KStatus, ordered
from .finetunejob_attempts import RECHECK_BEING_DELETED, apply_static, create_job, observe_job
from .finetunejob_draft import (
    CONDITION_TYPES,
    GRACE_REASONS,
    STATUS_FIELDS,
    Decision,
    FineTuneJobDraft,
    Observed,
)
from .finetunejob_readings import attempt_of, condition_true, labels_of, reference_problems

# Reasons that ask the user to do something: Warning events, retry with backoff.
PROBLEM_REASONS = {
    "InvalidSpec", "SecretNotFound", "SecretKeyMissing", "PVCNotFound", "PVCLost", "ImagePullFailed",
    "ContainerConfigError", "Unschedulable", "ChildConflict", "ChildRejected", "AttemptFailed", "PodsRefused",
    "BackoffLimitExceeded", "DeadlineExceeded", "PendingDeadlineExceeded", *chains.REFERENCE_REASONS,
    REASON_DOES_NOT_FIT, "EvaluationGateFailed",
}  # fmt: skip


def decide(observed: Observed, opts: RenderOptions, now: dt.datetime) -> Decision:
    """The decision for OBSERVED at NOW (pure: no I/O, no clock of its own)."""
    d = FineTuneJobDraft(observed, opts, now)
    if ttl_expired(d):
        d.out.events = d.events
        return d.out
    converge(d)
    finish_status(d)
    d.out.events = d.events
    d.out.requeue_after = d.requeue_after
    return d.out


# ------------------------------------------------------------------------------------------------ the flow


def converge(d: FineTuneJobDraft) -> None:
    ftj = validated(d)
    if ftj is None:
        return  # nothing to retry: an edit of the spec triggers the next decision
    resolve_chain(d, ftj)
    rid = run_id(ftj)

    jobs = d.jobs()
    stale = [j for j in jobs if labels_of(j).get(RUN_ID_LABEL) != rid]  # type: ignore[arg-type]
    current = [j for j in jobs if labels_of(j).get(RUN_ID_LABEL) == rid]  # type: ignore[arg-type]
    cm_run = d.o.configmap_run
    if stale or (cm_run is not None and cm_run != rid):
        start_new_run(d, rid, stale)
        if stale:
            d.after(RECHECK_BEING_DELETED)  # the old Job's name is reused: wait until it is gone
            return

    if terminal(d, ftj):
        apply_static(d, ftj, max(d.st["attempts"], 1))
        d.ttl_timer()
        return

    cur = max(current, key=attempt_of) if current else None  # type: ignore[arg-type]
    attempt = attempt_of(cur) if cur else max(d.st["attempts"], 1)  # type: ignore[arg-type]
    if not apply_static(d, ftj, attempt):
        return
    if cur is not None:
        observe_job(d, ftj, cur, [j for j in current if j is not cur])
        return
    if held_by_chain(d, ftj) or held_by_references(d, ftj):
        return
    if d.st["jobName"] is None and does_not_fit(d, ftj, rid):
        return
    create_job(d, ftj, attempt)


def validated(d: FineTuneJobDraft) -> FineTuneJob | None:
    """The FineTuneJob when its spec is valid; else the conditions say why (and its Jobs go)."""
    doc = {k: v for k, v in d.obj.items() if k != "status"}
    result = validate_document(doc)
    if result.ok:
        d.set("Validated", True, "Valid", "the spec is valid")
        return result.obj  # type: ignore[return-value]
    message = "; ".join(
        f"spec.{p}" if p.path and not p.path.startswith(("spec", "metadata")) else str(p)
        for p in result.problems
    )
    d.set("Validated", False, "InvalidSpec", message)
    d.set("Failed", True, "InvalidSpec", f"the spec is invalid, fix it: {message}")
    d.set("Running", False, "InvalidSpec", "not started: the spec is invalid")
    d.default("Succeeded", "NotStarted", "the run has not finished")
    d.default("Suspended", "NotSuspended", "")
    for job in d.jobs():
        d.delete_job(job)
    return None


def start_new_run(d: FineTuneJobDraft, rid: str, stale: list[Any]) -> None:
    message = f"the spec changed (generation {d.gen}): starting run {rid} from scratch"
    d.st.update(
        {"attempts": 0, "startTime": None, "completionTime": None, "jobName": None, "preemptions": None}
    )
    for type_ in ("Running", "Succeeded", "Failed"):
        d.set(type_, False, "NewRun", message)
    d.event("Normal", "NewRun", message)
    # Persist the reset before anything of the old run disappears (a crash in between repeats it).
    d.out.status_first = True
    for job in stale:
        d.delete_job(job, propagation="Foreground")


def terminal(d: FineTuneJobDraft, ftj: FineTuneJob) -> bool:
    """The run is over (Succeeded, or Failed for a reason that a spec change alone undoes)."""
    if d.is_true("Succeeded"):
        return True
    if not d.is_true("Failed"):
        return False
    reason = d.reason("Failed")
    if reason in chains.REFERENCE_REASONS:
        return False  # the chain is decided again every time (resolve_chain, held_by_chain)
    if reason == "InvalidSpec":
        d.set("Failed", False, "Valid", "the spec is valid again")
        return False
    if reason == "BackoffLimitExceeded" and d.st["attempts"] <= ftj.spec.backoff_limit:
        # backoffLimit was raised after the run failed: continue with the next attempt.
        d.set(
            "Failed",
            False,
            "BackoffLimitRaised",
            f"backoffLimit raised to {ftj.spec.backoff_limit}: continuing",
        )
        d.st["completionTime"] = None
        return False
    return True


def ttl_expired(d: FineTuneJobDraft) -> bool:
    ttl = d.spec.get("ttlSecondsAfterFinished")
    done = condition_true(d.obj, "Succeeded") or condition_true(d.obj, "Failed")  # type: ignore[arg-type]
    elapsed = d.since(d.st["completionTime"])
    if ttl is None or not done or elapsed is None or elapsed < ttl:
        return False
    d.event("Normal", "Deleted", f"ttlSecondsAfterFinished ({ttl}s) passed: deleting the FineTuneJob")
    d.out.delete_self = True
    return True


# ------------------------------------------------------------------------------------------------ before a Job


def resolve_chain(d: FineTuneJobDraft, ftj: FineTuneJob) -> None:
    """Resolve the referenced FineTuneJobs. A broken reference that is fixed clears its Failed: the job is
    then ready, or waits again (WaitingForModel)."""
    if not chains.references(ftj):
        return
    started = d.st["jobName"] is not None  # a started run keeps the results it began with
    verdict = d.chain_verdict = chains.resolve(ftj, d.o.chain_jobs, started=started)
    if verdict.state != "failed" and d.reason("Failed") in chains.REFERENCE_REASONS and d.is_true("Failed"):
        d.set("Failed", False, "ModelReady" if verdict.ready else verdict.reason, verdict.message)
    if verdict.ready:
        d.chain = verdict.chain
        if chains.WAITING_CONDITION in d.conds:
            d.set(chains.WAITING_CONDITION, False, "ModelReady", verdict.message)


def held_by_chain(d: FineTuneJobDraft, ftj: FineTuneJob) -> bool:
    """No trainer Job while a referenced job has not Succeeded (WaitingForModel) or the chain is broken."""
    verdict = d.chain_verdict
    if verdict is None or verdict.ready:
        return False
    for type_, status, reason, message in chains.conditions(verdict):
        d.set(type_, status, reason, message)
    d.suspended_condition(ftj, None)
    d.not_started_defaults()
    d.out.problem = verdict.state == "failed"  # retried with backoff; a fixed chain also wakes it
    return True


def references(ftj: FineTuneJob, chain_uris: tuple[str, ...] = ()) -> tuple[list[SecretUse], list[str]]:
    """The Secrets (with the keys they must have) and PersistentVolumeClaims the pods will need, which the
    CRD cannot check. The trackers' Secrets too: a missing one would otherwise only show as a pod stuck in
    CreateContainerConfigError."""
    tracked = [SecretUse(path, name, keys) for path, name, keys in tracking_secrets(ftj)]
    return [*secret_uses(ftj), *tracked], pvc_claims(ftj, chain_uris)


def held_by_references(d: FineTuneJobDraft, ftj: FineTuneJob) -> bool:
    """No trainer Job while a Secret or PVC its pods need is missing or unusable."""
    uses, claims = references(ftj, d.chain.uris() if d.chain else ())
    if not uses and not claims:
        return False
    if d.o.secrets is None or d.o.pvcs is None:
        raise ValueError(
            "the shell did not read the Secrets and PVCs a new Job needs (finetunejob_observe.reads)"
        )
    secrets = {u.name: d.o.secrets.get(u.name) for u in uses}
    pvcs = {c: d.o.pvcs.get(c) for c in claims}
    problems = reference_problems(uses, claims, secrets, pvcs, d.ns)  # type: ignore[arg-type]
    if not problems:
        return False
    reason, message = problems[0][0], "; ".join(m for _, m in problems)
    d.set("Running", False, reason, message)
    d.suspended_condition(ftj, None)
    d.not_started_defaults()
    d.out.problem = True
    d.grace(reason, message)
    clock_start = d.st["startTime"] or d.meta.get("creationTimestamp")
    d.pending_deadline(ftj, None, clock_start, message)
    return True


def does_not_fit(d: FineTuneJobDraft, ftj: FineTuneJob, rid: str) -> bool:
    """The fit check before a run's first Job: status.estimate, and no Job when it cannot fit (Validated
    False, DoesNotFit, with the numbers and what would fit) unless resources.skipFitCheck."""
    if ftj.spec.resources.gpus_per_node < 1:
        d.st["estimate"] = None  # CPU runs are not checked
        return False
    estimate = d.st["estimate"] or {}
    if estimate.get("configHash") == rid:  # estimated for this run before
        refuse = estimate.get("fits") is False and not ftj.spec.resources.skip_fit_check
    else:
        if d.o.fit is None:
            raise ValueError(
                "the shell did not read the fit check's inputs a new run needs (finetunejob_observe)"
            )
        config, why, gpus = d.o.fit
        estimate, refuse = estimate_status(ftj.spec, config, why, gpus, rid)
        d.st["estimate"] = estimate
    if not refuse:
        return False
    message = f"does not fit: {estimate.get('message')} (or set spec.resources.skipFitCheck)"
    d.set("Validated", False, REASON_DOES_NOT_FIT, message)
    d.set("Running", False, REASON_DOES_NOT_FIT, f"not started: the run {message}")
    d.suspended_condition(ftj, None)
    d.not_started_defaults()
    d.out.problem = True
    d.stall = (REASON_DOES_NOT_FIT, message)
    return True


# ------------------------------------------------------------------------------------------------ status


def phase_of(d: FineTuneJobDraft) -> str:
    if d.is_true("Failed"):
        return "Failed"
    if d.is_true("Succeeded"):
        return "Succeeded"
    if d.is_true("Suspended") and d.reason("Suspended") == "Suspended":
        return "Suspended"
    if d.is_true("Running"):
        return "Running"
    return "Pending"


def kstatus_of(d: FineTuneJobDraft, phase: str) -> KStatus:
    running = d.conds["Running"]
    if phase == "Succeeded":
        c = d.conds["Succeeded"]
        return KStatus(True, "Succeeded", c.get("message", ""), idle_reason="Succeeded")
    if phase == "Failed":
        c = d.conds["Failed"]
        reason, message = c.get("reason") or "Failed", c.get("message", "")
        return KStatus(False, reason, message, stalled=(reason, message))
    if d.stall is not None:
        reason, message = d.stall
        return KStatus(False, reason, message, stalled=d.stall)
    if phase == "Suspended":
        message = d.conds["Suspended"].get("message", "")
        return KStatus(False, "Suspended", message, idle_reason="Suspended")
    reason, message = running.get("reason") or phase, running.get("message", "")
    if d.reason("Suspended") == "WaitingForAdmission" and d.is_true("Suspended"):
        reason, message = "WaitingForAdmission", d.conds["Suspended"].get("message", "")
    elif reason == "Pending" and d.st["attempts"] > 1:
        reason = "Retrying"  # a later attempt of the run, not running yet
    if phase == "Running":
        return KStatus(False, "Running", message, reconciling=("Running", message))
    return KStatus(False, reason, message, reconciling=(reason, message))


def finish_status(d: FineTuneJobDraft) -> None:
    for type_, reason in (
        ("Running", "NotStarted"),
        ("Succeeded", "NotStarted"),
        ("Failed", "NotFailed"),
        ("Suspended", "NotSuspended"),
    ):
        d.default(type_, reason, "")
    d.mark_observed(*d.conds)  # every condition was evaluated against this generation
    phase = phase_of(d)
    d.finish_kstatus(kstatus_of(d, phase))
    d.out.status = {
        "phase": phase,
        "observedGeneration": d.gen,
        "conditions": ordered(d.conds, CONDITION_TYPES),
        **d.st,
    }
    transition_events(d)


def transition_events(d: FineTuneJobDraft) -> None:
    """An Event per condition that changed status or reason in a way the user wants to hear of."""
    for type_ in CONDITION_TYPES:
        new, old = d.conds.get(type_), d.old_conds.get(type_)
        if not new or (old and (old["status"], old.get("reason")) == (new["status"], new.get("reason"))):
            continue
        reason = new.get("reason") or type_
        if new["status"] == "True" or reason in PROBLEM_REASONS or (type_ == "Suspended" and old):
            if reason == "NewRun" or (type_ == "Validated" and new["status"] == "True" and not old):
                continue
            warn = reason in PROBLEM_REASONS or (type_ == "Failed" and new["status"] == "True")
            message = new.get("message") or f"{type_} is {new['status']}"
            d.event("Warning" if warn else "Normal", reason, message)
    stalled, was = d.conds.get("Stalled") or {}, d.old_conds.get("Stalled") or {}
    flipped = stalled.get("status") == "True" and was.get("status") != "True"
    # A problem that outlived its grace: its own Event came when it was first seen; say it stalled.
    if flipped and stalled.get("reason") in GRACE_REASONS:
        d.event("Warning", "Stalled", stalled.get("message") or "stalled")


__all__ = ["PROBLEM_REASONS", "STATUS_FIELDS", "Decision", "Observed", "decide", "references"]
