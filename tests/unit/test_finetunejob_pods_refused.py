"""A trainer Job whose pods the API server refuses (a ResourceQuota on GPUs, PodSecurity): the Job exists but
has no pods, and only the Job controller's FailedCreate Events say why. The decision reads them once the
Job had time to make its pods, and quotes the refusal in Running=False, reason PodsRefused."""

from __future__ import annotations

from kubetune.reconcile.clock import fmt_time
from kubetune.reconcile.finetunejob_draft import STALL_GRACE_SECONDS
from kubetune.reconcile.finetunejob_pods import NO_PODS_LOOK_AFTER_SECONDS
from kubetune.reconcile.finetunejob_readings import latest_failed_create
from tests.unit.test_finetunejob_decision import at, cond, decide_all, events, ftj, pod, started, with_status

QUOTA = (
    'Error creating: pods "t-trainer-0-x7k2p" is forbidden: exceeded quota: gpus, requested: '
    "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=0"
)


def failed_create(message: str, seconds: float) -> dict:
    return {
        "reason": "FailedCreate",
        "type": "Warning",
        "message": message,
        "lastTimestamp": fmt_time(at(seconds)),
    }


def test_latest_failed_create_takes_the_newest_since():
    old, new = failed_create("old", 1), failed_create("new", 9)
    assert latest_failed_create([new, old, {"reason": "SuccessfulCreate", "message": "x"}], None) == "new"
    assert latest_failed_create([old], at(5)) is None
    assert latest_failed_create([], None) is None


def test_a_quota_that_forbids_the_gpus_is_a_condition_quoting_it():
    obj, job, _ = started(ftj())
    # Right after the Job was made: no pods yet is normal; look again shortly, read no Events.
    d = decide_all(obj, at(1), jobs=[job])
    assert cond(d, "Running")["reason"] == "Pending" and d.requeue_after == NO_PODS_LOOK_AFTER_SECONDS - 1
    obj = with_status(obj, d)
    world = {"job-1": [failed_create(QUOTA, 3)]}
    d = decide_all(obj, at(6), jobs=[job], job_events=world)
    running = cond(d, "Running")
    assert running["status"] == "False" and running["reason"] == "PodsRefused", running
    assert "exceeded quota: gpus" in running["message"] and "requests.nvidia.com/gpu=1" in running["message"]
    assert "raise the namespace's ResourceQuota" in running["message"]
    assert ("Warning", "PodsRefused") in events(d) and d.problem
    assert cond(d, "Stalled")["status"] == "False"  # the quota may be raised or freed: a grace first
    obj = with_status(obj, d)
    d = decide_all(obj, at(6 + STALL_GRACE_SECONDS + 1), jobs=[job], job_events=world)
    assert cond(d, "Stalled")["status"] == "True" and cond(d, "Stalled")["reason"] == "PodsRefused"
    assert not [e for e in d.events if e.reason == "PodsRefused"]  # one Event for the one refusal
    # The quota was raised: the pods exist, the condition clears.
    d = decide_all(with_status(obj, d), at(60), jobs=[job], pods={"job-1": [pod("t-trainer-0", "Running")]})
    assert cond(d, "Running")["reason"] == "Running" and cond(d, "Stalled")["status"] == "False"


def test_pod_security_refusal_says_what_to_change():
    obj, job, _ = started(ftj())
    refusal = (
        'Error creating: pods "t-trainer-0-a" is forbidden: violates PodSecurity "restricted:latest": ...'
    )
    d = decide_all(obj, at(10), jobs=[job], job_events={"job-1": [failed_create(refusal, 2)]})
    message = cond(d, "Running")["message"]
    assert "violates PodSecurity" in message and "pod-security.kubernetes.io/enforce" in message, message


def test_a_failed_create_older_than_the_job_is_not_quoted():
    obj, job, _ = started(ftj())
    d = decide_all(obj, at(10), jobs=[job], job_events={"job-1": [failed_create(QUOTA, -30)]})
    assert cond(d, "Running")["reason"] == "Pending", cond(d, "Running")
