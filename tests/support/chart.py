"""The Helm chart as the tests use it outside tests/chart: its rendered manifests, and the operator's
identity as the chart grants it (a ServiceAccount bound to the chart's ClusterRole)."""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

import yaml
from kubernetes import client

from tests.support.cluster import KubeCluster, kubeconfig_ca_and_server
from tests.support.controlplane import ensure_testbin

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubetune"
KUBE_VERSION = "1.36.3"


def rendered_chart() -> list[dict]:
    """`helm template` of the chart with its default values."""
    helm = str(ensure_testbin().binary("helm"))
    proc = subprocess.run(
        [
            helm,
            "template",
            "kt",
            str(CHART),
            "--namespace",
            "kubetune-system",
            "--kube-version",
            KUBE_VERSION,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def operator_kubeconfig(kube: KubeCluster, tmp_path: Path) -> tuple[str, str, str]:
    """A ServiceAccount bound to (a copy of) the chart's ClusterRole, and a kubeconfig with a token for it:
    the operator runs with exactly the rights the chart gives it. Returns (kubeconfig path, the name of the
    ClusterRole and its binding, the ServiceAccount's namespace)."""
    (role,) = [d for d in rendered_chart() if d["kind"] == "ClusterRole"]
    name = f"kubetune-rel-{secrets.token_hex(4)}"
    role["metadata"] = {"name": name}
    rbac = client.RbacAuthorizationV1Api(kube.api)
    core = client.CoreV1Api(kube.api)
    rbac.create_cluster_role(role)
    sa_ns = kube.new_namespace("relsa")
    core.create_namespaced_service_account(sa_ns, {"metadata": {"name": "kubetune"}})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "kubetune", "namespace": sa_ns}],
        }
    )
    token = core.create_namespaced_service_account_token(
        "kubetune", sa_ns, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    server, ca = kubeconfig_ca_and_server(kube.kubeconfig)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca).decode()},
            }
        ],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path = tmp_path / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path), name, sa_ns
