"""The Helm chart: it lints, renders what a user expects, and installs into a real API server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from kubetune import crdgen
from tests.support.controlplane import ensure_testbin
from tests.support.waiting import wait_for

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubetune"
KUBE_VERSION = "1.36.3"


@pytest.fixture(scope="module")
def helm() -> str:
    return str(ensure_testbin().binary("helm"))


def run_helm(helm: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, env=env, timeout=180)


def render(helm: str, *values: str) -> list[dict]:
    sets = [arg for value in values for arg in ("--set", value)]
    proc = run_helm(helm, "template", "kt", str(CHART), "--namespace", "kubetune-system",
                    "--kube-version", KUBE_VERSION, *sets)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_lints(helm):
    proc = run_helm(helm, "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_render_has_crds_operator_and_rbac(helm):
    docs = render(helm)
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    assert set(crds) == {"finetunejobs.kubetune.io", "modelserves.kubetune.io"}
    # The chart's CRDs are the generated ones, plus Helm's keep policy.
    for generated in crdgen.crd_documents():
        rendered = crds[generated["metadata"]["name"]]
        assert rendered["spec"] == generated["spec"]
        assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kubetune/kubetune-operator:0.1.0"
    assert container["args"] == ["operator", "--standalone", "--leader-elect", "--leader-election-id=kt-kubetune",
                                 "--leader-election-namespace=kubetune-system", "--all-namespaces"]  # fmt: skip
    assert deployment["spec"]["replicas"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    (role,) = by_kind(docs, "ClusterRole")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    for needed in [("kubetune.io", "finetunejobs/status"), ("batch", "jobs"), ("apps", "deployments"),
                   ("rbac.authorization.k8s.io", "roles"), ("", "events")]:  # fmt: skip
        assert needed in granted
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == by_kind(docs, "ServiceAccount")[0]["metadata"]["name"]


def test_values_switch_crds_namespaces_and_images(helm):
    docs = render(helm, "crds.enabled=false", "watchNamespaces={ml,research}", "trainerImage=registry.local/trainer:1",
                  "image.tag=dev")  # fmt: skip
    assert by_kind(docs, "CustomResourceDefinition") == []
    (container,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert container["args"][-2:] == ["--namespace=ml", "--namespace=research"]
    assert container["image"].endswith(":dev")
    assert {"name": "KUBETUNE_TRAINER_IMAGE", "value": "registry.local/trainer:1"} in container["env"]
    keep_off = render(helm, "crds.keep=false")
    assert all("annotations" not in d["metadata"] for d in by_kind(keep_off, "CustomResourceDefinition"))


def test_values_schema_rejects_unknown_and_wrong_values(helm):
    for bad, word in [
        ("bogus=1", "bogus"),
        ("logLevel=LOUD", "logLevel"),
        ("replicaCount=-1", "replicaCount"),
        ("leaderElection.leaseName=Not_A_Name", "leaseName"),
    ]:
        proc = run_helm(helm, "template", "kt", str(CHART), "--kube-version", KUBE_VERSION, "--set", bad)
        assert proc.returncode != 0
        assert word in proc.stderr


def test_two_replicas_with_leader_election(helm):
    """replicaCount 2: both replicas are candidates for one Lease in the release namespace; the RBAC for it
    is a namespaced Role (create, then get/update of that Lease only); updates roll (the new pod stands by
    until the old one releases the lease)."""
    docs = render(helm, "replicaCount=2", "leaderElection.leaseDurationSeconds=30",
                  "leaderElection.renewDeadlineSeconds=20")  # fmt: skip
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}  # fmt: skip
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"--leader-elect", "--leader-election-id=kt-kubetune",
            "--leader-election-namespace=kubetune-system"} <= set(container["args"])  # fmt: skip
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_LEASE_DURATION_SECONDS"] == "30"
    assert env["KUBETUNE_RENEW_DEADLINE_SECONDS"] == "20"
    assert env["KUBETUNE_RETRY_PERIOD_SECONDS"] == "2"
    (role,) = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == "kubetune-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kt-kubetune"],
         "verbs": ["get", "update"]},
    ]  # fmt: skip
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == by_kind(docs, "ServiceAccount")[0]["metadata"]["name"]
    # The ClusterRole grants nothing on leases: the Lease lives only in the release namespace.
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert not any("leases" in rule["resources"] for rule in cluster_role["rules"])


def test_leader_election_off_means_one_replica_recreated(helm):
    docs = render(helm, "leaderElection.enabled=false")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert not any(arg.startswith("--leader-elect") for arg in container["args"])
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []
    proc = run_helm(helm, "template", "kt", str(CHART), "--kube-version", KUBE_VERSION,
                    "--set", "leaderElection.enabled=false", "--set", "replicaCount=2")  # fmt: skip
    assert proc.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled=true" in proc.stderr


@pytest.mark.kwok
def test_helm_install_on_the_real_api_server(helm, kube, namespace):
    """helm install creates CRDs the API server accepts and an operator Deployment that becomes Available."""
    release = f"kt-{namespace}"[:50]
    # The CRDs may already be installed by other tests: let this release own only the namespaced parts.
    proc = run_helm(helm, "install", release, str(CHART), "--namespace", namespace, "--set", "crds.enabled=false",
                    "--wait", "--timeout", "120s", env=kube.env())  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        apps = client.AppsV1Api(kube.api)
        deployment = apps.read_namespaced_deployment(f"{release}-kubetune" if "kubetune" not in release else release,
                                                     namespace)  # fmt: skip
        assert deployment.status.available_replicas == 1
        rbac = client.RbacAuthorizationV1Api(kube.api)
        role = rbac.read_cluster_role(deployment.metadata.name)
        assert any("finetunejobs" in (rule.resources or []) for rule in role.rules)
        # The API server's own authorizer: the operator's ServiceAccount may take and renew its Lease.
        account = deployment.spec.template.spec.service_account_name
        for verb, name in [
            ("create", None),
            ("get", deployment.metadata.name),
            ("update", deployment.metadata.name),
        ]:
            review = client.AuthorizationV1Api(kube.api).create_subject_access_review(
                client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
                    user=f"system:serviceaccount:{namespace}:{account}",
                    resource_attributes=client.V1ResourceAttributes(
                        group="coordination.k8s.io", resource="leases", verb=verb, namespace=namespace, name=name
                    ),
                ))
            )  # fmt: skip
            assert review.status.allowed, (verb, review.status)
        status = json.loads(
            run_helm(helm, "status", release, "-n", namespace, "-o", "json", env=kube.env()).stdout
        )
        assert status["info"]["status"] == "deployed"
    finally:
        run_helm(helm, "uninstall", release, "--namespace", namespace, "--wait", env=kube.env())
        rbac = client.RbacAuthorizationV1Api(kube.api)
        wait_for(
            lambda: not [r.metadata.name for r in rbac.list_cluster_role().items if r.metadata.name.startswith(release)],
            30, 0.5, f"the ClusterRoles of release {release} gone after helm uninstall",
        )  # fmt: skip


def test_chart_crd_templates_are_current():
    assert crdgen.check_crds(CHART / "templates" / "crds", crdgen.chart_files()) == []
