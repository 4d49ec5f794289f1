"""Writes the API server refuses end in a condition on the FineTuneJob and one Event, never in a silent
retry loop: a ValidatingAdmissionPolicy (built into the API server) that denies the trainer Job, and a
ResourceQuota that allows no Jobs. Runs `kubetune operator` against the real control plane.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.support.admission import denying_policy
from tests.support.objects import FTJ, tiny_job
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

POLICY_MESSAGE = "trainer Jobs are not allowed in this namespace (kubetune refusal test)"


def _rejected(f: FTJ, name: str) -> dict | bool:
    c = f.cond(name, "Running")
    return c.get("reason") == "ChildRejected" and c


def _events(f: FTJ, name: str, reason: str) -> list:
    return [e for e in f.events(name) if e.reason == reason]


@pytest.fixture
def deny_trainer_jobs(kube, ftj: FTJ):
    """Every Job in the test's namespace is denied."""

    def probe():
        pod = client.V1PodSpec(
            restart_policy="Never", containers=[client.V1Container(name="c", image="busybox")]
        )
        job = client.V1Job(
            metadata=client.V1ObjectMeta(name="probe"),
            spec=client.V1JobSpec(template=client.V1PodTemplateSpec(spec=pod)),
        )
        ftj.batch.create_namespaced_job(ftj.ns, job, dry_run="All")

    with denying_policy(kube, ftj.ns, "batch", "jobs", "false", POLICY_MESSAGE, probe) as name:
        yield name


def test_admission_policy_denial_is_a_condition_and_one_event(ftj: FTJ, deny_trainer_jobs, kube, operator):
    ftj.create(tiny_job("denied"))
    running = wait_for(lambda: _rejected(ftj, "denied"), 30, 0.2, "Running=False ChildRejected")
    tried = operator.reconciles("FineTuneJob", ftj.ns, "denied")
    assert POLICY_MESSAGE in running["message"], running["message"]
    assert "Job 'denied-trainer'" in running["message"] and "admission" in running["message"]
    stalled = ftj.cond("denied", "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ChildRejected"
    assert POLICY_MESSAGE in stalled["message"]
    assert ftj.cond("denied", "Reconciling")["status"] == "False"
    st = ftj.status("denied")
    assert st["phase"] == "Pending" and st["observedGeneration"] == 1 and not ftj.jobs("denied")
    # The operator keeps retrying with backoff (0.5 s .. 5 s here) but says it once: three more refused tries.
    operator.wait_reconciled("FineTuneJob", ftj.ns, "denied", after=tried + 2, timeout=60)
    events = _events(ftj, "denied", "ChildRejected")
    assert len(events) == 1 and (events[0].count or 1) == 1, [(e.message, e.count) for e in events]
    assert events[0].type == "Warning" and POLICY_MESSAGE in events[0].message
    assert ftj.cond("denied", "Running")["lastTransitionTime"] == running["lastTransitionTime"]
    # The policy goes away: the next retry creates the Job and the condition clears.
    client.AdmissionregistrationV1Api(kube.api).delete_validating_admission_policy_binding(deny_trainer_jobs)
    wait_for(lambda: ftj.jobs("denied"), 30, 0.2, "the Job once the policy is gone")
    wait_for(lambda: ftj.cond("denied", "Stalled").get("status") == "False", 20, 0.2, "Stalled=False")


def test_resource_quota_is_a_condition_quoting_the_quota(ftj: FTJ, operator):
    ftj.core.create_namespaced_resource_quota(
        ftj.ns,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="no-jobs"),
            spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "0"}),
        ),
    )
    # The quota is enforced once the controller-manager has computed its usage.
    wait_for(
        lambda: (ftj.core.read_namespaced_resource_quota("no-jobs", ftj.ns).status.hard or {}).get(
            "count/jobs.batch"
        ),
        30,
        0.2,
        "the quota's status",
    )
    ftj.create(tiny_job("overquota"))
    running = wait_for(lambda: _rejected(ftj, "overquota"), 30, 0.2, "Running=False ChildRejected")
    assert "exceeded quota: no-jobs" in running["message"], running["message"]
    assert "count/jobs.batch" in running["message"] and "ResourceQuota" in running["message"]
    assert ftj.cond("overquota", "Stalled")["status"] == "True"
    tried = operator.reconciles("FineTuneJob", ftj.ns, "overquota")
    operator.wait_reconciled("FineTuneJob", ftj.ns, "overquota", after=tried + 1, timeout=60)  # 2 more tries
    assert len(_events(ftj, "overquota", "ChildRejected")) == 1
    # Room in the quota: the Job is created on the next retry.
    ftj.core.patch_namespaced_resource_quota("no-jobs", ftj.ns, {"spec": {"hard": {"count/jobs.batch": "5"}}})
    wait_for(lambda: ftj.jobs("overquota"), 40, 0.2, "the Job once the quota allows it")


CONFIG_MESSAGE = "trainer ConfigMaps are refused here (kubetune refusal test)"


def test_denied_configmap_is_a_condition_and_no_job(ftj: FTJ, kube, operator):
    def probe():
        cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="probe-trainer-config"))
        ftj.core.create_namespaced_config_map(ftj.ns, cm, dry_run="All")

    expression = "!object.metadata.name.endsWith('-trainer-config')"
    with denying_policy(kube, ftj.ns, "", "configmaps", expression, CONFIG_MESSAGE, probe):
        ftj.create(tiny_job("nocm"))
        running = wait_for(lambda: _rejected(ftj, "nocm"), 30, 0.2, "Running=False ChildRejected")
        assert (
            CONFIG_MESSAGE in running["message"] and "ConfigMap 'nocm-trainer-config'" in running["message"]
        )
        assert ftj.cond("nocm", "Stalled")["status"] == "True"
        tried = operator.reconciles("FineTuneJob", ftj.ns, "nocm")
        operator.wait_reconciled("FineTuneJob", ftj.ns, "nocm", after=tried + 1, timeout=60)  # 2 more tries
        assert not ftj.jobs("nocm")  # no Job without its config
        assert len(_events(ftj, "nocm", "ChildRejected")) == 1
    wait_for(lambda: ftj.jobs("nocm"), 30, 0.2, "the Job once the policy is gone")
