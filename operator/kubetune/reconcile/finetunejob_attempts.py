"""A FineTuneJob decision, its attempts: the static children (RBAC, ConfigMap, multi-node Service), the
trainer Job of each attempt, and what the current attempt's Job says (succeeded, failed: the next attempt
or the end, active: suspend or resume, then its pods in finetunejob_pods.py). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api.v1alpha1 import ChainResolution, FineTuneJob
from kubetune.render.common import RUN_GENERATION_ANNOTATION, RUN_ID_LABEL
from kubetune.render.finetunejob import (
    needs_service,
    render_configmap,
    render_job,
    render_rbac,
    render_service,
)

from .clock import fmt_time, parse_time
from .finetunejob_draft import FineTuneJobDraft
from .finetunejob_pods import observe_pods
from .finetunejob_readings import attempt_of, condition_true, failure_reason, labels_of

RECHECK_BEING_DELETED = 1.0

Raw = Mapping[str, Any]


def static_signature(obj: Raw, attempt: int, chain: ChainResolution | None = None) -> str:
    """Everything the RBAC, ConfigMap and Service are rendered from (besides the operator's settings)."""
    meta = obj["metadata"]
    labels = sorted((meta.get("labels") or {}).items())
    resolved = chain.model_dump_json() if chain is not None else None
    return repr((meta.get("uid"), meta.get("generation"), labels, attempt, resolved))


def apply_static(d: FineTuneJobDraft, ftj: FineTuneJob, attempt: int) -> bool:
    """RBAC, ConfigMap and (multi-node) Service of ATTEMPT; False (and a condition) when one was refused."""
    signature = static_signature(d.obj, attempt, d.chain)
    if signature == d.o.static_signature:
        return True  # applied from exactly this before: not even rendered (rendering YAML costs ms)
    desired = [
        *render_rbac(ftj),
        render_configmap(ftj, d.opts, d.chain),
        *([render_service(ftj, attempt)] if needs_service(ftj) else []),
    ]
    for obj in desired:
        refused = d.refusal(obj["kind"], obj["metadata"]["name"])
        if refused is not None:
            d.rejected(refused)
            return False
    for obj in desired:
        d.want(obj)
    d.out.static_signature = signature
    return True


def create_job(d: FineTuneJobDraft, ftj: FineTuneJob, attempt: int) -> bool:
    """The trainer Job of ATTEMPT; False when it cannot be created now (refused, or its name still taken)."""
    body = render_job(ftj, d.opts, attempt, chain=d.chain)
    jname = body["metadata"]["name"]
    refused = d.refusal("Job", jname)
    if refused is not None:
        being_deleted = any(
            j["metadata"]["name"] == jname and j["metadata"].get("deletionTimestamp") for j in d.o.jobs
        )
        if refused.code == 409 or being_deleted:
            # A Job of this name is still being deleted (its immutable template differs): wait.
            message = (
                f"waiting for the old Job {jname} to be deleted ({refused.message.strip()}); "
                "if it stays, remove its finalizers or delete it"
            )
            d.set("Running", False, "WaitingForDeletion", message)
            d.after(RECHECK_BEING_DELETED)
            d.grace("WaitingForDeletion", message)  # a conflict that persists stalls
            return False
        d.rejected(refused)
        return False
    d.want(body)
    d.out.new_job_attempt = attempt
    if d.st["startTime"] is None:
        d.st["startTime"] = fmt_time(d.now)
        d.out.first_job = attempt == 1
    d.st["attempts"] = attempt
    d.st["jobName"] = jname
    limit = ftj.spec.backoff_limit + 1
    d.event("Normal", "JobCreated", f"created trainer Job {jname} (attempt {attempt} of {limit})")
    observe_job(d, ftj, body, [])
    return True


def observe_job(d: FineTuneJobDraft, ftj: FineTuneJob, job: Raw, older: list[Raw]) -> None:
    """Status from the current attempt's Job and pods; next attempt, deadlines, suspend."""
    jname = job["metadata"]["name"]
    attempt = attempt_of(job)  # type: ignore[arg-type]
    limit = ftj.spec.backoff_limit + 1
    d.st["attempts"] = attempt
    d.st["jobName"] = jname
    rid = labels_of(job).get(RUN_ID_LABEL)  # type: ignore[arg-type]
    run_gen = (job["metadata"].get("annotations") or {}).get(RUN_GENERATION_ANNOTATION) or str(d.gen)
    for old in older:  # earlier failed attempts of this run
        if (old.get("status") or {}).get("active", 0) == 0 or condition_true(old, "Failed"):  # type: ignore[arg-type]
            d.delete_job(old)
    d.default("Failed", "NotFailed", "")
    d.default("Succeeded", "NotStarted", "the run has not finished")

    if condition_true(job, "Complete") or condition_true(job, "SuccessCriteriaMet"):  # type: ignore[arg-type]
        succeeded(d, job, rid, run_gen, attempt, limit)
        return
    if condition_true(job, "Failed") or condition_true(job, "FailureTarget"):  # type: ignore[arg-type]
        failed(d, ftj, job, attempt, limit)
        return
    if keep_suspend(d, ftj, job):
        return
    observe_pods(d, ftj, job, attempt, rid, run_gen)


def succeeded(d: FineTuneJobDraft, job: Raw, rid: str | None, run_gen: str, attempt: int, limit: int) -> None:
    """The Job completed: Succeeded, unless the result failed its evaluation gate (status.evaluation)."""
    done_at = (job.get("status") or {}).get("completionTime") or fmt_time(d.now)
    d.st["completionTime"] = d.st["completionTime"] or done_at
    gate = gate_failed(d, rid)
    if gate is not None:  # the run worked, its result is not good enough: no retry would change that
        d.fail("EvaluationGateFailed", gate)
        d.set("Succeeded", False, "EvaluationGateFailed", gate)
        d.default("Suspended", "NotSuspended", "")
        return
    unpublished = publish_error(d, rid)
    if unpublished is not None:  # trained, but the registry refused the result: say what to change
        reason, message = unpublished
        if not (d.is_true("Failed") and d.reason("Failed") == reason):
            d.event("Warning", reason, message)
        d.set("Succeeded", False, reason, f"run {rid} trained in attempt {attempt}, but: {message}")
        d.fail(reason, message)
        d.default("Suspended", "NotSuspended", "")
        return
    passed = gate_passed(d, rid)
    if passed is not None and not d.is_true("Succeeded"):
        d.event("Normal", "EvaluationPassed", passed)
    d.set(
        "Succeeded",
        True,
        "Completed",
        f"run {rid} (generation {run_gen}) finished in attempt {attempt} of {limit}",
    )
    d.set("Running", False, "Completed", "the run finished")
    d.default("Suspended", "NotSuspended", "")
    start = parse_time(d.st["startTime"])
    end = parse_time(d.st["completionTime"])
    if start and end:
        d.out.run_seconds = max(0.0, (end - start).total_seconds())
    d.ttl_timer()


def _evaluation(d: FineTuneJobDraft, rid: str | None) -> Mapping[str, Any] | None:
    """The trainer's verdict on this run's result (status.evaluation), when the spec asks for one."""
    evaluation = (d.obj.get("status") or {}).get("evaluation") or {}
    if not d.spec.get("evaluation") or evaluation.get("configHash") != rid:
        return None
    return evaluation


def gate_failed(d: FineTuneJobDraft, rid: str | None) -> str | None:
    """The message when this run's result failed its evaluation gate."""
    evaluation = _evaluation(d, rid)
    if evaluation is None or evaluation.get("passed") is not False:
        return None
    kept = ((d.obj.get("status") or {}).get("result") or {}).get("uri")
    where = f"; the result is kept at {kept}, not promoted" if kept else "; the result is kept, not promoted"
    return f"the result failed its evaluation gate: {evaluation.get('message') or 'see status.evaluation'}{where}"


def gate_passed(d: FineTuneJobDraft, rid: str | None) -> str | None:
    """The trainer's message when this run's result passed its gate (and is promoted)."""
    evaluation = _evaluation(d, rid)
    if evaluation is None or evaluation.get("passed") is not True:
        return None
    return f"the result passed its evaluation gate and is promoted: {evaluation.get('message') or ''}".rstrip(
        ": "
    )


def publish_error(d: FineTuneJobDraft, rid: str | None) -> tuple[str, str] | None:
    """(reason, message) when this run's trainer reported that its result did not reach its oci:// output or
    model registry (status.result.publishError; the result stays on its checkpoint storage)."""
    result = (d.obj.get("status") or {}).get("result") or {}
    error = result.get("publishError") or {}
    if not error or (rid and result.get("configHash") not in (None, rid)):
        return None
    return str(error.get("reason") or "PublishFailed"), str(error.get("message") or "")


def failed(d: FineTuneJobDraft, ftj: FineTuneJob, job: Raw, attempt: int, limit: int) -> None:
    """The attempt failed: the next one (resuming from the latest checkpoint), or the run failed."""
    why = failure_reason(job, d.pods(job))  # type: ignore[arg-type]
    if attempt < limit:
        nxt = attempt + 1
        message = (
            f"attempt {attempt} of {limit} failed: {why}; "
            f"starting attempt {nxt} (resumes from the latest checkpoint)"
        )
        # The trainer's stall watchdog ends an attempt with "Stalled: ..." (exit 75): say so.
        d.event("Warning", "AttemptStalled" if "Stalled:" in why else "AttemptFailed", message)
        d.set("Running", False, "Restarting", message)
        if apply_static(d, ftj, nxt) and create_job(d, ftj, nxt):
            d.delete_job(job)  # its pods are done; the next attempt resumes from the checkpoint
        return
    message = f"all {limit} attempts failed; last: {why}" if limit > 1 else f"the run failed: {why}"
    d.fail("BackoffLimitExceeded", message)


def keep_suspend(d: FineTuneJobDraft, ftj: FineTuneJob, job: Raw) -> bool:
    """Keep Job.spec.suspend in line with the FineTuneJob; True when the run is (to be) suspended."""
    jname = job["metadata"]["name"]
    job_suspended = bool((job.get("spec") or {}).get("suspend"))
    # Kueue admits (unsuspends) queued Jobs: with a queue the operator only ever suspends.
    want = (ftj.spec.suspend or job_suspended) if ftj.spec.queue_name else ftj.spec.suspend
    if want != job_suspended:
        refused = d.refusal("Job", jname)
        if refused is not None:
            d.rejected(refused)
            return True
        d.out.patch.append(("Job", jname, {"spec": {"suspend": want}}))
        job = {**job, "spec": {**job.get("spec", {}), "suspend": want}}
        verb = "suspended" if want else "resumed"
        d.event("Normal", "Suspended" if want else "Resumed", f"{verb} trainer Job {jname}")
    d.suspended_condition(ftj, job)
    if want:
        d.set("Running", False, "Suspended", "the run is suspended")
        return True
    return False


__all__ = ["RECHECK_BEING_DELETED", "apply_static", "create_job", "observe_job", "static_signature"]
