"""The order a first reconcile applies a FineTuneJob's static children in (reconcile/finetunejob.py)."""

from kubetune.reconcile.finetunejob import static_waves


def child(kind: str, name: str = "job-trainer") -> dict:
    return {"kind": kind, "metadata": {"name": name}}


def kinds(waves: list[list[dict]]) -> list[list[str]]:
    return [[o["kind"] for o in wave] for wave in waves]


def test_the_rolebinding_waits_for_its_role_and_the_rest_go_at_once():
    objs = [
        child("ServiceAccount"),
        child("Role"),
        child("RoleBinding"),
        child("ConfigMap"),
        child("Service"),
    ]
    assert kinds(static_waves(objs)) == [["ServiceAccount", "Role", "ConfigMap", "Service"], ["RoleBinding"]]


def test_no_empty_wave():
    assert kinds(static_waves([child("ConfigMap")])) == [["ConfigMap"]]
    assert kinds(static_waves([child("RoleBinding")])) == [["RoleBinding"]]
    assert static_waves([]) == []
