"""First-time children by plain create (#29), on a real API server: a child that does not exist is POSTed, and
a later apply of a changed child first moves the create's fields to the operator's Apply entry, so the fields
the operator no longer sets are removed -- exactly as if the child had been server-side applied from the
start -- while another manager's fields stay."""

from __future__ import annotations

import copy

import pytest
from kubernetes import client as k8s

from kubetune.reconcile.client import Kube, api_client
from kubetune.reconcile.credentials import load_configuration
from kubetune.reconcile.refusals import Refusal
from kubetune.reconcile.writes import Writer
from kubetune.render.common import with_hash

pytestmark = pytest.mark.cluster


def config_map(ns: str, owner: k8s.V1ConfigMap, data: dict[str, str], labels: dict[str, str]) -> dict:
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "child",
                "namespace": ns,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": owner.metadata.name,
                        "uid": owner.metadata.uid,
                        "controller": True,
                    }
                ],
            },
            "data": data,
        }
    )


def managers(obj: k8s.V1ConfigMap) -> set[tuple[str, str]]:
    return {(m.manager, m.operation) for m in obj.metadata.managed_fields or []}


def test_a_created_child_is_applied_later_as_if_it_had_been_applied_from_the_start(kube):
    ns = kube.new_namespace("create")
    core = k8s.CoreV1Api(kube.api)
    try:
        owner = core.create_namespaced_config_map(
            ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner"))
        )
        kube_client = Kube(api_client(load_configuration(kube.kubeconfig)))
        writer = Writer(kube_client)
        first = config_map(ns, owner, {"kept": "1", "dropped": "2"}, {"app": "x", "old-label": "y"})

        assert writer.apply(copy.deepcopy(first), owner_uid=owner.metadata.uid, may_exist=False) is None
        assert kube_client.writes == {("create", "ConfigMap"): 1}  # a POST, no server-side apply
        live = core.read_namespaced_config_map("child", ns)
        assert live.data == {"kept": "1", "dropped": "2"}
        assert managers(live) == {("kubetune", "Update")}

        # Another client adds a label of its own (kubectl label): its field stays its own.
        core.patch_namespaced_config_map(
            "child", ns, {"metadata": {"labels": {"team": "a"}}}, field_manager="kubectl-label"
        )
        # The same content again: nothing to write.
        assert writer.apply(copy.deepcopy(first), owner_uid=owner.metadata.uid) is None
        assert sum(kube_client.writes.values()) == 1

        # The operator stops setting a data key and a label.
        second = config_map(ns, owner, {"kept": "1"}, {"app": "x"})
        assert writer.apply(copy.deepcopy(second), owner_uid=owner.metadata.uid) is None
        live = core.read_namespaced_config_map("child", ns)
        assert live.data == {"kept": "1"}, "a field the create wrote and the apply no longer sets stayed"
        assert live.metadata.labels == {"app": "x", "team": "a"}
        assert ("kubetune", "Update") not in managers(live)
        assert {("kubetune", "Apply"), ("kubectl-label", "Update")} <= managers(live)
        assert kube_client.writes[("apply", "ConfigMap")] == 1

        # Once adopted, a further change is one apply (no GET, no move of owners).
        reads, writes = sum(kube_client.reads.values()), sum(kube_client.writes.values())
        third = config_map(ns, owner, {"kept": "3"}, {"app": "x"})
        assert writer.apply(copy.deepcopy(third), owner_uid=owner.metadata.uid) is None
        assert core.read_namespaced_config_map("child", ns).data == {"kept": "3"}
        assert sum(kube_client.reads.values()) == reads and sum(kube_client.writes.values()) == writes + 1
    finally:
        kube.delete_namespace(ns)


def test_a_child_that_exists_unseen_is_read_and_judged_not_overwritten(kube):
    """The create finds the name taken (409): the object is read, and one that is someone else's is refused
    without a write, as the apply path refuses it."""
    ns = kube.new_namespace("create")
    core = k8s.CoreV1Api(kube.api)
    try:
        owner = core.create_namespaced_config_map(
            ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner"))
        )
        core.create_namespaced_config_map(
            ns, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="child"), data={"theirs": "1"})
        )
        writer = Writer(Kube(api_client(load_configuration(kube.kubeconfig))))
        refusal = writer.apply(
            config_map(ns, owner, {"kept": "1"}, {"app": "x"}), owner_uid=owner.metadata.uid, may_exist=False
        )
        assert isinstance(refusal, Refusal) and refusal.foreign and "does not belong" in refusal.message
        assert core.read_namespaced_config_map("child", ns).data == {"theirs": "1"}
    finally:
        kube.delete_namespace(ns)
