"""Secrets stay secret: the operator (running with the chart's own ClusterRole, through a ServiceAccount
token) runs a FineTuneJob and a ModelServe that use a Hub token and S3 credentials; their values appear
nowhere the operator writes or prints (its log, Events, ConfigMaps, Jobs, Deployments, pods, statuses).
The chart's RBAC gives no list or watch on Secrets and no wildcard."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
from kubernetes import client

from tests.support.chart import operator_kubeconfig, rendered_chart
from tests.support.crds import apply_crds
from tests.support.objects import FTJ, tiny_job
from tests.support.operator import Operator
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

NS_PREFIX = "relsec"  # this test's own operator watches only these
CREDENTIAL_ENV = ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def test_the_charts_rbac_has_no_list_or_watch_on_secrets_and_no_wildcard():
    roles = [d for d in rendered_chart() if d["kind"] in ("ClusterRole", "Role")]
    assert roles, "the chart renders no RBAC"
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: wildcard in {rule}"
            if "" in rule["apiGroups"] and "secrets" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get"}, f"{role['metadata']['name']}: {rule}"


@pytest.fixture
def rbac_operator(kube, tmp_path):
    apply_crds(kube.api)
    kubeconfig, name, sa_ns = operator_kubeconfig(kube, tmp_path)
    # DEBUG: the most the operator ever logs (request bodies and objects included, if it logged them).
    ns = kube.new_namespace(NS_PREFIX)
    op = Operator(kubeconfig, tmp_path / "log", namespaces=f"{NS_PREFIX}-*", KUBETUNE_LOG_LEVEL="DEBUG")
    op.start()
    yield op, ns
    op.stop()
    kube.drop_pods(ns)
    kube.delete_namespace(ns)
    kube.delete_namespace(sa_ns)
    rbac = client.RbacAuthorizationV1Api(kube.api)
    rbac.delete_cluster_role_binding(name)
    rbac.delete_cluster_role(name)


@pytest.mark.kwok
def test_secret_values_appear_nowhere(kube, rbac_operator):
    op, ns = rbac_operator
    hf = "hf_" + secrets.token_hex(16)
    key_id = "AKIA" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    values = [hf, key_id, secret_key]
    core = client.CoreV1Api(kube.api)
    core.create_namespaced_secret(ns, {"metadata": {"name": "hf-token"}, "stringData": {"HF_TOKEN": hf}})
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "s3-creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key},
        },
    )
    ftj = FTJ(kube, ns)
    ftj.create(
        tiny_job(
            "private",
            model={"uri": "hf://meta-llama/Llama-3.2-1B", "secretRef": {"name": "hf-token"}},
            output={"uri": "s3://models/private", "secretRef": {"name": "s3-creds"}},
        )
    )
    custom = client.CustomObjectsApi(kube.api)
    for name, model in (
        ("serve-hf", {"uri": "hf://meta-llama/Llama-3.2-1B", "secretRef": {"name": "hf-token"}}),
        ("serve-s3", {"uri": "s3://models/private/final", "secretRef": {"name": "s3-creds"}}),
    ):
        custom.create_namespaced_custom_object(
            "kubetune.io",
            "v1alpha1",
            ns,
            "modelserves",
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "ModelServe",
                "metadata": {"name": name},
                "spec": {"model": model, "resources": {"gpus": 1}},
            },
        )
    ftj.wait_phase("private", "Succeeded", 90)
    apps = client.AppsV1Api(kube.api)
    deployments = wait_for(
        lambda: len(d := apps.list_namespaced_deployment(ns).items) == 2 and d,
        60,
        0.3,
        "both TGI Deployments",
    )
    wait_for(
        lambda: all(
            (
                custom.get_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "modelserves", n).get(
                    "status"
                )
            )
            for n in ("serve-hf", "serve-s3")
        ),
        30,
        0.3,
        "ModelServe statuses",
    )

    # Credentials reach pods only as references to the Secret.
    batch = client.BatchV1Api(kube.api)
    templates = [j.spec.template.spec for j in batch.list_namespaced_job(ns).items]
    templates += [d.spec.template.spec for d in deployments]
    assert len(templates) == 3
    for pod in templates:
        for container in [*(pod.init_containers or []), *pod.containers]:
            for env in container.env or []:
                if env.name in CREDENTIAL_ENV or env.name.endswith(CREDENTIAL_ENV):
                    assert env.value is None and env.value_from.secret_key_ref is not None, env

    sanitize = kube.api.sanitize_for_serialization
    places = {
        "operator log": op.log_path.read_text(),
        "Events": json.dumps(sanitize(core.list_namespaced_event(ns).items)),
        "ConfigMaps": json.dumps(sanitize(core.list_namespaced_config_map(ns).items)),
        "Jobs": json.dumps(sanitize(batch.list_namespaced_job(ns).items)),
        "Deployments": json.dumps(sanitize(apps.list_namespaced_deployment(ns).items)),
        "Pods": json.dumps(sanitize(core.list_namespaced_pod(ns).items)),
        "FineTuneJob": json.dumps(ftj.get("private")),
        "ModelServes": json.dumps(
            custom.list_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "modelserves")
        ),
    }
    assert "private" in places["operator log"] and "serve-hf" in places["operator log"], "nothing was logged"
    for where, text in places.items():
        for value in values:
            for form in (value, base64.b64encode(value.encode()).decode()):
                assert form not in text, f"a secret value ({value[:6]}...) appears in the {where}"
