"""The gateway under test: `kubetune api` as a subprocess on the local control plane, running as a
ServiceAccount with exactly the chart's RBAC (rendered by Helm), and callers with tokens of their own.

Namespaces: ``gw-*`` for the API tests (no operator watches them: a FineTuneJob stays as the gateway made it),
``gwt-*`` for the training test, whose own `kubetune operator` watches them.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.helpers import (
    FULL_ACCESS,
    Gateway,
    chart_docs,
    grant,
    new_service_account,
    service_account_token,
    token_kubeconfig,
)
from tests.support.cluster import kubeconfig_ca_and_server
from tests.support.crds import apply_crds, wait_served


@pytest.fixture(scope="session")
def crds(kube):
    apply_crds(kube.api)
    return True


@dataclass
class GatewayIdentity:
    namespace: str
    service_account: str
    cluster_role: dict[str, Any]
    kubeconfig: Path


@pytest.fixture(scope="session")
def gateway_identity(kube, crds, tmp_path_factory):
    """The gateway's ServiceAccount with the chart's own ClusterRole and binding (helm template), and a
    kubeconfig with its token: the gateway under test has exactly the privileges a chart install gives it."""
    from kubernetes import client

    namespace = kube.new_namespace("gw-system")
    release = f"gw{uuid.uuid4().hex[:6]}"
    docs = chart_docs(release, namespace, "api-rbac.yaml")
    by_kind = {d["kind"]: d for d in docs}
    core, rbac = client.CoreV1Api(kube.api), client.RbacAuthorizationV1Api(kube.api)
    sa = by_kind["ServiceAccount"]
    core.create_namespaced_service_account(namespace, sa)
    rbac.create_cluster_role(by_kind["ClusterRole"])
    rbac.create_cluster_role_binding(by_kind["ClusterRoleBinding"])
    token = service_account_token(kube.api, namespace, sa["metadata"]["name"])
    path = token_kubeconfig(
        *kubeconfig_ca_and_server(kube.kubeconfig), token, tmp_path_factory.mktemp("gateway") / "kubeconfig"
    )
    yield GatewayIdentity(namespace, sa["metadata"]["name"], by_kind["ClusterRole"], path)
    for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
        with contextlib.suppress(client.ApiException):
            delete(by_kind["ClusterRole"]["metadata"]["name"])
    kube.delete_namespace(namespace)


@pytest.fixture(scope="session")
def claims(tmp_path_factory) -> Path:
    """Folders standing in for PersistentVolumeClaims: pvc://CLAIM/PATH is CLAIMS/CLAIM/PATH (the gateway's
    files volume is CLAIMS/kubetune-files, as a trainer pod sees it through its claim kubetune-files)."""
    root = tmp_path_factory.mktemp("claims")
    (root / "kubetune-files").mkdir()
    return root


@pytest.fixture(scope="session")
def gateway(kube, gateway_identity, claims, tmp_path_factory):
    gw = Gateway(
        gateway_identity.kubeconfig, tmp_path_factory.mktemp("gateway-logs"), claims / "kubetune-files"
    )
    gw.start()
    yield gw
    gw.stop()


@dataclass
class Team:
    """A namespace with a caller (ServiceAccount alice) who may use the whole API there."""

    namespace: str
    user: str
    token: str
    gateway: Gateway

    def client(self, **kwargs: Any):
        return self.gateway.client(self.token, self.namespace, **kwargs)


def make_team(kube, gateway: Gateway, prefix: str = "gw") -> Team:
    namespace = kube.new_namespace(prefix)
    wait_served(kube.api, namespace)
    new_service_account(kube.api, namespace, "alice")
    grant(kube.api, namespace, (namespace, "alice"), FULL_ACCESS)
    grant(kube.api, namespace, (namespace, "alice"), ["list"], "modelserves")
    token = service_account_token(kube.api, namespace, "alice")
    return Team(namespace, f"system:serviceaccount:{namespace}:alice", token, gateway)


@pytest.fixture
def team(kube, gateway):
    made = make_team(kube, gateway)
    yield made
    kube.delete_namespace(made.namespace)


@pytest.fixture(autouse=True)
def _gateway_log_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "gateway" in request.fixturenames:
        print("---- gateway log (tail) ----\n" + request.getfixturevalue("gateway").log_tail(80))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
