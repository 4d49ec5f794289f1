"""Preemption, node drains and Kueue-style suspension of a running FineTuneJob, on the local control plane.

kwok plays the kubelet (tests/support/controlplane.py, stage kubetune-pod-terminate): a pod being deleted
is stopped (exit 143) within TERMINATE_AFTER_SECONDS, reported Failed with the conditions it had (the
Eviction API's DisruptionTarget), and deleted once the Job controller released its finalizer. The trainer
Job's podFailurePolicy (DisruptionTarget -> Ignore, rendered in kubetune/render/finetunejob.py) then
replaces the pod without using an attempt: the replacement belongs to the same Job, so it has the same run
id, config and output, and the trainer resumes from the run's latest checkpoint (tests/trainer).
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from kubetune.render.common import RUN_ID_LABEL
from kubetune.render.finetunejob import COMPLETION_INDEX_ANNOTATION, TRAINER_CONTAINER, configmap_name
from tests.reliability.conftest import PodRecorder
from tests.support.controlplane import KWOK_NODES, TERMINATE_AFTER_SECONDS
from tests.support.objects import FTJ, tiny_job
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok, pytest.mark.timeout(180)]

RUN = {"kwok.kubetune.io/outcome": "run"}  # pods stay Running until deleted


def evict(ftj: FTJ, pod: str) -> None:
    """What `kubectl drain`, the scheduler's preemption and Kueue use: the Eviction API (policy/v1)."""
    ftj.core.create_namespaced_pod_eviction(
        pod, ftj.ns, client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=ftj.ns))
    )


def live_pods(ftj: FTJ, name: str) -> list:
    return [p for p in ftj.pods(name) if not p.metadata.deletion_timestamp]


def running_pods(ftj: FTJ, name: str, count: int) -> list:
    pods = [p for p in live_pods(ftj, name) if p.status.phase == "Running"]
    return pods if len(pods) == count else []


def condition(pod, type_: str):
    return next((c for c in pod.status.conditions or [] if c.type == type_), None)


def assert_stopped_like_a_kubelet(recorder: PodRecorder, pod_name: str) -> None:
    """The evicted pod went Failed, its trainer exited 143 (SIGTERM) and it kept DisruptionTarget."""
    failed = wait_for(
        lambda: next((p for p in recorder.versions(pod_name) if p.status.phase == "Failed"), None),
        TERMINATE_AFTER_SECONDS + 15,
        0.1,
        f"pod {pod_name} reported Failed",
    )
    target = condition(failed, "DisruptionTarget")
    assert target is not None and target.status == "True", failed.status.conditions
    assert target.reason == "EvictionByEvictionAPI", target
    (trainer,) = [s for s in failed.status.container_statuses if s.name == TRAINER_CONTAINER]
    assert trainer.state.terminated.exit_code == 143, trainer.state
    assert condition(failed, "Ready").status == "False"
    # The Job controller counted it (finalizer released) and kwok then deleted it.
    wait_for(lambda: ("DELETED", pod_name) in [(t, p.metadata.name) for t, p in recorder.seen], 20, 0.2)


def test_an_evicted_trainer_pod_is_replaced_without_using_an_attempt(ftj: FTJ):
    ftj.create(tiny_job("evicted", labels=RUN, backoffLimit=0))
    ftj.wait_phase("evicted", "Running", 45)
    (pod,) = wait_for(lambda: running_pods(ftj, "evicted", 1), 30, what="the trainer pod Running")
    job = ftj.job("evicted-trainer")
    with PodRecorder(ftj.api, ftj.ns) as recorder:
        t0 = time.monotonic()
        evict(ftj, pod.metadata.name)
        assert_stopped_like_a_kubelet(recorder, pod.metadata.name)
        (new,) = wait_for(lambda: running_pods(ftj, "evicted", 1), 30, 0.2, "a replacement pod Running")
    print(f"eviction -> replacement Running: {time.monotonic() - t0:.1f} s")  # docs/reliability.md
    assert new.metadata.uid != pod.metadata.uid
    # The same Job (same run, same attempt): no attempt used, even with backoffLimit 0.
    assert [j.metadata.uid for j in ftj.jobs("evicted")] == [job.metadata.uid]
    job = ftj.job("evicted-trainer")
    assert not job.status.failed, job.status  # podFailurePolicy Ignore: the disruption is not counted
    assert not [c for c in job.status.conditions or [] if c.type == "Failed" and c.status == "True"]
    # The replacement runs the same run: same run id, same config (hence the same output and checkpoints).
    assert new.metadata.labels[RUN_ID_LABEL] == pod.metadata.labels[RUN_ID_LABEL]
    cm = ftj.core.read_namespaced_config_map(configmap_name("evicted"), ftj.ns)
    assert cm.metadata.labels[RUN_ID_LABEL] == new.metadata.labels[RUN_ID_LABEL]
    volumes = {v.name: v for v in new.spec.volumes}
    assert volumes["config"].config_map.name == configmap_name("evicted")
    env = lambda p: {e.name: e.value for e in p.spec.containers[0].env if e.value is not None}  # noqa: E731
    assert env(new) == env(pod)
    assert new.metadata.annotations[COMPLETION_INDEX_ANNOTATION] == "0"
    st = ftj.wait_phase("evicted", "Running", 30)  # the operator saw the replacement run
    print(f"eviction -> FineTuneJob Running again: {time.monotonic() - t0:.1f} s")
    assert st["attempts"] == 1 and st["jobName"] == "evicted-trainer", st


def test_the_status_says_the_run_was_preempted_and_resumed(ftj: FTJ, rel_operator):
    ftj.create(tiny_job("preempted", labels=RUN))
    (pod,) = wait_for(lambda: running_pods(ftj, "preempted", 1), 45, what="the trainer pod Running")
    evict(ftj, pod.metadata.name)
    wait_for(
        lambda: [p for p in running_pods(ftj, "preempted", 1) if p.metadata.uid != pod.metadata.uid],
        30,
        0.2,
        "a replacement pod Running",
    )
    events = wait_for(
        lambda: [e for e in ftj.events("preempted") if e.reason == "Preempted"], 20, 0.3, "a Preempted Event"
    )
    assert pod.metadata.name in events[0].message, events[0].message
    running = wait_for(
        lambda: (c := ftj.cond("preempted", "Running")).get("reason") == "Resumed" and c, 20, 0.3
    )
    assert running["status"] == "True" and "preempt" in running["message"].lower(), running
    assert "EvictionByEvictionAPI" in events[0].message and "EvictionByEvictionAPI" in running["message"]
    st = ftj.status("preempted")
    assert st["attempts"] == 1 and st["preemptions"]["count"] == 1, st
    assert st["preemptions"]["lastPod"] == pod.metadata.name, st
    # One Event for the one preemption, however often the FineTuneJob was reconciled meanwhile (the pod
    # Terminating, Failed, deleted; the replacement Pending, Running) and still one after it looked again.
    looked = rel_operator.reconciles("FineTuneJob", ftj.ns, "preempted")
    ftj.patch("preempted", {"metadata": {"annotations": {"poke": "1"}}})
    rel_operator.wait_reconciled("FineTuneJob", ftj.ns, "preempted", after=looked)
    assert [e.count for e in ftj.events("preempted") if e.reason == "Preempted"] == [1]


def test_a_kubelet_eviction_is_reported_once_also_after_an_operator_restart(ftj: FTJ, rel_operator):
    """A kubelet evicting a pod for node pressure marks it Failed with DisruptionTarget
    (TerminationByKubelet) and does not delete it: the disrupted pod stays. The FineTuneJob reports it
    once, and a restarted operator (which reconciles everything again) does not report it again."""
    ftj.create(tiny_job("pressure", labels=RUN))
    (pod,) = wait_for(lambda: running_pods(ftj, "pressure", 1), 45, what="the trainer pod Running")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    trainer = {
        "name": TRAINER_CONTAINER,
        "ready": False,
        "restartCount": 0,
        "image": pod.spec.containers[0].image,
        "imageID": "",
        "state": {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": now, "finishedAt": now}},
    }
    ftj.core.patch_namespaced_pod_status(
        pod.metadata.name,
        ftj.ns,
        {
            "status": {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory.",
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "TerminationByKubelet",
                        "message": "The node was low on resource: memory.",
                        "lastTransitionTime": now,
                    },
                    {"type": "Ready", "status": "False", "lastTransitionTime": now},
                ],
                "containerStatuses": [trainer],
            }
        },
    )
    wait_for(
        lambda: [p for p in running_pods(ftj, "pressure", 1) if p.metadata.uid != pod.metadata.uid],
        30,
        0.2,
        "a replacement pod Running",
    )
    wait_for(
        lambda: ftj.cond("pressure", "Running").get("reason") == "Resumed", 30, 0.2, "Running=True Resumed"
    )
    preempted = [e for e in ftj.events("pressure") if e.reason == "Preempted"]
    assert len(preempted) == 1 and "TerminationByKubelet" in preempted[0].message, preempted
    assert pod.metadata.name in ftj.status("pressure")["preemptions"]["reportedPods"]
    assert ftj.core.read_namespaced_pod(pod.metadata.name, ftj.ns).status.phase == "Failed"  # still there
    assert not ftj.job("pressure-trainer").status.failed  # ignored by the podFailurePolicy
    before = ftj.get("pressure")["metadata"]["resourceVersion"]
    rel_operator.restart()
    # The restarted operator lists every FineTuneJob and reconciles it (its own count starts at 0) ...
    rel_operator.wait_reconciled("FineTuneJob", ftj.ns, "pressure", after=0)
    # ... and writes nothing: status.preemptions reads back as it was written.
    assert ftj.get("pressure")["metadata"]["resourceVersion"] == before
    after_restart = rel_operator.reconciles("FineTuneJob", ftj.ns, "pressure")
    touched = ftj.patch(
        "pressure", {"metadata": {"annotations": {"touched": "after-restart"}}}
    )  # and once more
    rel_operator.wait_reconciled("FineTuneJob", ftj.ns, "pressure", after=after_restart)
    assert ftj.get("pressure")["metadata"]["resourceVersion"] == touched["metadata"]["resourceVersion"]
    preempted = [e for e in ftj.events("pressure") if e.reason == "Preempted"]
    assert [e.count for e in preempted] == [1], [(e.message, e.count) for e in preempted]
    st = ftj.status("pressure")
    assert st["preemptions"]["count"] == 1 and st["attempts"] == 1, st
    assert ftj.cond("pressure", "Running")["reason"] == "Resumed"


def test_draining_a_node_moves_two_multi_node_runs_to_the_other_node(ftj: FTJ):
    drained, other = KWOK_NODES[0]["name"], KWOK_NODES[1]["name"]
    names = ("drain-a", "drain-b")
    core = ftj.core
    core.patch_node(other, {"spec": {"unschedulable": True}})  # both 2-node runs start on `drained`
    try:
        for name in names:
            ftj.create(tiny_job(name, labels=RUN, resources={"nodes": 2, "gpusPerNode": 1}))
        before = {
            n: wait_for(lambda n=n: running_pods(ftj, n, 2), 45, 0.2, f"{n}: 2 pods Running") for n in names
        }
    finally:
        core.patch_node(other, {"spec": {"unschedulable": None}})
    victims = [p for n in names for p in before[n]]
    assert {p.spec.node_name for p in victims} == {drained}
    jobs = {n: ftj.job(f"{n}-trainer").metadata.uid for n in names}
    core.patch_node(drained, {"spec": {"unschedulable": True}})  # kubectl drain: cordon ...
    try:
        with PodRecorder(ftj.api, ftj.ns) as recorder:
            for pod in victims:  # ... and evict every pod on the node
                evict(ftj, pod.metadata.name)
            for pod in victims:
                assert_stopped_like_a_kubelet(recorder, pod.metadata.name)
        for n in names:
            after = wait_for(lambda n=n: running_pods(ftj, n, 2), 45, 0.2, f"{n}: 2 pods Running again")
            assert {p.spec.node_name for p in after} == {other}, [
                (p.metadata.name, p.spec.node_name) for p in after
            ]
            assert sorted(p.metadata.annotations[COMPLETION_INDEX_ANNOTATION] for p in after) == ["0", "1"]
            assert [j.metadata.uid for j in ftj.jobs(n)] == [jobs[n]]
            assert not ftj.job(f"{n}-trainer").status.failed
            st = wait_for(
                lambda n=n: (s := ftj.status(n)).get("phase") == "Running" and s, 30, 0.2, f"{n}: Running"
            )
            assert st["attempts"] == 1, st
            # Each evicted rank was reported once (an Event and status.preemptions), and the run resumed.
            evicted = sorted(p.metadata.name for p in before[n])
            reported = sorted(
                next(v for v in evicted if v in e.message) for e in ftj.events(n) if e.reason == "Preempted"
            )
            assert reported == evicted, [e.message for e in ftj.events(n) if e.reason == "Preempted"]
            assert st["preemptions"]["count"] == 2 and st["preemptions"]["lastPod"] in evicted, st
            wait_for(lambda n=n: ftj.cond(n, "Running").get("reason") == "Resumed", 30, 0.2, f"{n}: Resumed")
    finally:
        core.patch_node(drained, {"spec": {"unschedulable": None}})  # kubectl uncordon


def test_a_kueue_style_suspend_and_resume_keeps_the_run(ftj: FTJ):
    ftj.create(tiny_job("kueued", labels=RUN, queueName="team-gpus"))
    jname = "kueued-trainer"
    wait_for(lambda: ftj.job(jname).spec.suspend is True, 30, what="the Job created suspended")
    # Kueue admits the workload (unsuspends the Job) ...
    ftj.batch.patch_namespaced_job(jname, ftj.ns, {"spec": {"suspend": False}})
    (first,) = wait_for(lambda: running_pods(ftj, "kueued", 1), 45, 0.2, "the trainer pod Running")
    ftj.wait_phase("kueued", "Running", 30)
    job_uid = ftj.job(jname).metadata.uid
    # ... preempts it for a workload of higher priority (suspends the Job: its pods are stopped) ...
    ftj.batch.patch_namespaced_job(jname, ftj.ns, {"spec": {"suspend": True}})
    wait_for(lambda: not ftj.pods("kueued"), TERMINATE_AFTER_SECONDS + 30, 0.2, "the pods stopped and gone")
    wait_for(lambda: ftj.cond("kueued", "Suspended").get("status") == "True", 30, 0.2, "Suspended=True")
    assert ftj.job(jname).spec.suspend is True  # the operator does not undo Kueue's decision
    # ... and admits it again.
    ftj.batch.patch_namespaced_job(jname, ftj.ns, {"spec": {"suspend": False}})
    (again,) = wait_for(lambda: running_pods(ftj, "kueued", 1), 45, 0.2, "a trainer pod Running again")
    ftj.wait_phase("kueued", "Running", 30)
    assert again.metadata.uid != first.metadata.uid
    assert again.metadata.labels[RUN_ID_LABEL] == first.metadata.labels[RUN_ID_LABEL]
    assert [j.metadata.uid for j in ftj.jobs("kueued")] == [job_uid]
    job = ftj.job(jname)
    assert not job.status.failed, job.status  # stopping for a suspension is not a failure
    st = ftj.status("kueued")
    assert st["attempts"] == 1 and st["jobName"] == jname, st
