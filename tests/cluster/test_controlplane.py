"""Smoke tests that the test cluster is a real Kubernetes: versions, scheduling, the Job, Deployment
and garbage-collector controllers, TokenRequest + RBAC, watch resumption and CRD validation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml
from kubernetes import client, watch

from tests.support import controlplane as cpmod
from tests.support.cluster import KubeCluster, token_client
from tests.support.crds import apply_crds
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

PAUSE = "registry.k8s.io/pause:3.10"
REPO = Path(__file__).resolve().parents[2]


def condition(obj, type_: str) -> str | None:
    for c in (obj.status.conditions or []) if obj.status else []:
        if c.type == type_:
            return c.status
    return None


def with_condition(read, type_: str):
    """A check for wait_for: the object READ returns once its condition TYPE_ is True, else None."""

    def check():
        obj = read()
        return obj if condition(obj, type_) == "True" else None

    return check


def job(name: str, labels: dict | None = None, gpus: int = 1) -> client.V1Job:
    resources = client.V1ResourceRequirements(
        requests={"cpu": "100m", "memory": "64Mi"}, limits={"nvidia.com/gpu": str(gpus)} if gpus else None
    )
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels or {}),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[
                        client.V1Container(
                            name="main", image="busybox:1.36", command=["true"], resources=resources
                        )
                    ],
                ),
            ),
        ),
    )


def job_pods(kube: KubeCluster, namespace: str, name: str) -> list[client.V1Pod]:
    return client.CoreV1Api(kube.api).list_namespaced_pod(namespace, label_selector=f"job-name={name}").items


# ------------------------------------------------------------------------------------------------


def test_version_is_the_pinned_release(kube: KubeCluster):
    info = client.VersionApi(kube.api).get_code()
    if kube.flavor != "local":
        pytest.skip(f"the pinned version applies to the local control plane, not to {kube.flavor}")
    k8s_dir = Path(kube.control_plane.state["testbin"]["kubernetes"]).name  # kubernetes-vX.Y.Z
    pinned = k8s_dir.removeprefix("kubernetes-")
    assert pinned == "v1.36.3"
    assert info.git_version == pinned
    assert (info.major, info.minor) == ("1", "36")


def test_kwok_nodes_advertise_gpus(kube: KubeCluster):
    if not kube.kwok:
        pytest.skip("only the kwok nodes are known to carry 8 GPUs")
    nodes = client.CoreV1Api(kube.api).list_node(label_selector="type=kwok").items
    assert len(nodes) >= 2
    for node in nodes:
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert node.metadata.labels["nvidia.com/gpu.product"] == cpmod.GPU_PRODUCT
        assert node.metadata.labels["nvidia.com/gpu.count"] == "8"
        assert condition(node, "Ready") == "True"


@pytest.mark.kwok
def test_job_pod_is_scheduled_to_a_kwok_node_and_the_job_completes(kube: KubeCluster, namespace: str):
    batch = client.BatchV1Api(kube.api)
    batch.create_namespaced_job(namespace, job("ok", gpus=8))
    done = wait_for(
        with_condition(lambda: batch.read_namespaced_job("ok", namespace), "Complete"),
        timeout=60,
        what="Job Complete",
    )
    assert done.status.succeeded == 1
    assert condition(done, "Failed") in (None, "False")
    kwok_nodes = {
        n.metadata.name for n in client.CoreV1Api(kube.api).list_node(label_selector="type=kwok").items
    }
    (pod,) = job_pods(kube, namespace, "ok")
    assert pod.spec.node_name in kwok_nodes  # the scheduler placed it (8 GPUs fit exactly one node)
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


@pytest.mark.kwok
def test_a_pod_labelled_to_fail_fails_its_job(kube: KubeCluster, namespace: str):
    batch = client.BatchV1Api(kube.api)
    batch.create_namespaced_job(
        namespace, job("bad", labels={cpmod.OUTCOME_LABEL: "fail", cpmod.EXIT_CODE_KEY: "3"})
    )
    failed = wait_for(
        with_condition(lambda: batch.read_namespaced_job("bad", namespace), "Failed"),
        timeout=60,
        what="Job Failed",
    )
    assert failed.status.failed == 1
    assert condition(failed, "Complete") in (None, "False")
    assert {c.reason for c in failed.status.conditions if c.type == "Failed"} == {"BackoffLimitExceeded"}
    (pod,) = job_pods(kube, namespace, "bad")
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3


@pytest.mark.kwok
def test_run_duration_and_run_forever_labels(kube: KubeCluster, namespace: str):
    batch, core = client.BatchV1Api(kube.api), client.CoreV1Api(kube.api)
    batch.create_namespaced_job(namespace, job("slow", labels={cpmod.RUN_DURATION_KEY: "3s"}, gpus=0))
    batch.create_namespaced_job(namespace, job("forever", labels={cpmod.OUTCOME_LABEL: "run"}, gpus=0))
    running = wait_for(
        lambda: [p for p in job_pods(kube, namespace, "slow") if p.status.phase == "Running"],
        timeout=60,
        what="the slow pod Running",
    )
    started = running[0].status.start_time
    done = wait_for(
        with_condition(lambda: batch.read_namespaced_job("slow", namespace), "Complete"),
        timeout=60,
        what="slow Job Complete",
    )
    assert (done.status.completion_time - started).total_seconds() >= 2.5
    (forever,) = job_pods(kube, namespace, "forever")
    assert core.read_namespaced_pod(forever.metadata.name, namespace).status.phase == "Running"
    assert batch.read_namespaced_job("forever", namespace).status.active == 1


def test_deployment_becomes_available(kube: KubeCluster, namespace: str):
    apps = client.AppsV1Api(kube.api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="pause", image=PAUSE)]),
                ),
            ),
        ),
    )
    dep = wait_for(
        with_condition(lambda: apps.read_namespaced_deployment("web", namespace), "Available"),
        timeout=120,
        what="Deployment Available",
    )
    assert dep.status.ready_replicas == 2
    assert len(apps.list_namespaced_replica_set(namespace).items) == 1


def test_a_claim_of_the_default_storage_class_is_provisioned_and_mounted(kube: KubeCluster, namespace: str):
    core = client.CoreV1Api(kube.api)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="data"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany" if kube.kwok else "ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="uses-data"),
            spec=client.V1PodSpec(
                containers=[
                    client.V1Container(
                        name="pause",
                        image=PAUSE,
                        volume_mounts=[client.V1VolumeMount(name="data", mount_path="/data")],
                    )
                ],
                volumes=[
                    client.V1Volume(
                        name="data",
                        persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name="data"),
                    )
                ],
            ),
        ),
    )
    wait_for(
        lambda: core.read_namespaced_pod("uses-data", namespace).status.phase == "Running",
        timeout=120,
        what="the pod using the claim to run",
    )
    pvc = core.read_namespaced_persistent_volume_claim("data", namespace)
    assert pvc.status.phase == "Bound"
    assert pvc.spec.storage_class_name  # the default class was filled in by admission
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    assert pv.spec.claim_ref.uid == pvc.metadata.uid

    core.delete_namespaced_pod("uses-data", namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, timeout=60, what="the pod to go")
    core.delete_namespaced_persistent_volume_claim("data", namespace)

    def volume_gone() -> bool:  # reclaimPolicy Delete
        try:
            core.read_persistent_volume(pv.metadata.name)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(volume_gone, timeout=60, what="the released volume to be deleted")


def test_deleting_the_owner_garbage_collects_the_child(kube: KubeCluster, namespace: str):
    core = client.CoreV1Api(kube.api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"})
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="child",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
                    )
                ],
            )
        ),
    )
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander"))
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=60, what="the child to be garbage-collected")
    core.read_namespaced_config_map("bystander", namespace)  # not owned: still there


def test_service_account_token_is_limited_by_its_role(kube: KubeCluster, namespace: str, tmp_path: Path):
    core, rbac = client.CoreV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-configmaps"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
        ),
    )
    tr = core.create_namespaced_service_account_token(
        "reader",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    )
    assert tr.status.token.count(".") == 2  # a signed JWT

    sa_api = token_client(kube, tr.status.token, tmp_path)
    review = client.AuthenticationV1Api(sa_api).create_self_subject_review(client.V1SelfSubjectReview())
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:reader"

    sa_core = client.CoreV1Api(sa_api)

    def allowed() -> bool:
        try:
            sa_core.list_namespaced_config_map(namespace)
            return True
        except client.ApiException as exc:
            if exc.status != 403:
                raise
            return False

    wait_for(allowed, timeout=10, what="the RoleBinding to take effect")
    for call in (
        lambda: sa_core.list_namespaced_secret(namespace),
        lambda: sa_core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))
        ),
        lambda: sa_core.list_namespaced_config_map("default"),
    ):
        with pytest.raises(client.ApiException) as err:
            call()
        assert err.value.status == 403

    bogus = token_client(kube, tr.status.token[:-4] + "AAAA", tmp_path)
    with pytest.raises(client.ApiException) as err:
        client.CoreV1Api(bogus).list_namespaced_config_map(namespace)
    assert err.value.status == 401


def test_a_watch_resumes_after_the_api_server_restarts(kube: KubeCluster, namespace: str):
    if kube.control_plane is None:
        pytest.skip(f"restarting the API server needs the local control plane, not {kube.flavor}")
    # A second kube-apiserver on the same etcd (as in an HA control plane), so that restarting it does
    # not disturb other sessions that share the main one.
    with kube.control_plane.extra_apiserver() as apiserver:
        _watch_across_a_restart(apiserver, client.CoreV1Api(kube.client_for(apiserver.server)), namespace)


def _watch_across_a_restart(apiserver, core: client.CoreV1Api, namespace: str) -> None:
    start_rv = core.list_namespaced_config_map(namespace).metadata.resource_version
    seen: list[tuple[str, str, str]] = []  # (type, name, resourceVersion)
    ended: list[BaseException | None] = []

    def watch_until_broken() -> None:
        try:
            for ev in watch.Watch().stream(
                core.list_namespaced_config_map, namespace, resource_version=start_rv, timeout_seconds=120
            ):
                obj = ev["object"]
                seen.append((ev["type"], obj.metadata.name, obj.metadata.resource_version))
            ended.append(None)
        except BaseException as exc:  # the connection dies with the server
            ended.append(exc)

    t = threading.Thread(target=watch_until_broken, daemon=True)
    t.start()
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="before"))
    )
    wait_for(
        lambda: any(name == "before" for _, name, _ in seen), timeout=60, what="the watch to see 'before'"
    )
    old_pid = apiserver.pid

    apiserver.restart()  # SIGTERM to the process, then the same command line again

    assert apiserver.pid != old_pid
    t.join(timeout=30)
    assert not t.is_alive() and ended, "the first watch should have ended with the old API server"
    last_rv = seen[-1][2]
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after"))
    )

    # Resume from the last resourceVersion seen. A fresh API server's watch cache starts at etcd's
    # current revision, so if anything was written between our last event and the restart it answers
    # 410 Expired ("too old resource version"), exactly like a real cluster; then the Kubernetes watch
    # contract (client-go's reflector, kopf) is to relist and watch from the list's resourceVersion.
    resumed, expired = [], None
    try:
        for ev in watch.Watch().stream(
            core.list_namespaced_config_map, namespace, resource_version=last_rv, timeout_seconds=30
        ):  # timeout_seconds: the client raises 410
            resumed.append((ev["type"], ev["object"].metadata.name))
            if ev["object"].metadata.name == "after":
                break
    except client.ApiException as exc:
        expired = exc
    if expired is None:
        assert resumed == [("ADDED", "after")]  # nothing lost, nothing replayed
        return
    assert expired.status == 410 and "too old resource version" in str(expired.reason), expired
    listing = core.list_namespaced_config_map(namespace)
    assert {"before", "after"} <= {cm.metadata.name for cm in listing.items}  # etcd kept everything
    assert int(listing.metadata.resource_version) > int(last_rv)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="later"))
    )
    resumed = []
    for ev in watch.Watch().stream(
        core.list_namespaced_config_map,
        namespace,
        resource_version=listing.metadata.resource_version,
        timeout_seconds=30,
    ):
        resumed.append((ev["type"], ev["object"].metadata.name))
        if ev["object"].metadata.name == "later":
            break
    assert resumed == [("ADDED", "later")]


# ------------------------------------------------------------------------------------------------
# The project's CRDs (crds/*.yaml, written by `kubetune crds`)


def test_the_crds_are_accepted_and_a_cel_rule_rejects_a_bad_object(kube: KubeCluster, namespace: str):
    applied = apply_crds(kube.api)  # a structural-schema or CEL compile error would be rejected here
    assert set(applied) >= {"finetunejobs.kubetune.io", "modelserves.kubetune.io"}

    good = yaml.safe_load((REPO / "examples" / "bert-imdb-full.yaml").read_text())
    good["metadata"]["namespace"] = namespace
    co = client.CustomObjectsApi(kube.api)

    def create(body: dict) -> dict:
        return co.create_namespaced_custom_object(
            "kubetune.io", "v1alpha1", namespace, "finetunejobs", body, dry_run="All"
        )

    assert create(good)["spec"]["dataset"]["evalSplit"] == "test"

    both = yaml.safe_load(yaml.safe_dump(good))
    both["spec"]["dataset"]["evalFraction"] = 0.1
    with pytest.raises(client.ApiException) as err:
        create(both)
    assert err.value.status == 422
    assert "dataset.evalSplit and dataset.evalFraction are exclusive" in json.loads(err.value.body)["message"]

    multinode_cpu = yaml.safe_load(yaml.safe_dump(good))
    multinode_cpu["spec"]["resources"].update(nodes=2, gpusPerNode=0)
    multinode_cpu["spec"]["distributed"] = {"strategy": "fsdp"}
    with pytest.raises(client.ApiException) as err:
        create(multinode_cpu)
    assert err.value.status == 422
    assert (
        "resources.nodes > 1 on CPU (gpusPerNode 0) trains with DDP over gloo"
        in json.loads(err.value.body)["message"]
    )
