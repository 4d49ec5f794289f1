"""Preemption in the FineTuneJob decision, transition by transition: a trainer pod with DisruptionTarget
(an eviction, a preemption, a drain) gives one Event ``Preempted``, ``status.preemptions``, Running=False
``Preempted`` while its replacement comes, then Running=True ``Resumed`` naming the checkpoint; never twice
for the same pod, also after an operator restart (everything is read back from the status)."""

from __future__ import annotations

from typing import Any

from kubetune.reconcile.clock import fmt_time
from kubetune.reconcile.finetunejob_readings import disruptions
from tests.unit.test_finetunejob_decision import at, cond, decide_all, ftj, pod, started, with_status

EVICTED = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "EvictionByEvictionAPI",
    "message": "Eviction API: evicting",
    "lastTransitionTime": fmt_time(at(30)),
}


def disrupted(
    name: str, *, deleting: bool = True, phase: str = "Running", **condition: Any
) -> dict[str, Any]:
    p = pod(name, phase, conditions=[{**EVICTED, **condition}])
    if deleting:
        p["metadata"]["deletionTimestamp"] = fmt_time(at(30))
    return p


def preempted_events(d) -> list[str]:
    return [e.message for e in d.events if e.reason == "Preempted"]


def test_disruptions_reads_the_condition_of_each_pod_oldest_first():
    later = disrupted("b", reason="PreemptionByScheduler", lastTransitionTime=fmt_time(at(40)))
    found = disruptions([pod("ok", "Running"), later, disrupted("a")])
    assert [(d.pod, d.reason) for d in found] == [
        ("a", "EvictionByEvictionAPI"),
        ("b", "PreemptionByScheduler"),
    ]
    not_true = pod("c", "Running", conditions=[{**EVICTED, "status": "False"}])
    assert disruptions([not_true]) == []


def test_a_preempted_pod_is_reported_once_and_the_run_resumes_from_the_checkpoint():
    obj, job, _ = started(ftj())
    first = pod("t-trainer-0-aaaaa", "Running")
    obj = with_status(obj, decide_all(obj, at(5), jobs=[job], pods={"job-1": [first]}))
    assert cond(decide_all(obj, at(6), jobs=[job], pods={"job-1": [first]}), "Running")["reason"] == "Running"

    # The Eviction API marks the pod first (still Running, no deletionTimestamp): already on its way out.
    marked = disrupted("t-trainer-0-aaaaa", deleting=False)
    d = decide_all(obj, at(30), jobs=[job], pods={"job-1": [marked]})
    (message,) = preempted_events(d)
    assert "t-trainer-0-aaaaa" in message and "EvictionByEvictionAPI" in message, message
    assert [e.type for e in d.events if e.reason == "Preempted"] == ["Normal"]
    running = cond(d, "Running")
    assert running["status"] == "False" and running["reason"] == "Preempted", running
    assert "waiting for its replacement" in running["message"] and "no attempt used" in running["message"]
    assert d.status["preemptions"] == {
        "count": 1,
        "lastPod": "t-trainer-0-aaaaa",
        "lastReason": "EvictionByEvictionAPI",
        "lastTime": fmt_time(at(30)),
        "reportedPods": ["t-trainer-0-aaaaa"],
    }
    assert d.status["attempts"] == 1 and not [o for o in d.apply if o["kind"] == "Job"]  # no new attempt
    obj = with_status(obj, d)

    # Reconciled again (the pod is Terminating, then Failed): no second Event; a restarted operator reads
    # the same status, so the same holds after a restart.
    for phase in ("Running", "Failed"):
        again = decide_all(
            obj, at(33), jobs=[job], pods={"job-1": [disrupted("t-trainer-0-aaaaa", phase=phase)]}
        )
        assert not preempted_events(again) and again.status["preemptions"]["count"] == 1
        obj = with_status(obj, again)

    # The pod is gone, the replacement is Pending: still Preempted, the pod no longer tracked.
    replacement = pod("t-trainer-0-bbbbb")
    d = decide_all(obj, at(35), jobs=[job], pods={"job-1": [replacement]})
    assert cond(d, "Running")["reason"] == "Preempted" and not preempted_events(d)
    assert d.status["preemptions"]["reportedPods"] == [] and d.status["preemptions"]["count"] == 1
    obj = with_status(obj, d)

    # The trainer saved a checkpoint on SIGTERM (it patches status.checkpoint); the replacement runs.
    obj["status"]["checkpoint"] = {"uri": "s3://bucket/out/checkpoints/checkpoint-40", "step": 40}
    d = decide_all(obj, at(40), jobs=[job], pods={"job-1": [pod("t-trainer-0-bbbbb", "Running")]})
    running = cond(d, "Running")
    assert running["status"] == "True" and running["reason"] == "Resumed", running
    assert "preempted once" in running["message"] and "t-trainer-0-aaaaa" in running["message"]
    assert "checkpoint-40 (step 40)" in running["message"], running["message"]
    assert ("Normal", "Resumed") in [(e.type, e.reason) for e in d.events]
    assert d.status["phase"] == "Running" and d.status["attempts"] == 1
    obj = with_status(obj, d)

    # Running on: the message keeps where it resumed from, though the trainer saves newer checkpoints.
    obj["status"]["checkpoint"] = {"uri": "s3://bucket/out/checkpoints/checkpoint-80", "step": 80}
    d = decide_all(obj, at(90), jobs=[job], pods={"job-1": [pod("t-trainer-0-bbbbb", "Running")]})
    assert cond(d, "Running") == running and not d.events


def test_without_a_checkpoint_the_message_says_the_run_started_again():
    obj, job, _ = started(ftj())
    obj = with_status(obj, decide_all(obj, at(30), jobs=[job], pods={"job-1": [disrupted("p-1")]}))
    d = decide_all(obj, at(40), jobs=[job], pods={"job-1": [pod("p-2", "Running")]})
    assert cond(d, "Running")["reason"] == "Resumed"
    assert "no checkpoint had been saved yet" in cond(d, "Running")["message"]


def test_two_pods_of_a_multi_node_run_drained_one_after_the_other():
    obj, job, _ = started(ftj(resources={"nodes": 2, "gpusPerNode": 1}))
    both = [pod("r-0-a", "Running"), pod("r-1-a", "Running")]
    obj = with_status(obj, decide_all(obj, at(5), jobs=[job], pods={"job-1": both}))
    d = decide_all(obj, at(30), jobs=[job], pods={"job-1": [disrupted("r-0-a"), both[1]]})
    assert len(preempted_events(d)) == 1 and "1/2 trainer pods running" in cond(d, "Running")["message"]
    obj = with_status(obj, d)
    # The second eviction is seen while the first pod still terminates: only the new one is reported.
    second = disrupted("r-1-a", lastTransitionTime=fmt_time(at(31)))
    d = decide_all(obj, at(31), jobs=[job], pods={"job-1": [disrupted("r-0-a"), second]})
    (message,) = preempted_events(d)
    assert "r-1-a" in message
    assert d.status["preemptions"]["count"] == 2 and d.status["preemptions"]["lastPod"] == "r-1-a"
    assert d.status["preemptions"]["reportedPods"] == ["r-0-a", "r-1-a"]
    obj = with_status(obj, d)
    d = decide_all(
        obj, at(45), jobs=[job], pods={"job-1": [pod("r-0-b", "Running"), pod("r-1-b", "Running")]}
    )
    assert cond(d, "Running")["reason"] == "Resumed" and "preempted 2 times" in cond(d, "Running")["message"]


def test_a_preempted_run_waiting_for_its_replacement_gets_the_pending_deadline_from_the_preemption():
    obj, job, _ = started(ftj(pendingDeadlineSeconds=60))
    obj = with_status(obj, decide_all(obj, at(5), jobs=[job], pods={"job-1": [pod("p-1", "Running")]}))
    # Preempted after an hour of running: the replacement has pendingDeadlineSeconds from the preemption.
    evicted = disrupted("p-1", lastTransitionTime=fmt_time(at(3600)))
    d = decide_all(obj, at(3600), jobs=[job], pods={"job-1": [evicted]})
    assert cond(d, "Failed")["status"] == "False" and d.requeue_after == 60, d.requeue_after
    obj = with_status(obj, d)
    d = decide_all(obj, at(3630), jobs=[job], pods={"job-1": [pod("p-2")]})
    assert cond(d, "Running")["reason"] == "Preempted" and cond(d, "Failed")["status"] == "False"
    d = decide_all(with_status(obj, d), at(3661), jobs=[job], pods={"job-1": [pod("p-2")]})
    assert cond(d, "Failed")["reason"] == "PendingDeadlineExceeded"


def test_a_preemption_in_an_earlier_attempt_does_not_make_the_next_attempt_resumed():
    obj, job, _ = started(ftj())
    obj = with_status(obj, decide_all(obj, at(30), jobs=[job], pods={"job-1": [disrupted("p-1")]}))
    assert obj["status"]["preemptions"]["count"] == 1
    # Attempt 2's Job was created after the preemption: its pods just run.
    job2 = {**job, "metadata": {**job["metadata"], "uid": "job-2", "creationTimestamp": fmt_time(at(100))}}
    d = decide_all(obj, at(120), jobs=[job2], pods={"job-2": [pod("p-3", "Running")]})
    assert cond(d, "Running")["reason"] == "Running" and d.status["preemptions"]["count"] == 1


def test_a_new_run_forgets_the_preemptions():
    obj, job, _ = started(ftj())
    obj = with_status(obj, decide_all(obj, at(30), jobs=[job], pods={"job-1": [disrupted("p-1")]}))
    edited = ftj(generation=2, training={"epochs": 2})
    edited["status"] = obj["status"]
    d = decide_all(edited, at(40), jobs=[job], pods={"job-1": [disrupted("p-1")]})
    assert "preemptions" not in {k for k, v in d.status.items() if v is not None}


def test_a_job_made_again_after_a_preemption_settles_and_is_not_resumed():
    """The trainer Job is gone (deleted by hand) after a preemption: the decision makes it again, in one
    pass (nothing to read about a Job that does not exist yet) and without calling it resumed."""
    obj, job, _ = started(ftj())
    obj = with_status(obj, decide_all(obj, at(30), jobs=[job], pods={"job-1": [disrupted("p-1")]}))
    d = decide_all(obj, at(100), jobs=[])
    assert [o["metadata"]["name"] for o in d.apply if o["kind"] == "Job"] == ["t-trainer"]
    assert cond(d, "Running")["reason"] == "Pending" and d.status["preemptions"]["count"] == 1
