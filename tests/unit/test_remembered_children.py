"""What the operator remembers of the children it does not watch (reconcile/writes.py: Children) goes when
their owner goes: without it, every ConfigMap, ServiceAccount, Role and RoleBinding ever made stayed in the
operator's memory."""

from kubetune.reconcile.client import Kube
from kubetune.reconcile.finetunejob import FineTuneJobReconciler
from kubetune.reconcile.modelserve import ModelServeReconciler
from kubetune.reconcile.modelserve_decision import ServeOptions
from kubetune.reconcile.writes import Children, Expiring, Writer
from kubetune.render.finetunejob import RenderOptions


def child(name: str, owner_kind: str, owner: str) -> dict:
    ref = {"apiVersion": "kubetune.io/v1alpha1", "kind": owner_kind, "name": owner, "uid": f"uid-{owner}"}
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "ownerReferences": [ref | {"controller": True}],
        }
    }


def test_an_owners_children_are_forgotten_with_it_and_only_its():
    children = Children()
    for owner in ("a", "b"):
        for kind in ("ConfigMap", "Role"):
            children.remember(kind, child(f"{owner}-x", "FineTuneJob", owner))
    children.remember("ConfigMap", child("a-x", "FineTuneJob", "a"))  # applied again: still one entry
    assert len(children) == 4

    children.forget_owned("FineTuneJob", "ns", "a")

    assert children.known("ConfigMap", "ns", "a-x") is None and children.known("Role", "ns", "a-x") is None
    assert children.known("ConfigMap", "ns", "b-x")["metadata"]["name"] == "b-x"
    assert children.known("Role", "ns", "b-x")["metadata"]["ownerReferences"][0]["name"] == "b"
    children.forget_owned("FineTuneJob", "ns", "a")  # twice: nothing left to forget, no error
    children.forget_owned("ModelServe", "ns", "b")  # another kind of owner of that name: not b's children
    assert len(children) == 2


def test_a_finetunejob_that_is_gone_leaves_nothing_remembered():
    kube = Kube(api=None)  # type: ignore[arg-type]  # the reconcile finds no object and sends no request
    writer = Writer(kube)
    reconciler = FineTuneJobReconciler(kube, RenderOptions(), writer=writer)
    writer.children.remember("ConfigMap", child("gone-config", "FineTuneJob", "gone"))
    writer.children.remember("ConfigMap", child("kept-config", "FineTuneJob", "kept"))
    reconciler.signatures.put(("ns", "gone"), "signature")

    assert reconciler.reconcile("ns", "gone").gone

    assert writer.children.known("ConfigMap", "ns", "gone-config") is None
    assert reconciler.signatures.get(("ns", "gone"), any_age=True) is None
    assert writer.children.known("ConfigMap", "ns", "kept-config") is not None


def test_a_modelserve_that_is_gone_leaves_nothing_remembered():
    kube = Kube(api=None)  # type: ignore[arg-type]
    writer = Writer(kube)
    reconciler = ModelServeReconciler(kube, ServeOptions(tgi_image="tgi", trainer_image="t"), writer=writer)
    writer.children.remember("Service", child("gone", "ModelServe", "gone"))

    assert reconciler.reconcile("ns", "gone").gone

    assert len(writer.children) == 0


def test_an_empty_memory_passed_in_is_the_one_used():
    # Empty, they are falsy (they have a length): "children or Children()" replaced the runtime's, which
    # carries the resync period, by a default one (caught by test_observe_once_cluster.py).
    kube = Kube(api=None)  # type: ignore[arg-type]
    children = Children(max_age=2.0)
    writer = Writer(kube, children=children)
    assert writer.children is children
    signatures = Expiring(2.0)
    assert (
        FineTuneJobReconciler(kube, RenderOptions(), writer=writer, signatures=signatures).signatures
        is signatures
    )
