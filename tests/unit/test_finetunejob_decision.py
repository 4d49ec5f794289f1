"""The FineTuneJob decision, transition by transition, without a cluster.

Each test builds what the shell would have read (the FineTuneJob, its Jobs and pods, Secrets, PVCs,
refusals), answers the reads the decision asks for from that, and asserts on the decision's outputs: the
children to apply and delete, the status with its conditions, the Events, and when to look again.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from kubetune.api.fit import GpuMemory
from kubetune.reconcile.clock import fmt_time
from kubetune.reconcile.conditions import KSTATUS_TYPES
from kubetune.reconcile.finetunejob_decision import Decision, Observed, decide
from kubetune.reconcile.finetunejob_draft import STALL_GRACE_SECONDS, STATUS_FIELDS
from kubetune.reconcile.finetunejob_observe import finished_with_this_spec
from kubetune.reconcile.refusals import Refusal
from kubetune.reconcile.status import status_patch
from kubetune.render.finetunejob import RenderOptions
from tests.unit.helpers import finetunejob

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
OPTS = RenderOptions(trainer_image="trainer:test")
NS = "team"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def ftj(name: str = "t", generation: int = 1, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob as the API server returns it (namespace, uid, generation, creationTimestamp)."""
    doc = finetunejob(name, **{"output": {"uri": "s3://bucket/out"}, **spec})
    doc["metadata"].update(
        namespace=NS, uid=f"uid-{name}", generation=generation, creationTimestamp=fmt_time(T0)
    )
    return doc


def decide_all(
    obj: dict[str, Any],
    now: dt.datetime,
    jobs: list[dict[str, Any]] = (),  # type: ignore[assignment]
    pods: dict[str, list[dict[str, Any]]] | None = None,
    secrets: dict[str, dict[str, Any]] | None = None,
    pvcs: dict[str, dict[str, Any]] | None = None,
    configmap_run: str | None = None,
    refusals: list[Refusal] = (),  # type: ignore[assignment]
    static_signature: str | None = None,
    job_events: dict[str, list[dict[str, Any]]] | None = None,
    fit: tuple[dict[str, Any] | None, str | None, GpuMemory] | None = None,
) -> Decision:
    """Decide like the shell: everything the decision may read, from the given world (FIT: the fit check's
    config.json and GPU memory; by default the config is unknown, so every run may start)."""
    observed = Observed(
        obj=copy.deepcopy(obj),
        jobs=tuple(jobs),
        pods=pods or {},
        secrets=secrets or {},
        pvcs=pvcs or {},
        configmap_run=configmap_run,
        refusals=tuple(refusals),
        static_signature=static_signature,
        job_events=job_events or {},
        fit=fit or (None, "not read in this test", GpuMemory()),
    )
    return decide(observed, OPTS, now)


def with_status(obj: dict[str, Any], d: Decision) -> dict[str, Any]:
    """OBJ as it is after the shell wrote D's status."""
    out = copy.deepcopy(obj)
    out["status"] = {**(out.get("status") or {}), **{k: v for k, v in d.status.items() if v is not None}}
    for k in STATUS_FIELDS:
        if d.status.get(k) is None:
            out["status"].pop(k, None)
    return out


def cond(d: Decision, type_: str) -> dict[str, Any]:
    return next(c for c in d.status["conditions"] if c["type"] == type_)


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus' rules for a custom resource (sigs.k8s.io/cli-utils v0.37 pkg/kstatus/status: Compute =
    checkGenericProperties, then checkReadyCondition, then Current), on the object as written: what Flux
    computes. (The real library checks real objects in the gitops tests; this keeps the unit tests fast.)"""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != obj["metadata"]["generation"]:
        return "InProgress"
    for c in status.get("conditions") or []:
        if c["type"] == "Reconciling" and c["status"] == "True":
            return "InProgress"
        if c["type"] == "Stalled" and c["status"] == "True":
            return "Failed"
    for c in status.get("conditions") or []:
        if c["type"] == "Ready":
            return "Current" if c["status"] == "True" else "InProgress"
    return "Current"


def created_job(d: Decision, *, uid: str = "job-1", at_: dt.datetime = T0, **status: Any) -> dict[str, Any]:
    """The trainer Job of D's apply list as the API server returns it, with STATUS."""
    body = copy.deepcopy(next(o for o in d.apply if o["kind"] == "Job"))
    body["metadata"].update(uid=uid, creationTimestamp=fmt_time(at_))
    body["status"] = status
    return body


def job_cond(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message}


def pod(name: str, phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase, **status}}


def started(obj: dict[str, Any], now: dt.datetime = T0) -> tuple[dict[str, Any], dict[str, Any], Decision]:
    """The FineTuneJob after its first reconcile created the Job: (ftj, job, first decision)."""
    d = decide_all(obj, now)
    return with_status(obj, d), created_job(d, at_=now), d


def events(d: Decision) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in d.events]


def assert_kstatus_consistent(d: Decision) -> None:
    types = [c["type"] for c in d.status["conditions"]]
    assert set(KSTATUS_TYPES) <= set(types)
    assert not (cond(d, "Reconciling")["status"] == "True" and cond(d, "Stalled")["status"] == "True")
    assert all(c["observedGeneration"] == d.status["observedGeneration"] for c in d.status["conditions"])
    assert all(c["reason"] for c in d.status["conditions"])


# ------------------------------------------------------------------------------------------------


def test_first_reconcile_creates_children_and_the_job():
    d = decide_all(ftj(), T0)
    kinds = [o["kind"] for o in d.apply]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]  # one node: no Service
    job = d.apply[-1]
    assert job["metadata"]["name"] == "t-trainer" and d.new_job_attempt == 1 and d.first_job
    assert d.status["phase"] == "Pending" and d.status["attempts"] == 1 and d.status["jobName"] == "t-trainer"
    assert d.status["startTime"] == fmt_time(T0) and d.status["observedGeneration"] == 1
    assert cond(d, "Validated")["status"] == "True"
    assert cond(d, "Reconciling")["status"] == "True" and cond(d, "Reconciling")["reason"] == "Pending"
    assert cond(d, "Ready")["status"] == "False" and cond(d, "Stalled")["status"] == "False"
    assert events(d) == [("Normal", "JobCreated")]
    assert not d.problem and not d.delete
    assert_kstatus_consistent(d)
    assert kstatus(with_status(ftj(), d)) == "InProgress"


def test_only_multi_node_runs_get_the_headless_service():
    # The pods of a multi-node run find pod 0 (the rendezvous) by its name under the headless Service.
    two = decide_all(ftj(resources={"nodes": 2, "gpusPerNode": 1}), T0)
    service = next(o for o in two.apply if o["kind"] == "Service")
    assert service["metadata"]["name"] == "t-trainer" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "t-trainer"}
    assert [o["kind"] for o in two.apply][-2:] == ["Service", "Job"]
    assert not [o for o in decide_all(ftj(), T0).apply if o["kind"] == "Service"]


def test_invalid_spec_fails_stalls_and_deletes_jobs():
    obj, job, _ = started(ftj())
    obj["spec"]["training"] = {"evalSplit": "test"}  # an unknown field: the CRD would prune it, the rules not
    obj["metadata"]["generation"] = 2
    d = decide_all(obj, at(5), jobs=[job])
    assert not d.apply
    assert [(x.kind, x.name) for x in d.delete] == [("Job", "t-trainer")]
    assert d.status["phase"] == "Failed"
    assert (
        cond(d, "Validated")["reason"] == "InvalidSpec"
        and "spec.training.evalSplit" in cond(d, "Validated")["message"]
    )
    assert cond(d, "Stalled")["status"] == "True" and cond(d, "Stalled")["reason"] == "InvalidSpec"
    assert cond(d, "Reconciling")["status"] == "False" and cond(d, "Ready")["status"] == "False"
    assert ("Warning", "InvalidSpec") in events(d)
    assert kstatus(with_status(obj, d)) == "Failed"
    assert_kstatus_consistent(d)
    # fixed: validated again, a new attempt starts
    fixed = with_status(obj, d)
    fixed["spec"]["training"] = {"maxSteps": 10}
    fixed["metadata"]["generation"] = 3
    d2 = decide_all(fixed, at(10))
    assert d2.status["phase"] == "Pending" and d2.new_job_attempt == 1
    assert cond(d2, "Stalled")["status"] == "False" and cond(d2, "Failed")["status"] == "False"


def test_waiting_for_kueue_admission():
    obj = ftj(queueName="team-gpus")
    d = decide_all(obj, T0)
    job = d.apply[-1]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"
    assert cond(d, "Suspended")["reason"] == "WaitingForAdmission" and d.status["phase"] == "Pending"
    assert cond(d, "Reconciling")["status"] == "True"
    assert cond(d, "Reconciling")["reason"] == "WaitingForAdmission"
    # later: still suspended by Kueue; the operator never unsuspends it
    obj2 = with_status(obj, d)
    d2 = decide_all(obj2, at(30), jobs=[created_job(d)])
    assert not d2.patch and not any(o["kind"] == "Job" for o in d2.apply)
    assert status_patch(obj2, d2.status, STATUS_FIELDS) is None
    # Kueue admits it (unsuspends): the operator leaves it alone and watches the pods
    admitted = created_job(d)
    admitted["spec"]["suspend"] = False
    d3 = decide_all(obj2, at(40), jobs=[admitted], pods={"job-1": [pod("t-trainer-0", "Running")]})
    assert not d3.patch and d3.status["phase"] == "Running"


def test_pending_with_the_schedulers_message():
    obj, job, _ = started(ftj())
    unschedulable = pod(
        "t-trainer-0",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    d = decide_all(obj, at(5), jobs=[job], pods={"job-1": [unschedulable]})
    running = cond(d, "Running")
    assert running["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in running["message"]
    assert d.status["phase"] == "Pending"
    assert cond(d, "Reconciling")["reason"] == "Unschedulable" and cond(d, "Stalled")["status"] == "False"
    assert ("Warning", "Unschedulable") in events(d)
    assert all(o["kind"] != "Job" for o in d.apply)  # no new Job: the static children only


def test_running():
    obj, job, _ = started(ftj())
    d = decide_all(obj, at(5), jobs=[job], pods={"job-1": [pod("t-trainer-0", "Running")]})
    assert d.status["phase"] == "Running"
    assert (
        cond(d, "Running")["status"] == "True" and "1/1 trainer pods running" in cond(d, "Running")["message"]
    )
    assert cond(d, "Reconciling")["status"] == "True" and cond(d, "Reconciling")["reason"] == "Running"
    assert kstatus(with_status(obj, d)) == "InProgress"
    assert not d.problem and d.requeue_after is None
    # running and nothing changed: the same status, no Events
    again = decide_all(
        with_status(obj, d), at(60), jobs=[job], pods={"job-1": [pod("t-trainer-0", "Running")]}
    )
    assert status_patch(with_status(obj, d), again.status, STATUS_FIELDS) is None and not again.events


def test_succeeded():
    obj, _, first = started(ftj())
    done = created_job(first, completionTime=fmt_time(at(100)), conditions=[job_cond("Complete")])
    d = decide_all(obj, at(101), jobs=[done])
    assert d.status["phase"] == "Succeeded" and d.status["completionTime"] == fmt_time(at(100))
    assert cond(d, "Succeeded")["status"] == "True" and cond(d, "Ready")["status"] == "True"
    assert cond(d, "Reconciling")["status"] == "False" and cond(d, "Stalled")["status"] == "False"
    assert ("Normal", "Completed") in events(d)
    assert d.run_seconds == 100.0
    assert kstatus(with_status(obj, d)) == "Current"
    # terminal: later reconciles only keep the static children; no Job, no pods read, no write
    later = decide_all(with_status(obj, d), at(500), jobs=[done])
    assert status_patch(with_status(obj, d), later.status, STATUS_FIELDS) is None and not later.events
    assert all(o["kind"] != "Job" for o in later.apply)


def _failed_job(first: Decision, uid: str = "job-1", attempt_at: float = 0) -> tuple[dict, dict]:
    job = created_job(first, uid=uid, at_=at(attempt_at), conditions=[job_cond("Failed", "PodFailurePolicy")])
    failed_pod = pod(
        "t-trainer-0",
        "Failed",
        containerStatuses=[
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}},
            }
        ],
    )
    return job, {uid: [failed_pod]}


def test_failed_attempt_starts_the_next():
    obj, _, first = started(ftj(backoffLimit=2, resources={"nodes": 2, "gpusPerNode": 1}))
    job, pods = _failed_job(first)
    d = decide_all(obj, at(50), jobs=[job], pods=pods)
    new_jobs = [o for o in d.apply if o["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in new_jobs] == ["t-trainer-2"] and d.new_job_attempt == 2
    assert [(x.kind, x.name) for x in d.delete] == [("Job", "t-trainer")]
    service = next(o for o in d.apply if o["kind"] == "Service")  # multi-node: it follows the attempt
    assert service["spec"]["selector"]["batch.kubernetes.io/job-name"] == "t-trainer-2"
    assert d.status["attempts"] == 2 and d.status["jobName"] == "t-trainer-2"
    assert d.status["startTime"] == fmt_time(T0)  # the run's start, not the attempt's
    assert events(d) == [("Warning", "AttemptFailed"), ("Normal", "JobCreated")]
    message = next(e.message for e in d.events if e.reason == "AttemptFailed")
    assert "attempt 1 of 3 failed" in message and "exited with code 1" in message and "boom" in message
    assert d.status["phase"] == "Pending" and cond(d, "Reconciling")["status"] == "True"
    assert (
        cond(d, "Reconciling")["reason"] == "Retrying"
        and "attempt 2 of 3" in cond(d, "Reconciling")["message"]
    )


def test_a_stalled_attempt_is_named_and_the_next_attempt_resumes():
    obj, _, first = started(ftj(backoffLimit=2))
    job = created_job(first, conditions=[job_cond("Failed", "PodFailurePolicy")])
    stalled = "Stalled: no training step finished for 1800s after step 40 of 100; ending this attempt"
    terminated = {"exitCode": 75, "reason": "Error", "message": stalled}
    stalled_pod = pod(
        "t-trainer-0", "Failed", containerStatuses=[{"name": "trainer", "state": {"terminated": terminated}}]
    )
    d = decide_all(obj, at(50), jobs=[job], pods={"job-1": [stalled_pod]})
    assert d.new_job_attempt == 2
    assert events(d) == [("Warning", "AttemptStalled"), ("Normal", "JobCreated")]
    message = next(e.message for e in d.events if e.reason == "AttemptStalled")
    assert "exited with code 75" in message and stalled in message
    assert "starting attempt 2" in message and "resumes from the latest checkpoint" in message


def test_backoff_exhausted_fails_and_stalls():
    obj, _, first = started(ftj(backoffLimit=0))
    job, pods = _failed_job(first)
    d = decide_all(obj, at(50), jobs=[job], pods=pods)
    assert all(o["kind"] != "Job" for o in d.apply)
    failed = cond(d, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "the run failed" in failed["message"]
    assert d.status["phase"] == "Failed" and d.status["completionTime"] == fmt_time(at(50))
    assert cond(d, "Stalled")["status"] == "True" and cond(d, "Stalled")["message"] == failed["message"]
    assert (
        cond(d, "Reconciling")["status"] == "False" and cond(d, "Ready")["reason"] == "BackoffLimitExceeded"
    )
    assert ("Warning", "BackoffLimitExceeded") in events(d)
    assert kstatus(with_status(obj, d)) == "Failed"
    # raising backoffLimit continues with the next attempt
    raised = with_status(obj, d)
    raised["spec"]["backoffLimit"] = 1
    raised["metadata"]["generation"] = 2
    d2 = decide_all(raised, at(60), jobs=[job], pods=pods)
    assert d2.new_job_attempt == 2 and d2.status["phase"] == "Pending"
    assert cond(d2, "Failed")["status"] == "False" and cond(d2, "Stalled")["status"] == "False"


def test_suspended_and_resumed():
    obj, job, _ = started(ftj())
    running_pods = {"job-1": [pod("t-trainer-0", "Running")]}
    obj = with_status(obj, decide_all(obj, at(5), jobs=[job], pods=running_pods))
    obj["spec"]["suspend"] = True
    d = decide_all(obj, at(10), jobs=[job], pods=running_pods)
    assert d.patch == [("Job", "t-trainer", {"spec": {"suspend": True}})]
    assert d.status["phase"] == "Suspended" and cond(d, "Suspended")["reason"] == "Suspended"
    assert cond(d, "Reconciling")["status"] == "False" and cond(d, "Reconciling")["reason"] == "Suspended"
    assert cond(d, "Stalled")["status"] == "False"
    assert ("Normal", "Suspended") in events(d)
    assert kstatus(with_status(obj, d)) == "InProgress"  # not done (Ready=False), not stalled
    suspended_job = {**job, "spec": {**job["spec"], "suspend": True}}
    obj = with_status(obj, d)
    obj["spec"]["suspend"] = False
    d2 = decide_all(obj, at(20), jobs=[suspended_job], pods={"job-1": []})
    assert d2.patch == [("Job", "t-trainer", {"spec": {"suspend": False}})]
    assert cond(d2, "Suspended")["status"] == "False" and cond(d2, "Suspended")["reason"] == "Resumed"
    assert ("Normal", "Resumed") in events(d2) and d2.status["attempts"] == 1
    assert cond(d2, "Reconciling")["status"] == "True"


def test_active_deadline():
    obj, job, _ = started(ftj(activeDeadlineSeconds=60))
    running_pods = {"job-1": [pod("t-trainer-0", "Running")]}
    d = decide_all(obj, at(20), jobs=[job], pods=running_pods)
    assert d.requeue_after == pytest.approx(40)
    d2 = decide_all(with_status(obj, d), at(61), jobs=[job], pods=running_pods)
    assert [(x.kind, x.name) for x in d2.delete] == [("Job", "t-trainer")]
    assert cond(d2, "Failed")["reason"] == "DeadlineExceeded" and d2.status["phase"] == "Failed"
    assert cond(d2, "Stalled")["reason"] == "DeadlineExceeded"


def test_pending_deadline_quotes_the_scheduler():
    obj, job, _ = started(ftj(pendingDeadlineSeconds=10))
    stuck = {
        "job-1": [
            pod(
                "t-trainer-0",
                conditions=[
                    {"type": "PodScheduled", "status": "False", "message": "0/1 nodes: 1 Insufficient cpu."}
                ],
            )
        ]
    }
    d = decide_all(obj, at(4), jobs=[job], pods=stuck)
    assert d.requeue_after == pytest.approx(6) and d.status["phase"] == "Pending"
    d2 = decide_all(with_status(obj, d), at(11), jobs=[job], pods=stuck)
    failed = cond(d2, "Failed")
    assert failed["reason"] == "PendingDeadlineExceeded" and "Insufficient cpu" in failed["message"]
    assert [(x.kind, x.name) for x in d2.delete] == [("Job", "t-trainer")]
    assert ("Warning", "PendingDeadlineExceeded") in events(d2)


def test_ttl_after_finished_deletes_the_finetunejob():
    obj, _, first = started(ftj(ttlSecondsAfterFinished=5))
    done = created_job(first, completionTime=fmt_time(at(100)), conditions=[job_cond("Complete")])
    d = decide_all(obj, at(102), jobs=[done])
    assert d.requeue_after == pytest.approx(3) and not d.delete_self
    d2 = decide_all(with_status(obj, d), at(106), jobs=[done])
    assert d2.delete_self and d2.status is None and events(d2) == [("Normal", "Deleted")]


def test_spec_change_starts_a_new_run():
    obj, job, _ = started(ftj())
    obj = with_status(obj, decide_all(obj, at(5), jobs=[job], pods={"job-1": [pod("p", "Running")]}))
    old_run = job["metadata"]["labels"]["kubetune.io/run-id"]
    obj["spec"]["training"] = {"maxSteps": 20}
    obj["metadata"]["generation"] = 2
    d = decide_all(obj, at(10), jobs=[job], configmap_run=old_run)
    assert d.status_first and [(x.kind, x.name, x.propagation) for x in d.delete] == [
        ("Job", "t-trainer", "Foreground")
    ]
    assert d.status["attempts"] == 0 and d.status.get("startTime") is None
    assert cond(d, "Running")["reason"] == "NewRun" and ("Normal", "NewRun") in events(d)
    assert d.requeue_after == pytest.approx(1.0) and cond(d, "Reconciling")["status"] == "True"
    # the old Job is gone: the new run's Job is created, with the new run id
    d2 = decide_all(with_status(obj, d), at(12), configmap_run=old_run)
    job2 = next(o for o in d2.apply if o["kind"] == "Job")
    assert job2["metadata"]["labels"]["kubetune.io/run-id"] != old_run
    assert d2.status["attempts"] == 1 and d2.status["startTime"] == fmt_time(at(12))
    # lifecycle fields change in place: no new run
    obj3 = with_status(obj, d2)
    obj3["spec"]["backoffLimit"] = 5
    obj3["metadata"]["generation"] = 3
    new_job = created_job(d2, uid="job-2", at_=at(12))
    d3 = decide_all(
        obj3, at(13), jobs=[new_job], configmap_run=job2["metadata"]["labels"]["kubetune.io/run-id"]
    )
    assert not d3.delete and all(o["kind"] != "Job" for o in d3.apply)


def test_missing_secret_reconciles_then_stalls_after_the_grace():
    obj = ftj(model={"uri": "hf://meta-llama/Llama-3.1-8B", "secretRef": {"name": "hf-token"}})
    d = decide_all(obj, T0)
    running = cond(d, "Running")
    assert running["reason"] == "SecretNotFound" and "Secret 'hf-token'" in running["message"]
    assert "spec.model.secretRef" in running["message"]
    assert all(o["kind"] != "Job" for o in d.apply) and d.problem and d.status["phase"] == "Pending"
    assert cond(d, "Reconciling")["status"] == "True" and cond(d, "Stalled")["status"] == "False"
    assert d.requeue_after == pytest.approx(STALL_GRACE_SECONDS)
    assert ("Warning", "SecretNotFound") in events(d)
    assert kstatus(with_status(obj, d)) == "InProgress"
    later = decide_all(with_status(obj, d), at(STALL_GRACE_SECONDS + 1))
    assert cond(later, "Stalled")["status"] == "True" and cond(later, "Stalled")["reason"] == "SecretNotFound"
    assert cond(later, "Reconciling")["status"] == "False"
    assert events(later) == [("Warning", "Stalled")]
    assert kstatus(with_status(obj, later)) == "Failed"
    # the Secret appears: the Job is created, no longer stalled
    secret = {"metadata": {"name": "hf-token"}, "data": {"HF_TOKEN": "eA=="}}
    fixed = decide_all(with_status(obj, later), at(40), secrets={"hf-token": secret})
    assert fixed.new_job_attempt == 1 and cond(fixed, "Stalled")["status"] == "False"


def test_missing_pvc():
    obj = ftj(output={"uri": "pvc://models/out"})
    d = decide_all(obj, T0)
    assert cond(d, "Running")["reason"] == "PVCNotFound" and "'models'" in cond(d, "Running")["message"]
    assert all(o["kind"] != "Job" for o in d.apply)
    later = decide_all(with_status(obj, d), at(31))
    assert cond(later, "Stalled")["reason"] == "PVCNotFound"
    assert "PersistentVolumeClaim 'models' not found" in cond(later, "Stalled")["message"]
    bound = {"metadata": {"name": "models"}, "status": {"phase": "Bound"}}
    assert decide_all(with_status(obj, later), at(40), pvcs={"models": bound}).new_job_attempt == 1


def test_refused_job_is_a_condition_and_one_event():
    obj = ftj()
    message = 'jobs.batch "t-trainer" is forbidden: exceeded quota: no-jobs, requested: count/jobs.batch=1'
    refusal = Refusal("Job", "t-trainer", 403, message)
    d = decide_all(obj, T0, refusals=[refusal])
    running = cond(d, "Running")
    assert running["reason"] == "ChildRejected" and "exceeded quota: no-jobs" in running["message"]
    assert "ResourceQuota" in running["message"]  # what to change
    assert cond(d, "Stalled")["status"] == "True" and cond(d, "Stalled")["reason"] == "ChildRejected"
    assert d.problem and d.status["phase"] == "Pending" and d.status["attempts"] == 0
    assert [e.reason for e in d.events] == ["ChildRejected"] and d.events[0].type == "Warning"
    assert kstatus(with_status(obj, d)) == "Failed"
    # retried (backoff) and refused again: no change, no second Event
    again = decide_all(with_status(obj, d), at(5), refusals=[refusal])
    assert status_patch(with_status(obj, d), again.status, STATUS_FIELDS) is None and not again.events
    # the quota is lifted: the Job is created and the problem is gone
    ok = decide_all(with_status(obj, d), at(10))
    assert ok.new_job_attempt == 1 and cond(ok, "Stalled")["status"] == "False"


def test_refused_static_child_and_foreign_child():
    obj = ftj()
    denied = Refusal(
        "ConfigMap", "t-trainer-config", 422, "ValidatingAdmissionPolicy 'deny' denied request: no"
    )
    d = decide_all(obj, T0, refusals=[denied])
    assert all(o["kind"] != "Job" for o in d.apply) and cond(d, "Running")["reason"] == "ChildRejected"
    assert "denied request: no" in cond(d, "Running")["message"]
    foreign = Refusal("Role", "t-trainer", 409, "Role 't-trainer' already exists ...", foreign=True)
    d2 = decide_all(obj, T0, refusals=[foreign])
    assert (
        cond(d2, "Running")["reason"] == "ChildConflict" and cond(d2, "Stalled")["reason"] == "ChildConflict"
    )


def test_job_name_still_being_deleted_waits_without_a_condition_of_failure():
    obj = ftj()
    d = decide_all(obj, T0, refusals=[Refusal("Job", "t-trainer", 409, "object is being deleted")])
    assert cond(d, "Running")["reason"] == "WaitingForDeletion" and d.requeue_after == 1.0
    assert cond(d, "Stalled")["status"] == "False" and not d.problem
    # a conflict that persists past the grace stalls, with one Event
    later = decide_all(
        with_status(obj, d), at(31), refusals=[Refusal("Job", "t-trainer", 409, "being deleted")]
    )
    assert cond(later, "Stalled")["reason"] == "WaitingForDeletion" and events(later) == [
        ("Warning", "Stalled")
    ]


def test_image_pull_failure_stalls_after_the_grace():
    obj, job, _ = started(ftj())
    waiting = pod(
        "t-trainer-0",
        containerStatuses=[
            {"image": "nope:1", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
        ],
    )
    d = decide_all(obj, at(5), jobs=[job], pods={"job-1": [waiting]})
    assert cond(d, "Running")["reason"] == "ImagePullFailed" and d.problem
    assert cond(d, "Reconciling")["status"] == "True"
    d2 = decide_all(with_status(obj, d), at(40), jobs=[job], pods={"job-1": [waiting]})
    assert cond(d2, "Stalled")["reason"] == "ImagePullFailed"


def test_unchanged_object_needs_no_write_and_keeps_transition_times():
    obj, job, _ = started(ftj())
    pods = {"job-1": [pod("t-trainer-0", "Running")]}
    d = decide_all(obj, at(5), jobs=[job], pods=pods)
    obj = with_status(obj, d)
    d2 = decide_all(obj, at(500), jobs=[job], pods=pods)
    assert status_patch(obj, d2.status, STATUS_FIELDS) is None
    assert d2.status["conditions"] == obj["status"]["conditions"]


def test_a_stale_observed_generation_reads_in_progress():
    obj, _, first = started(ftj())
    done = created_job(first, completionTime=fmt_time(at(100)), conditions=[job_cond("Complete")])
    succeeded = with_status(obj, decide_all(obj, at(101), jobs=[done]))
    succeeded["metadata"]["generation"] = 2  # edited, not yet reconciled
    assert kstatus(succeeded) == "InProgress"


def test_refused_suspend_patch_and_deletion_are_conditions():
    obj, job, _ = started(ftj(activeDeadlineSeconds=10))
    running_pods = {"job-1": [pod("t-trainer-0", "Running")]}
    obj = with_status(obj, decide_all(obj, at(5), jobs=[job], pods=running_pods))
    obj["spec"]["suspend"] = True
    forbidden = Refusal("Job", "t-trainer", 403, 'jobs.batch "t-trainer" is forbidden: User cannot patch')
    d = decide_all(obj, at(6), jobs=[job], pods=running_pods, refusals=[forbidden])
    assert not d.patch and cond(d, "Running")["reason"] == "ChildRejected"
    assert "grant the operator's ServiceAccount access to Jobs" in cond(d, "Running")["message"]
    obj["spec"]["suspend"] = False
    late = decide_all(obj, at(20), jobs=[job], pods=running_pods, refusals=[forbidden])
    assert not late.delete and cond(late, "Stalled")["status"] == "True"
    assert late.status["phase"] == "Pending" and cond(late, "Failed")["status"] == "False"  # still running


def test_static_children_applied_from_the_same_inputs_are_not_rendered_again():
    obj, job, first = started(ftj())
    pods = {"job-1": [pod("t-trainer-0", "Running")]}
    d = decide_all(obj, at(5), jobs=[job], pods=pods, static_signature=first.static_signature)
    assert d.apply == [] and d.static_signature is None and d.status["phase"] == "Running"
    # a label change (labels are propagated to the children) renders them again
    obj["metadata"]["labels"] = {"team": "nlp"}
    d2 = decide_all(obj, at(6), jobs=[job], pods=pods, static_signature=first.static_signature)
    assert [o["kind"] for o in d2.apply] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap"]
    assert d2.apply[-1]["metadata"]["labels"]["team"] == "nlp"


def test_finished_with_this_spec_means_done_and_not_edited_since():
    def ftj(phase: str | None, generation: int, observed: int | None) -> dict:
        return {
            "metadata": {"generation": generation},
            "status": {"phase": phase, "observedGeneration": observed},
        }

    assert finished_with_this_spec(ftj("Succeeded", 2, 2)) and finished_with_this_spec(ftj("Failed", 1, 1))
    assert not finished_with_this_spec(ftj("Succeeded", 3, 2))  # edited since: a new run may start
    assert not finished_with_this_spec(ftj("Running", 1, 1)) and not finished_with_this_spec(
        ftj(None, 1, None)
    )
    assert not finished_with_this_spec({"metadata": {"generation": 1}})
