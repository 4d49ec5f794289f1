"""The operator core on a real control plane: any legal FineTuneJob name gets all its children, and
`kubetune operator` logs in through an exec-plugin kubeconfig (how EKS, GKE, AKS and OIDC users log in).
"""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from kubetune.render.finetunejob import configmap_name, job_name, service_name, serviceaccount_name
from tests.support.controlplane import OUTCOME_LABEL
from tests.support.objects import FTJ, tiny_job
from tests.support.operator import Operator
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

NAMES = {
    "dotted": "llama.v2.sft",
    "63": "q" * 30 + "." + "r" * 32,
    "253": ".".join(["abcdefgh" * 7 + "abcdefg"] * 3) + "." + "z" * 61,
}


@pytest.mark.kwok
@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_any_legal_name_gets_its_children_and_pods(ftj: FTJ, name: str):
    assert len(name) <= 253
    created = ftj.create(tiny_job(name, resources={"nodes": 2, "gpusPerNode": 1}, labels=None))
    uid = created["metadata"]["uid"]
    jname = job_name(name)
    job = wait_for(lambda: ftj.job(jname), 45, what=f"the trainer Job {jname}")
    assert job.metadata.owner_references[0].uid == uid
    svc = ftj.core.read_namespaced_service(service_name(name), ftj.ns)
    assert svc.metadata.owner_references[0].uid == uid and svc.spec.cluster_ip == "None"
    ftj.core.read_namespaced_config_map(configmap_name(name), ftj.ns)
    ftj.core.read_namespaced_service_account(serviceaccount_name(name), ftj.ns)
    role = ftj.rbac.read_namespaced_role(serviceaccount_name(name), ftj.ns)
    assert all(rule.resource_names == [name] for rule in role.rules)
    ftj.rbac.read_namespaced_role_binding(serviceaccount_name(name), ftj.ns)
    # The Job controller made both pods: their hostnames (JOB-INDEX) and labels were valid.
    pods = wait_for(
        lambda: (
            p
            if len(p := ftj.core.list_namespaced_pod(ftj.ns, label_selector=f"job-name={jname}").items) == 2
            else None
        ),
        45,
        what="both trainer pods",
    )
    assert sorted(p.spec.hostname for p in pods) == [f"{jname}-0", f"{jname}-1"]
    assert all(p.spec.subdomain == service_name(name) for p in pods)
    status = ftj.wait_phase(name, "Succeeded", 90)
    assert status["jobName"] == jname
    warnings = [e for e in ftj.events(name) if e.type == "Warning"]
    assert not warnings, [(e.reason, e.message) for e in warnings]


# ------------------------------------------------------------------------------------------------
# exec-plugin login

PLUGIN = """\
import datetime as dt, json, pathlib, sys
here = pathlib.Path(sys.argv[1])
with open(here / "calls", "a") as fh:
    fh.write("x\\n")
# Valid for 5 min 8 s: the client refreshes 5 minutes before expiry, so it runs the plugin again after 8 s.
expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5, seconds=8)
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1beta1",
    "kind": "ExecCredential",
    "status": {"token": (here / "token").read_text().strip(),
               "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
}))
"""


def _exec_kubeconfig(admin_kubeconfig: str, plugin_dir: Path) -> Path:
    """A kubeconfig like a cloud provider's: the cluster's server and CA, a user that runs a command."""
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    script = plugin_dir / "credential-plugin.py"
    script.write_text(PLUGIN)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [
            {
                "name": "exec-user",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": sys.executable,
                        "args": [str(script), str(plugin_dir)],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "exec-user"}}],
        "current-context": "test",
    }
    assert "client-key-data" not in json.dumps(config) and "token" not in json.dumps(config)
    path = plugin_dir / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def exec_login(kube, tmp_path):
    """A ServiceAccount with cluster-admin whose token only an exec plugin hands out; a namespace."""
    core = client.CoreV1Api(kube.api)
    rbac = client.RbacAuthorizationV1Api(kube.api)
    ns = kube.new_namespace("execlogin")
    core.create_namespaced_service_account(ns, {"metadata": {"name": "operator"}})
    binding = f"kubetune-test-{ns}"
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": binding},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}],
        }
    )
    token = core.create_namespaced_service_account_token(
        "operator", ns, {"spec": {"audiences": [], "expirationSeconds": 3600}}
    ).status.token
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "token").write_text(token)
    yield ns, _exec_kubeconfig(kube.kubeconfig, plugin_dir), plugin_dir
    rbac.delete_cluster_role_binding(binding)
    kube.delete_namespace(ns)


@pytest.mark.kwok
def test_operator_logs_in_through_an_exec_plugin(kube, crds, exec_login, tmp_path):
    ns, kubeconfig, plugin_dir = exec_login
    op = Operator(str(kubeconfig), tmp_path / "operator", namespaces="execlogin-*")
    op.start()
    try:
        f = FTJ(kube, ns)
        f.create(tiny_job("via-exec"))
        job = wait_for(lambda: f.job("via-exec-trainer"), 45, what="the trainer Job (operator on exec login)")
        assert any(m.manager == "kubetune" for m in job.metadata.managed_fields)
        assert calls(plugin_dir) >= 1
        # The credential expires (as the client sees it) 8 s after the plugin made it: the next request
        # runs the plugin again, and the operator goes on with the new token.
        before = calls(plugin_dir)
        time.sleep(9)
        # It keeps running (kwok outcome "run"), so the suspend below finds it running, not finished.
        f.create(tiny_job("after-refresh", labels={OUTCOME_LABEL: "run"}))
        wait_for(lambda: f.job("after-refresh-trainer"), 45, what="the second trainer Job")
        assert calls(plugin_dir) > before
        f.patch("after-refresh", {"spec": {"suspend": True}})
        f.wait_phase("after-refresh", "Suspended", 45)
        assert "unsupported kubeconfig" not in op.log_tail(400)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n---- operator log (tail) ----\n{op.log_tail(150)}") from None
    finally:
        op.stop()
    # kubetune wrote nothing next to the kubeconfig (the only files are the test's own).
    assert sorted(p.name for p in plugin_dir.iterdir()) == [
        "calls",
        "credential-plugin.py",
        "kubeconfig",
        "token",
    ]


def calls(plugin_dir: Path) -> int:
    """How many times the exec plugin ran."""
    return len((plugin_dir / "calls").read_text().splitlines())
