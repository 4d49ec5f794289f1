"""The real node (tests/support/realnode.py): real containers next to the kwok nodes.

Each test runs pods on node real-0 of the local control plane and checks what happened in the world:
the pod's address, its log read through the API server, what it got from the API server and from the
cluster DNS, the file it wrote on the node, the signal it received.
"""

from __future__ import annotations

import ipaddress
import threading
import time
import uuid

import pytest
from kubernetes import client

from tests.support import realnode
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.realnode, pytest.mark.cluster]


def pod_manifest(name: str, script: str, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "tolerations": [realnode.TOLERATION],
            "nodeSelector": realnode.NODE_SELECTOR,
            "containers": [{"name": "main", "image": realnode.TEST_IMAGE, "command": ["sh", "-c", script]}],
            **spec,
        },
    }


def pod_log(core: client.CoreV1Api, name: str, namespace: str) -> str:
    """The container's log, read through the API server from the kubelet (kubectl logs' path)."""
    resp = core.read_namespaced_pod_log(name, namespace, _preload_content=False)
    return resp.data.decode()


def run_to_completion(core: client.CoreV1Api, namespace: str, manifest: dict, timeout: float = 90.0):
    core.create_namespaced_pod(namespace, manifest)
    name = manifest["metadata"]["name"]

    def finished():
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = wait_for(finished, timeout, 0.5, f"pod {name} to finish")
    log = pod_log(core, name, namespace)
    assert pod.status.phase == "Succeeded", f"pod {name} {pod.status.phase}; its log:\n{log}"
    return pod, log


@pytest.fixture
def core(kube) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api)


@pytest.mark.timeout(120)
def test_the_node_is_ready_labelled_and_tainted_and_keeps_other_pods_away(real_node, core, namespace):
    # The node lifecycle controller removes the `node.kubernetes.io/not-ready` taint a moment after the
    # kubelet reports Ready (seen once in CI): wait for it before reading the node's own taints.
    node = wait_for(
        lambda: (
            (n := core.read_node(realnode.NODE_NAME))
            and not any(t.key == "node.kubernetes.io/not-ready" for t in n.spec.taints or [])
            and n
        ),
        60,
        0.5,
        "the not-ready taint gone",
    )
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True"
    assert node.metadata.labels[realnode.NODE_LABEL[0]] == realnode.NODE_LABEL[1]
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
        (realnode.TAINT["key"], realnode.TAINT["value"], realnode.TAINT["effect"])
    ]
    assert node.status.node_info.container_runtime_version.startswith("containerd://1.6")
    assert node.status.node_info.kubelet_version == client.VersionApi(core.api_client).get_code().git_version
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses == {"InternalIP": realnode.GATEWAY, "Hostname": realnode.NODE_NAME}
    # The kwok nodes are still there, untainted.
    kwok = core.list_node(label_selector="type=kwok").items
    assert len(kwok) == 2 and not any(n.spec.taints for n in kwok)

    # Without the toleration a pod that asks for the real node is not scheduled, for the taint.
    manifest = pod_manifest("untolerated", "true")
    del manifest["spec"]["tolerations"]
    core.create_namespaced_pod(namespace, manifest)

    def unschedulable():
        pod = core.read_namespaced_pod("untolerated", namespace)
        cond = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        return cond if cond is not None and cond.reason == "Unschedulable" else None

    cond = wait_for(unschedulable, 30, 0.5, "the untolerated pod to be found unschedulable")
    # (real-0 is the only node with the label; the kwok nodes lack it)
    assert "1 node(s) had untolerated taint(s)" in cond.message
    assert core.read_namespaced_pod("untolerated", namespace).spec.node_name is None


@pytest.mark.timeout(120)
def test_a_pod_runs_to_completion_with_an_address_of_the_bridge_and_a_readable_log(
    real_node, core, namespace
):
    pod, log = run_to_completion(
        core, namespace, pod_manifest("hello", 'echo "hello from $(hostname)"; ip -4 addr show eth0')
    )
    assert pod.spec.node_name == realnode.NODE_NAME
    ip = ipaddress.ip_address(pod.status.pod_ip)
    assert ip in ipaddress.ip_network(realnode.POD_CIDR) and str(ip) != realnode.GATEWAY
    # The log came from the kubelet through the API server (kubectl logs' path), and the container saw
    # the address the API reports on its own interface.
    assert "hello from hello" in log
    assert f"inet {ip}/" in log
    state = pod.status.container_statuses[0].state.terminated
    assert state.exit_code == 0 and state.reason == "Completed"


@pytest.mark.timeout(120)
def test_a_pod_reaches_the_api_server_through_the_kubernetes_service_with_its_token(
    real_node, core, namespace
):
    _, log = run_to_completion(
        core,
        namespace,
        pod_manifest(
            "apiprobe",
            "echo host=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; "
            "apiprobe /api /api/v1/namespaces/kube-system/secrets "
            f"&& apiprobe -server https://kubernetes.default.svc.{realnode.CLUSTER_DOMAIN} /version",
        ),
    )
    lines = log.splitlines()
    assert "host=10.96.0.1:443" in lines
    # /api is open to every authenticated identity; kube-system's Secrets are not the default
    # ServiceAccount's to list: the server knew who was asking.
    api = next(line for line in lines if line.startswith("/api "))
    assert api.startswith("/api 200 ") and '"kind":"APIVersions"' in api
    secrets = next(line for line in lines if line.startswith("/api/v1/namespaces/kube-system/secrets "))
    assert secrets.startswith("/api/v1/namespaces/kube-system/secrets 403 ")
    assert f"system:serviceaccount:{namespace}:default" in secrets
    # By name too (cluster DNS), with the certificate verified against the ServiceAccount's CA.
    version = next(line for line in lines if line.startswith("/version "))
    assert version.startswith("/version 200 ") and '"gitVersion"' in version


@pytest.mark.timeout(150)
def test_a_service_name_resolves_and_reaches_a_pod_on_the_node(real_node, core, namespace):
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "web",
            "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www",
            restartPolicy="Always",
        ),
    )
    service = core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    cluster_ip = service.spec.cluster_ip
    wait_for(
        lambda: core.read_namespaced_pod("web", namespace).status.phase == "Running",
        90,
        0.5,
        "pod web Running",
    )
    _, log = run_to_completion(
        core,
        namespace,
        pod_manifest(
            "client",
            f"nslookup web.{namespace}.svc.{realnode.CLUSTER_DOMAIN}; "
            # the short name through the search path, as the operator's smoke test uses it
            "for i in 1 2 3 4 5 6 7 8 9 10; do apiprobe http://web/ && break; sleep 1; done",
        ),
    )
    assert f"Name:\tweb.{namespace}.svc.{realnode.CLUSTER_DOMAIN}" in log
    assert f"Address: {cluster_ip}" in log
    assert "http://web/ 200 served-by-web" in log


@pytest.mark.timeout(120)
def test_a_real_local_claim_binds_and_the_pod_writes_into_the_node_directory(real_node, core, namespace):
    pv = real_node.new_volume("1Gi")
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "storageClassName": realnode.STORAGE_CLASS,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                # this very volume (others of the class may be free too)
                "volumeName": pv,
            },
        },
    )
    token = uuid.uuid4().hex
    manifest = pod_manifest("writer", f"echo {token} > /data/hello.txt && ls -l /data")
    manifest["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    manifest["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    run_to_completion(core, namespace, manifest)
    claim = core.read_namespaced_persistent_volume_claim("data", namespace)
    assert claim.status.phase == "Bound" and claim.spec.volume_name == pv
    assert (real_node.volume_dir(pv) / "hello.txt").read_text() == f"{token}\n"


@pytest.mark.timeout(150)
def test_a_bound_claim_without_a_volume_name_waits_for_its_pod(real_node, core, namespace):
    # WaitForFirstConsumer: the claim stays Pending until a pod uses it, then binds a real-local volume.
    real_node.new_volume("2Gi")
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "late"},
            "spec": {
                "storageClassName": realnode.STORAGE_CLASS,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "2Gi"}},
            },
        },
    )
    # The volume controller looked at it and waits for a pod (its Event says so): then it is still unbound.
    wait_for(
        lambda: [
            e for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=late").items
            if e.reason == "WaitForFirstConsumer"
        ],
        30, 0.5, "the WaitForFirstConsumer Event of claim late",
    )  # fmt: skip
    assert core.read_namespaced_persistent_volume_claim("late", namespace).status.phase == "Pending"
    manifest = pod_manifest("late-writer", "echo late > /data/late.txt")
    manifest["spec"]["containers"][0]["volumeMounts"] = [{"name": "late", "mountPath": "/data"}]
    manifest["spec"]["volumes"] = [{"name": "late", "persistentVolumeClaim": {"claimName": "late"}}]
    run_to_completion(core, namespace, manifest)
    claim = core.read_namespaced_persistent_volume_claim("late", namespace)
    assert claim.status.phase == "Bound"
    assert (real_node.volume_dir(claim.spec.volume_name) / "late.txt").read_text() == "late\n"


@pytest.mark.timeout(120)
def test_deleting_a_running_pod_sends_sigterm_to_its_container(real_node, core, namespace):
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "sleeper",
            "trap 'echo got SIGTERM; exit 0' TERM; echo ready; while true; do sleep 0.2; done",
            terminationGracePeriodSeconds=60,
        ),
    )
    wait_for(
        lambda: (
            core.read_namespaced_pod("sleeper", namespace).status.phase == "Running"
            and "ready" in pod_log(core, "sleeper", namespace)
        ),
        90,
        0.5,
        "pod sleeper to say ready",
    )
    # Follow the log (kubectl logs -f) while the pod is deleted: the stream ends when the container exits.
    lines: list[str] = []
    stream = core.read_namespaced_pod_log("sleeper", namespace, follow=True, _preload_content=False)
    reader = threading.Thread(
        target=lambda: lines.extend(chunk.decode() for chunk in stream.stream()), daemon=True
    )
    reader.start()
    t0 = time.monotonic()
    core.delete_namespaced_pod("sleeper", namespace)

    def gone():
        try:
            core.read_namespaced_pod("sleeper", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(gone, 55, 0.5, "pod sleeper to go away")
    took = time.monotonic() - t0
    reader.join(10)
    assert "got SIGTERM" in "".join(lines)
    # Well inside the 60 s grace period: the container exited on the signal, it was not killed at the end.
    assert took < 30, f"the pod took {took:.1f} s to go away"
