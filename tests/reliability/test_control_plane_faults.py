"""Control-plane faults the operator must ride out, on the local control plane with `kubetune operator` as a
subprocess:

- API Priority and Fairness throttles the operator's user (a FlowSchema sends its ServiceAccount to a
  priority level with one seat's worth of concurrency and a queue of one): the API server answers 429 with
  Retry-After, and the operator still reconciles every object of a burst, without an error storm.
- Its watches expire (410 Gone, "too old resource version"): the operator's API server is stopped while
  objects are created and etcd is compacted past what the operator had seen; when it is back, the watches'
  resource versions are gone and kopf lists again, so the objects made meanwhile are reconciled.

Each test runs its own operator on namespaces of its own prefix (the session's operator watches rel-*).
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request

import pytest
from kubernetes import client

from tests.support.chart import operator_kubeconfig
from tests.support.crds import apply_crds
from tests.support.objects import FTJ, tiny_job
from tests.support.operator import Operator
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]

BURST = 40


def suspended_everywhere(ftj: FTJ, names: list[str]) -> list[str]:
    """The FineTuneJobs of NAMES not yet with their trainer Job and phase Suspended."""
    jobs = {j.metadata.name for j in ftj.batch.list_namespaced_job(ftj.ns).items}
    items = ftj.co.list_namespaced_custom_object("kubetune.io", "v1alpha1", ftj.ns, "finetunejobs")["items"]
    phase = {o["metadata"]["name"]: (o.get("status") or {}).get("phase") for o in items}
    return [n for n in names if f"{n}-trainer" not in jobs or phase.get(n) != "Suspended"]


def error_lines(op: Operator) -> list[str]:
    return [line for line in op.log_path.read_text().splitlines() if " ERROR " in line]


# ------------------------------------------------------------------------------------------------
# API Priority and Fairness


def apiserver_metric(kube, name: str, **labels: str) -> float:
    """The sum of a metric of the API server's /metrics over the series with LABELS."""
    resp = kube.api.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True
    )
    total = 0.0
    for line in resp.data.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rpartition(" ")[2])
    return total


def throttle(kube, name: str, sa_ns: str) -> None:
    """A priority level with one seat of the API server's concurrency, nothing borrowed, a queue of one; and
    a FlowSchema sending the operator's ServiceAccount there (before the built-in service-accounts schema).

    Seats are shared out in proportion to nominalConcurrencyShares (~250 in the built-in levels, 600 seats
    here): 1 share would still be 3 seats. A second level of 10000 shares that lends all of them (nothing
    routes to it; the built-in levels borrow its seats) brings the operator's level down to one."""
    flow = client.FlowcontrolApiserverV1Api(kube.api)
    flow.create_priority_level_configuration(
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "PriorityLevelConfiguration",
            "metadata": {"name": f"{name}-ballast"},
            "spec": {
                "type": "Limited",
                "limited": {
                    "nominalConcurrencyShares": 10000,
                    "lendablePercent": 100,
                    "limitResponse": {"type": "Reject"},
                },
            },
        }
    )
    flow.create_priority_level_configuration(
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "PriorityLevelConfiguration",
            "metadata": {"name": name},
            "spec": {
                "type": "Limited",
                "limited": {
                    "nominalConcurrencyShares": 1,
                    "lendablePercent": 0,
                    "borrowingLimitPercent": 0,
                    "limitResponse": {
                        "type": "Queue",
                        "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": 1},
                    },
                },
            },
        }
    )
    flow.create_flow_schema(
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": name},
            "spec": {
                "priorityLevelConfiguration": {"name": name},
                "matchingPrecedence": 500,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [
                            {
                                "kind": "ServiceAccount",
                                "serviceAccount": {"name": "kubetune", "namespace": sa_ns},
                            }
                        ],
                        "resourceRules": [
                            {
                                "verbs": ["*"],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "clusterScope": True,
                                "namespaces": ["*"],
                            }
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        }
    )
    # The API server applies FlowSchemas asynchronously; it reports when this one is in use.
    wait_for(
        lambda: any(
            c.type == "Dangling" and c.status == "False"
            for c in flow.read_flow_schema_status(name).status.conditions or []
        ),
        30,
        0.2,
        f"FlowSchema {name} in use",
    )


def unthrottle(kube, name: str) -> None:
    flow = client.FlowcontrolApiserverV1Api(kube.api)
    for delete, what in (
        (flow.delete_flow_schema, name),
        (flow.delete_priority_level_configuration, name),
        (flow.delete_priority_level_configuration, f"{name}-ballast"),
    ):
        try:
            delete(what)
        except client.ApiException as exc:
            if exc.status != 404:
                raise


@pytest.mark.timeout(420)
def test_a_throttled_operator_reconciles_every_object_without_an_error_storm(kube, tmp_path):
    apply_crds(kube.api)
    kubeconfig, name, sa_ns = operator_kubeconfig(kube, tmp_path)  # the chart's ClusterRole, its own user
    ns = kube.new_namespace("relapf")
    op = Operator(kubeconfig, tmp_path / "log", namespaces="relapf-*")
    try:
        op.start()
        throttle(kube, name, sa_ns)
        rejected_before = apiserver_metric(
            kube, "apiserver_flowcontrol_rejected_requests_total", priority_level=name
        )
        seats = apiserver_metric(kube, "apiserver_flowcontrol_nominal_limit_seats", priority_level=name)
        ftj = FTJ(kube, ns)
        names = [f"burst-{i}" for i in range(BURST)]
        t0 = time.monotonic()
        for n in names:  # suspended: every child, status and Event is made, no pod runs
            ftj.create(tiny_job(n, suspend=True))
        wait_for(lambda: not suspended_everywhere(ftj, names), 300, 1.0, "every FineTuneJob reconciled")
        took = time.monotonic() - t0
        rejected = (
            apiserver_metric(kube, "apiserver_flowcontrol_rejected_requests_total", priority_level=name)
            - rejected_before
        )
        dispatched = apiserver_metric(
            kube, "apiserver_flowcontrol_dispatched_requests_total", priority_level=name
        )
        errors = op.metric("controller_runtime_reconcile_errors_total", controller="finetunejob")
        logged = error_lines(op)
        print(  # docs/reliability.md
            f"{seats:.0f} seat(s); burst of {BURST} throttled: all reconciled in {took:.1f} s; requests of the operator's user "
            f"rejected with 429: {rejected:.0f}, dispatched: {dispatched:.0f}; reconcile errors: {errors:.0f}; "
            f"ERROR log lines: {len(logged)}"
        )
        assert rejected > 0, "the FlowSchema did not throttle the operator: the test proves nothing"
        # Exactly one Job per FineTuneJob (no retried create made a second one), and the operator lives.
        jobs = [j.metadata.name for j in ftj.batch.list_namespaced_job(ns).items]
        assert sorted(jobs) == sorted(f"{n}-trainer" for n in names)
        assert op.healthy()
        # No error storm: 429s are waited out (Retry-After) in the operator's client, not turned into failed
        # reconciles, and kopf's own retried 429s are warnings; a few may exhaust their retries.
        warned = [line for line in op.log_path.read_text().splitlines() if "APITooManyRequestsError" in line]
        print(f"kopf's retried 429s (WARNING): {len(warned)}")
        assert errors <= BURST // 20, (errors, logged[-5:])
        assert len(logged) <= BURST // 20, logged[-10:]
    finally:
        unthrottle(kube, name)
        op.stop()
        kube.delete_namespace(ns)
        kube.delete_namespace(sa_ns)
        rbac = client.RbacAuthorizationV1Api(kube.api)
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


# ------------------------------------------------------------------------------------------------
# Expired watches (410 Gone)


def etcd_call(kube, method: str, body: dict) -> dict:
    """etcd's v3 JSON gateway on the control plane's etcd."""
    port = kube.control_plane.state["ports"]["etcd"]
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v3/{method}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def compact_etcd(kube) -> int:
    """Compact etcd's history up to its current revision; returns that revision."""
    revision = int(
        etcd_call(kube, "kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
    )
    etcd_call(kube, "kv/compaction", {"revision": str(revision), "physical": True})
    return revision


@pytest.mark.timeout(300)
def test_expired_watches_are_listed_again_and_nothing_is_missed(kube, tmp_path):
    if kube.control_plane is None:
        pytest.skip("needs the local control plane (its etcd and a second API server)")
    apply_crds(kube.api)
    ns = kube.new_namespace("relgone")
    ftj = FTJ(kube, ns)
    with kube.control_plane.extra_apiserver("kube-apiserver-rel-gone") as own:
        # The operator talks to an API server of its own (the same etcd), which the test stops and
        # starts without disturbing the shared one.
        kubeconfig = kube.kubeconfig_for(own.server, tmp_path / "operator.kubeconfig")
        op = Operator(kubeconfig, tmp_path / "log", namespaces="relgone-*", KUBETUNE_LOG_LEVEL="DEBUG")
        try:
            op.start()
            ftj.create(tiny_job("before", suspend=True))
            wait_for(lambda: not suspended_everywhere(ftj, ["before"]), 60, 0.3, "the first FineTuneJob")
            own.stop()
            # While the operator's API server is away: objects are made and etcd forgets the history the
            # operator's watches would resume from.
            during = [f"during-{i}" for i in range(3)]
            for n in during:
                ftj.create(tiny_job(n, suspend=True))
            ftj.patch("before", {"metadata": {"labels": {"touched": "yes"}}})
            compacted = compact_etcd(kube)
            own.start()
            t0 = time.monotonic()
            wait_for(
                lambda: not suspended_everywhere(ftj, during), 90, 0.5, "the FineTuneJobs made meanwhile"
            )
            print(f"API server back -> objects made meanwhile reconciled: {time.monotonic() - t0:.1f} s")
            ftj.create(tiny_job("after", suspend=True))
            wait_for(lambda: not suspended_everywhere(ftj, ["after"]), 60, 0.3, "a FineTuneJob made after")
            # The fault happened: kopf's watch of FineTuneJobs got 410 Gone and listed again.
            log = op.log_path.read_text()
            restarts = re.findall(r"Restarting the watch-stream for (\S+)", log)
            assert any("finetunejobs" in r for r in restarts), (compacted, restarts, op.log_tail(40))
            assert op.healthy()
            jobs = sorted(j.metadata.name for j in ftj.batch.list_namespaced_job(ns).items)
            assert jobs == sorted(f"{n}-trainer" for n in ["before", "after", *during])
        finally:
            op.stop()
            kube.delete_namespace(ns)
