"""A FineTuneJob decision, the pods of an active trainer Job: running or why not (pending, unschedulable,
image pulls, pods the API server refused to create), preemptions, and the deadlines that count while they
run or wait. Pure; called by finetunejob_attempts.py with the draft (finetunejob_draft.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Set
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob

from .clock import fmt_time, parse_time
from .finetunejob_draft import FineTuneJobDraft
from .finetunejob_readings import Disruption, disruptions, latest_failed_create, pod_problem, refusal_advice

# A Job without pods this long after it was created (or its run was preempted): look at the Job's Events
# for the Job controller's FailedCreate (a ResourceQuota, PodSecurity, an admission webhook refused them).
NO_PODS_LOOK_AFTER_SECONDS = 5.0

Raw = Mapping[str, Any]


def observe_pods(
    d: FineTuneJobDraft, ftj: FineTuneJob, job: Raw, attempt: int, rid: str | None, run_gen: str
) -> None:
    """Running, or why the pods of the active JOB (of ATTEMPT) do not run; then the deadlines."""
    limit = ftj.spec.backoff_limit + 1
    every_pod = d.pods(job)
    disrupted = note_disruptions(d, every_pod)
    # A disrupted pod is on its way out even before its deletion (the Eviction API marks it first).
    pods = [
        p
        for p in every_pod
        if not p["metadata"].get("deletionTimestamp") and p["metadata"]["name"] not in disrupted
    ]
    nodes = ftj.spec.resources.nodes
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    problem_reason, pod_message = pod_problem(pods)  # type: ignore[arg-type]
    preempted = preempted_in(d, job)
    if len(running) >= nodes:
        if preempted is not None:
            resumed(d, preempted, f"{len(running)}/{nodes} trainer pods running again")
        else:
            d.set(
                "Running",
                True,
                "Running",
                f"{len(running)}/{nodes} trainer pods running "
                f"(run {rid}, generation {run_gen}, attempt {attempt} of {limit})",
            )
    else:
        if problem_reason is None and not every_pod:
            problem_reason, pod_message = pods_refused(d, job, preempted)
        if problem_reason is None and preempted is not None:
            problem_reason = "Preempted"
            pod_message = (
                f"trainer pod {preempted['lastPod']} was preempted ({preempted['lastReason']}): waiting "
                f"for its replacement, {len(running)}/{nodes} trainer pods running (no attempt used)"
            )
        d.set(
            "Running",
            False,
            problem_reason or "Pending",
            pod_message or f"{len(running)}/{nodes} trainer pods running (attempt {attempt} of {limit})",
        )
        if problem_reason in ("ImagePullFailed", "ContainerConfigError", "PodsRefused"):
            d.out.problem = True
            d.grace(problem_reason, pod_message or "")
        suspended = d.conds.get("Suspended") or {}
        starts = [
            d.st["startTime"],
            job["metadata"].get("creationTimestamp"),
            suspended.get("lastTransitionTime") if suspended.get("status") == "False" else None,
            # A preempted run waits for its replacement pod from the preemption on.
            preempted.get("lastTime") if preempted else None,
        ]
        clock_start = max(
            (s for s in starts if parse_time(s)), key=lambda s: parse_time(s) or d.now, default=None
        )
        if d.pending_deadline(ftj, job, clock_start, pod_message or "the trainer pods are pending"):
            return
    ads = ftj.spec.active_deadline_seconds
    elapsed = d.since(d.st["startTime"])
    if ads is not None and elapsed is not None:
        if elapsed >= ads:
            if not d.delete_job(job):
                return  # the pods keep running: not Failed until the Job is gone
            d.fail("DeadlineExceeded", f"the run was active longer than activeDeadlineSeconds ({ads}s)")
            return
        d.after(ads - elapsed)


def failed_create_since(job: Raw, preemptions: Mapping[str, Any] | None) -> str | None:
    """From when a Job without pods has been waiting for them: its creation, or a later preemption."""
    stamps = [t for t in (job["metadata"].get("creationTimestamp"), (preemptions or {}).get("lastTime")) if t]
    return max(stamps, key=lambda t: parse_time(t) or dt.datetime.min.replace(tzinfo=dt.UTC), default=None)


def pods_refused(
    d: FineTuneJobDraft, job: Raw, preempted: Mapping[str, Any] | None
) -> tuple[str | None, str | None]:
    """A Job without any pod: did the API server refuse them (the Job controller's FailedCreate Event,
    e.g. a ResourceQuota on GPUs, PodSecurity)? Looked at only once the Job had time to make them (the
    decision looks again then: a refused pod changes nothing the operator watches); the Events were read
    before the decision (finetunejob_observe.reads asks for them on the same condition)."""
    uid = job["metadata"].get("uid")
    if uid is None:
        return None, None  # a Job this decision creates: its events wake the next decision
    since = failed_create_since(job, preempted)
    waited = d.since(since)
    if waited is None or waited < NO_PODS_LOOK_AFTER_SECONDS:
        d.after(NO_PODS_LOOK_AFTER_SECONDS - (waited or 0.0))
        return None, None
    refused = latest_failed_create(list(d.o.job_events.get(uid, [])), since=parse_time(since))  # type: ignore[arg-type]
    if refused is None:
        return None, None
    return (
        "PodsRefused",
        f"the Job controller cannot create the trainer pods of Job {job['metadata']['name']}: {refused}; "
        f"{refusal_advice('Pod', 403, refused)}",
    )


def note_disruptions(d: FineTuneJobDraft, pods: list[Raw]) -> Set[str]:
    """One Event ``Preempted`` per disrupted trainer pod, and ``status.preemptions``. The status keeps
    the names of the disrupted pods already reported while they exist, so a pod seen in several
    reconciles (it is Terminating for its grace period) or after an operator restart is reported once.
    Returns the names of the disrupted pods."""
    found = disruptions(pods)  # type: ignore[arg-type]
    before = d.st["preemptions"] or {}
    reported = set(before.get("reportedPods") or [])
    new = [x for x in found if x.pod not in reported]
    if not new and not before:
        return set()
    for x in new:
        d.event("Normal", "Preempted", preempted_message(x))
    record: dict[str, Any] = {
        "count": int(before.get("count") or 0),
        "lastPod": before.get("lastPod"),
        "lastReason": before.get("lastReason"),
        "lastTime": before.get("lastTime"),
    }
    if new:
        last = new[-1]
        record.update(
            count=record["count"] + len(new),
            lastPod=last.pod,
            lastReason=last.reason,
            lastTime=last.time or fmt_time(d.now),
        )
    d.st["preemptions"] = {**record, "reportedPods": sorted(x.pod for x in found)}
    return {x.pod for x in found}


def preempted_message(x: Disruption) -> str:
    why = f"{x.reason}: {x.message}" if x.message else x.reason
    return (
        f"trainer pod {x.pod} was preempted ({why}); the Job replaces it without using an attempt "
        "and the run resumes from its latest checkpoint"
    )


def preempted_in(d: FineTuneJobDraft, job: Raw) -> dict[str, Any] | None:
    """status.preemptions when a pod of JOB (the current attempt) was preempted, else None."""
    record = d.st["preemptions"] or {}
    at, created = parse_time(record.get("lastTime")), parse_time(job["metadata"].get("creationTimestamp"))
    if not record.get("count") or at is None or created is None or at < created:
        return None  # none, or before this Job existed (an earlier attempt), or a Job being created
    return dict(record)


def resumed(d: FineTuneJobDraft, record: Mapping[str, Any], running: str) -> None:
    """Running=True, reason Resumed: the run continues after a preemption. The message says from which
    checkpoint; it is written when the run resumes and kept while it runs on (the trainer's later
    checkpoints are not where it resumed from)."""
    old = d.conds.get("Running") or {}
    new_preemption = any(e.reason == "Preempted" for e in d.events)
    if old.get("status") == "True" and old.get("reason") == "Resumed" and not new_preemption:
        d.set("Running", True, "Resumed", old.get("message") or "")
        return
    checkpoint = (d.obj.get("status") or {}).get("checkpoint") or {}
    if checkpoint.get("uri"):
        step = f" (step {checkpoint['step']})" if checkpoint.get("step") is not None else ""
        source = f"resumed from checkpoint {checkpoint['uri']}{step}"
    else:
        source = "no checkpoint had been saved yet: it started again from the beginning"
    count = record["count"]
    times = "once" if count == 1 else f"{count} times"
    d.set(
        "Running",
        True,
        "Resumed",
        f"{running}: the run was preempted {times} (last: pod {record['lastPod']}, "
        f"{record['lastReason']}) and {source}",
    )


__all__ = ["NO_PODS_LOOK_AFTER_SECONDS", "failed_create_since", "observe_pods"]
