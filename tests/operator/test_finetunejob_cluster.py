"""The FineTuneJob controller on a real control plane, with `kubetune operator` running as a subprocess.

kwok fakes the pods: they run and complete (or fail with the label kwok.kubetune.io/outcome=fail; stay
Running with outcome=run). Labels of a FineTuneJob are propagated to its trainer pods.
"""

from __future__ import annotations

import copy

import pytest
from kubernetes import client

from kubetune.api.v1alpha1 import pvc_claims, validate_document
from kubetune.reconcile.chains import referenced_names
from kubetune.render.finetunejob import secret_uses
from tests.support.cluster import token_client
from tests.support.objects import FTJ, example_docs, tiny_job
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster
# Chained examples (model.fineTuneJobRef) wait for the jobs they refer to: test_chains_cluster.py runs them.
EXAMPLES = [(f, d) for f, d in example_docs() if not referenced_names(d)]
FAIL = {"kwok.kubetune.io/outcome": "fail"}
RUN = {"kwok.kubetune.io/outcome": "run"}


def _prepare_references(f: FTJ, doc: dict) -> None:
    """Create the Secrets and PVCs an example names (so only the operator's behaviour is under test)."""
    d = copy.deepcopy(doc)
    d["metadata"]["namespace"] = f.ns
    obj = validate_document(d).obj
    for use in secret_uses(obj):
        data = {k: "dGVzdA==" for k in use.required_keys}
        try:
            f.core.create_namespaced_secret(
                f.ns, client.V1Secret(metadata=client.V1ObjectMeta(name=use.name), data=data)
            )
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            f.core.patch_namespaced_secret(use.name, f.ns, {"data": data})
    for claim in pvc_claims(obj):
        # A statically bound PV (no provisioner on the test control plane): the scheduler needs it Bound.
        pv = f"{f.ns}-{claim}"
        f.core.create_persistent_volume(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv, "labels": {"kubetune.io/test-ns": f.ns}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": "/tmp/kubetune-test"},
                    "claimRef": {"namespace": f.ns, "name": claim},
                },
            }
        )
        f.core.create_namespaced_persistent_volume_claim(
            f.ns,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        wait_for(
            lambda c=claim: f.core.read_namespaced_persistent_volume_claim(c, f.ns).status.phase == "Bound",
            30,
            0.2,
            f"PVC {claim} bound",
        )


@pytest.fixture
def test_pvs(kube, ftj):
    """Deletes the PersistentVolumes made for this test's namespace (they are cluster-scoped)."""
    yield
    core = client.CoreV1Api(kube.api)
    for pv in core.list_persistent_volume(label_selector=f"kubetune.io/test-ns={ftj.ns}").items:
        core.delete_persistent_volume(pv.metadata.name)


# ------------------------------------------------------------------------------------------------


@pytest.mark.kwok
@pytest.mark.parametrize("doc", [d for _, d in EXAMPLES], ids=[f for f, _ in EXAMPLES])
def test_example_yields_children_and_runs(ftj: FTJ, doc, test_pvs):
    name = doc["metadata"]["name"]
    _prepare_references(ftj, doc)
    created = ftj.create(doc)
    uid = created["metadata"]["uid"]
    spec = validate_document({**doc, "metadata": {**doc["metadata"], "namespace": ftj.ns}}).obj.spec
    job = wait_for(lambda: ftj.job(f"{name}-trainer"), 45, what="the trainer Job")
    assert job.metadata.owner_references[0].uid == uid and job.metadata.owner_references[0].controller
    assert job.spec.completions == job.spec.parallelism == spec.resources.nodes
    assert job.spec.completion_mode == "Indexed"
    pod = job.spec.template.spec
    limits = pod.containers[0].resources.limits or {}
    if spec.resources.gpus_per_node:
        assert limits[spec.resources.gpu_resource] == str(spec.resources.gpus_per_node)
    assert {v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim} == set(
        pvc_claims(validate_document({**doc, "metadata": {**doc["metadata"], "namespace": ftj.ns}}).obj)
    )
    services = ftj.core.list_namespaced_service(
        ftj.ns, label_selector=f"kubetune.io/finetunejob={name}"
    ).items
    if spec.resources.nodes > 1:  # the headless Service for the rendezvous at pod 0: multi-node runs only
        assert [s.metadata.name for s in services] == [f"{name}-trainer"]
        assert services[0].spec.cluster_ip == "None"
    else:
        assert services == []
    role = ftj.rbac.read_namespaced_role(f"{name}-trainer", ftj.ns)
    assert all(r.resource_names == [name] for r in role.rules)
    ftj.rbac.read_namespaced_role_binding(f"{name}-trainer", ftj.ns)
    ftj.core.read_namespaced_service_account(f"{name}-trainer", ftj.ns)
    cm = ftj.core.read_namespaced_config_map(f"{name}-trainer-config", ftj.ns)
    assert "config.yaml" in cm.data
    if spec.queue_name:
        assert job.spec.suspend is True
        assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == spec.queue_name
        st = wait_for(
            lambda: (c := ftj.cond(name, "Suspended")).get("reason") == "WaitingForAdmission" and c, 20
        )
        assert ftj.status(name)["phase"] == "Pending", st
        return
    st = ftj.wait_phase(name, "Succeeded", 60)
    assert st["jobName"] == f"{name}-trainer" and st["attempts"] == 1
    assert st["startTime"] and st["completionTime"]
    assert {c["type"] for c in st["conditions"]} == {
        "Validated",
        "Running",
        "Succeeded",
        "Failed",
        "Suspended",
        "Ready",
        "Reconciling",
        "Stalled",
    }
    assert all(c["observedGeneration"] == 1 for c in st["conditions"])
    kstatus = {c["type"]: c["status"] for c in st["conditions"]}
    assert (kstatus["Ready"], kstatus["Reconciling"], kstatus["Stalled"]) == ("True", "False", "False")


@pytest.mark.kwok
def test_success_events_and_metrics(ftj: FTJ, operator):
    ftj.create(tiny_job("ok"))
    st = ftj.wait_phase("ok", "Succeeded", 60)
    assert st["observedGeneration"] == 1
    reasons = {e.reason for e in ftj.events("ok")}
    assert {"JobCreated", "Completed"} <= reasons, reasons
    assert operator.metric("kubetune_finetunejob_apply_to_job_seconds_count") >= 1
    assert operator.metric("controller_runtime_reconcile_total", controller="finetunejob") >= 1
    assert operator.metric("kubetune_finetunejobs", phase="Succeeded") >= 1


@pytest.mark.kwok
def test_failed_pod_new_attempts_then_failed(ftj: FTJ):
    ftj.create(tiny_job("flaky", labels=FAIL, backoffLimit=1))
    st = ftj.wait_phase("flaky", "Failed", 60)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "all 2 attempts failed" in failed["message"] and "exited with code 1" in failed["message"]
    assert st["attempts"] == 2 and st["jobName"] == "flaky-trainer-2"
    assert "AttemptFailed" in {e.reason for e in ftj.events("flaky")}
    # the failed earlier attempt was deleted; no third attempt was made
    wait_for(lambda: [j.metadata.name for j in ftj.jobs("flaky")] == ["flaky-trainer-2"], 20)


@pytest.mark.kwok
def test_second_attempt_succeeds(ftj: FTJ):
    labels = {**FAIL, "kwok.kubetune.io/run-duration": "2s"}
    ftj.create(tiny_job("retry", labels=labels, backoffLimit=2))
    wait_for(lambda: ftj.jobs("retry"), 20, what="attempt 1")
    # Attempt 1's pods carry the fail label; attempt 2 is rendered from the labels as they are now.
    ftj.patch("retry", {"metadata": {"labels": {"kwok.kubetune.io/outcome": None}}})
    st = ftj.wait_phase("retry", "Succeeded", 60)
    assert st["attempts"] == 2 and st["jobName"] == "retry-trainer-2"


@pytest.mark.kwok
def test_suspend_and_resume(ftj: FTJ):
    ftj.create(tiny_job("sus", labels=RUN))
    ftj.wait_phase("sus", "Running", 30)
    ftj.patch("sus", {"spec": {"suspend": True}})
    st = ftj.wait_phase("sus", "Suspended", 30)
    assert ftj.job("sus-trainer").spec.suspend is True
    wait_for(
        lambda: not [p for p in ftj.pods("sus") if not p.metadata.deletion_timestamp], 30, what="pods gone"
    )
    assert st["attempts"] == 1
    ftj.patch("sus", {"spec": {"suspend": False}})
    ftj.wait_phase("sus", "Running", 30)
    assert ftj.job("sus-trainer").spec.suspend is False
    assert len(ftj.jobs("sus")) == 1 and ftj.status("sus")["attempts"] == 1
    assert {"Suspended", "Resumed"} <= {e.reason for e in ftj.events("sus")}


@pytest.mark.kwok
def test_kueue_queue_starts_suspended_until_admitted(ftj: FTJ, operator):
    ftj.create(tiny_job("queued", queueName="team-gpus"))
    job = wait_for(lambda: ftj.job("queued-trainer"), 20)
    assert job.spec.suspend is True
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-gpus"
    wait_for(lambda: ftj.cond("queued", "Suspended").get("reason") == "WaitingForAdmission", 20)
    assert ftj.status("queued")["phase"] == "Pending"
    # The operator never admits by itself: after it looked again (an edit of the object), still suspended.
    looked = operator.reconciles("FineTuneJob", ftj.ns, "queued")
    ftj.patch("queued", {"metadata": {"annotations": {"poke": "1"}}})
    operator.wait_reconciled("FineTuneJob", ftj.ns, "queued", after=looked)
    assert ftj.job("queued-trainer").spec.suspend is True
    # Kueue admits the workload by unsuspending the Job; the operator leaves that alone.
    ftj.batch.patch_namespaced_job("queued-trainer", ftj.ns, {"spec": {"suspend": False}})
    ftj.wait_phase("queued", "Succeeded", 60)


@pytest.mark.kwok
def test_pending_deadline_quotes_the_scheduler(ftj: FTJ):
    ftj.create(tiny_job("toobig", resources={"nodes": 1, "gpusPerNode": 16}, pendingDeadlineSeconds=3))
    st = ftj.wait_phase("toobig", "Failed", 40)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PendingDeadlineExceeded"
    assert "Insufficient nvidia.com/gpu" in failed["message"], failed["message"]
    wait_for(lambda: not ftj.jobs("toobig"), 20, what="the pending Job deleted")
    assert "PendingDeadlineExceeded" in {e.reason for e in ftj.events("toobig")}


def test_deleting_the_finetunejob_deletes_children(ftj: FTJ):
    ftj.create(tiny_job("gone", suspend=True))
    wait_for(lambda: ftj.jobs("gone"), 20)
    ftj.delete("gone")

    def all_gone():
        sel = "kubetune.io/finetunejob=gone"
        return not (
            ftj.jobs("gone")
            or ftj.core.list_namespaced_config_map(ftj.ns, label_selector=sel).items
            or ftj.core.list_namespaced_service(ftj.ns, label_selector=sel).items
            or ftj.rbac.list_namespaced_role(ftj.ns, label_selector=sel).items
            or ftj.core.list_namespaced_service_account(ftj.ns, label_selector=sel).items
        )

    wait_for(all_gone, 60, 0.3, "garbage collection of the children")


def test_missing_secret_is_a_clear_condition(ftj: FTJ):
    ftj.create(
        tiny_job("nosecret", model={"uri": "hf://meta-llama/Llama-3.1-8B", "secretRef": {"name": "hf-token"}})
    )
    c = wait_for(lambda: (c := ftj.cond("nosecret", "Running")).get("reason") == "SecretNotFound" and c, 20)
    assert "Secret 'hf-token'" in c["message"] and "spec.model.secretRef" in c["message"]
    assert ftj.status("nosecret")["phase"] == "Pending"
    assert not ftj.jobs("nosecret")
    assert "SecretNotFound" in {e.reason for e in ftj.events("nosecret")}
    ftj.core.create_namespaced_secret(
        ftj.ns, client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token"), string_data={"HF_TOKEN": "x"})
    )
    wait_for(lambda: ftj.jobs("nosecret"), 30, 0.2, "the Job once the Secret exists")


@pytest.mark.kwok
def test_restart_mid_run_no_duplicate_no_lost_status(ftj: FTJ, operator):
    ftj.create(tiny_job("steady", labels=RUN))
    before = ftj.wait_phase("steady", "Running", 30)
    job_uid = ftj.job("steady-trainer").metadata.uid
    rv = ftj.get("steady")["metadata"]["resourceVersion"]
    operator.restart()
    # The restarted operator (a new process, its count starts at 0) lists and reconciles everything.
    operator.wait_reconciled("FineTuneJob", ftj.ns, "steady", after=0)
    assert [j.metadata.uid for j in ftj.jobs("steady")] == [job_uid]
    after = ftj.get("steady")
    assert after["metadata"]["resourceVersion"] == rv, "a restart rewrote an unchanged object"
    assert after["status"]["conditions"] == before["conditions"]
    assert after["status"]["startTime"] == before["startTime"]


@pytest.mark.kwok
def test_unchanged_object_makes_no_writes(ftj: FTJ, operator):
    ftj.create(tiny_job("quiet"))
    ftj.wait_phase("quiet", "Succeeded", 60)
    sel = "kubetune.io/finetunejob=quiet"

    def versions():
        return sorted(
            [
                o.metadata.resource_version
                for o in ftj.core.list_namespaced_config_map(ftj.ns, label_selector=sel).items
            ]
            + [
                o.metadata.resource_version
                for o in ftj.core.list_namespaced_service(ftj.ns, label_selector=sel).items
            ]
            + [
                o.metadata.resource_version
                for o in ftj.rbac.list_namespaced_role(ftj.ns, label_selector=sel).items
            ]
            + [o.metadata.resource_version for o in ftj.jobs("quiet")]
        )

    children = versions()
    # Poke it (an annotation: an event, no spec change), and wait until the operator has looked at it.
    looked = operator.reconciles("FineTuneJob", ftj.ns, "quiet")
    writes = operator.metric("kubetune_api_writes_total")
    poked = ftj.patch("quiet", {"metadata": {"annotations": {"poke": "1"}}})
    operator.wait_reconciled("FineTuneJob", ftj.ns, "quiet", after=looked)
    assert ftj.get("quiet")["metadata"]["resourceVersion"] == poked["metadata"]["resourceVersion"]
    assert versions() == children
    assert operator.metric("kubetune_api_writes_total") == writes


@pytest.mark.kwok
def test_spec_change_starts_a_new_run(ftj: FTJ):
    ftj.create(tiny_job("change", labels=RUN))
    ftj.wait_phase("change", "Running", 30)
    old = ftj.job("change-trainer")
    old_run = old.metadata.labels["kubetune.io/run-id"]
    ftj.patch("change", {"spec": {"training": {"maxSteps": 20}}})

    def new_job():
        jobs = ftj.jobs("change")
        return len(jobs) == 1 and jobs[0].metadata.uid != old.metadata.uid and jobs[0]

    job = wait_for(new_job, 30, 0.2, "the new run's Job")
    assert job.metadata.labels["kubetune.io/run-id"] != old_run
    st = ftj.wait_phase("change", "Running", 30)
    assert st["observedGeneration"] == 2 and st["attempts"] == 1
    assert "generation 2" in next(c for c in st["conditions"] if c["type"] == "Running")["message"]
    assert "NewRun" in {e.reason for e in ftj.events("change")}
    # lifecycle fields change in place: no new run (once the operator has seen generation 3)
    ftj.patch("change", {"spec": {"backoffLimit": 5}})
    wait_for(lambda: ftj.status("change").get("observedGeneration") == 3, 30, 0.2, "observedGeneration 3")
    assert [j.metadata.uid for j in ftj.jobs("change")] == [job.metadata.uid]


@pytest.mark.kwok
def test_ttl_deletes_the_finetunejob(ftj: FTJ):
    ftj.create(tiny_job("short", ttlSecondsAfterFinished=2))
    ftj.wait_phase("short", "Succeeded", 60)

    def deleted():
        try:
            ftj.get("short")
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(deleted, 30, 0.2, "the TTL deletion")


def test_serviceaccount_token_patches_only_its_own_status(kube, ftj: FTJ, tmp_path):
    ftj.create(tiny_job("mine", suspend=True))
    ftj.create(tiny_job("other", suspend=True))
    wait_for(lambda: ftj.rbac.read_namespaced_role_binding("mine-trainer", ftj.ns), 20)
    ftj.wait_phase("mine", "Suspended", 20)
    token = ftj.core.create_namespaced_service_account_token(
        "mine-trainer",
        ftj.ns,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status.token
    co = client.CustomObjectsApi(token_client(kube, token, tmp_path))
    progress = {"status": {"progress": {"step": 5, "totalSteps": 10, "percent": 50.0, "loss": 1.25}}}
    patched = co.patch_namespaced_custom_object_status(
        "kubetune.io", "v1alpha1", ftj.ns, "finetunejobs", "mine", progress
    )
    assert patched["status"]["progress"]["step"] == 5
    co.get_namespaced_custom_object("kubetune.io", "v1alpha1", ftj.ns, "finetunejobs", "mine")
    with pytest.raises(client.ApiException) as denied:
        co.patch_namespaced_custom_object_status(
            "kubetune.io", "v1alpha1", ftj.ns, "finetunejobs", "other", progress
        )
    assert denied.value.status == 403
    with pytest.raises(client.ApiException) as denied_spec:
        co.patch_namespaced_custom_object(
            "kubetune.io", "v1alpha1", ftj.ns, "finetunejobs", "mine", {"spec": {"suspend": False}}
        )
    assert denied_spec.value.status == 403
    # The operator keeps the trainer's fields: resume (a reconcile with status writes) and look again.
    ftj.patch("mine", {"spec": {"suspend": False}})
    wait_for(lambda: ftj.cond("mine", "Suspended").get("status") == "False", 20)
    assert ftj.status("mine")["progress"]["step"] == 5
