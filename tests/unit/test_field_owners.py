"""reconcile/field_owners.py: moving the fields a create wrote to the operator's Apply entry."""

from __future__ import annotations

from kubetune.reconcile.field_owners import adopt, adopt_patch, union_fields, written_by_update

CREATED = {
    "manager": "kubetune",
    "operation": "Update",
    "apiVersion": "v1",
    "time": "2026-12-05T08:00:00Z",
    "fieldsType": "FieldsV1",
    "fieldsV1": {"f:data": {".": {}, "f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {"f:app": {}}}},
}
STATUS = {
    "manager": "kubetune",
    "operation": "Update",
    "apiVersion": "v1",
    "subresource": "status",
    "fieldsType": "FieldsV1",
    "fieldsV1": {"f:status": {"f:phase": {}}},
}
OTHER = {
    "manager": "kubectl-label",
    "operation": "Update",
    "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}},
}


def test_a_create_entry_becomes_the_apply_entry_and_others_are_left_as_they_are():
    adopted = adopt([CREATED, OTHER, STATUS], "kubetune")
    assert adopted is not None
    apply = [e for e in adopted if e["operation"] == "Apply"]
    assert (
        len(apply) == 1 and apply[0]["manager"] == "kubetune" and apply[0]["fieldsV1"] == CREATED["fieldsV1"]
    )
    assert apply[0]["apiVersion"] == "v1" and "subresource" not in apply[0]
    # The status subresource's entry and another manager's are not the object's own updates: kept.
    assert OTHER in adopted and STATUS in adopted and CREATED not in adopted
    assert len(adopted) == 3


def test_updates_are_folded_into_an_existing_apply_entry():
    applied = {
        "manager": "kubetune",
        "operation": "Apply",
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": {"f:c": {}}},
    }
    adopted = adopt([applied, CREATED], "kubetune")
    assert adopted == [
        {
            **applied,
            "fieldsV1": {
                "f:data": {"f:c": {}, ".": {}, "f:a": {}, "f:b": {}},
                "f:metadata": {"f:labels": {"f:app": {}}},
            },
        }
    ]
    assert applied["fieldsV1"] == {"f:data": {"f:c": {}}}  # the input is not changed


def test_nothing_to_move_without_the_managers_own_updates():
    assert adopt([OTHER, STATUS], "kubetune") is None
    assert adopt([CREATED], "someone-else") is None
    assert not written_by_update([OTHER, STATUS], "kubetune") and written_by_update([CREATED], "kubetune")
    assert not written_by_update(None, "kubetune")
    assert adopt_patch({"metadata": {"resourceVersion": "5", "managedFields": [OTHER]}}, "kubetune") is None


def test_the_patch_replaces_the_owners_as_of_the_version_read():
    patch = adopt_patch({"metadata": {"resourceVersion": "42", "managedFields": [CREATED]}}, "kubetune")
    assert patch is not None
    assert patch[0]["path"] == "/metadata/managedFields" and patch[0]["value"][0]["operation"] == "Apply"
    assert patch[1] == {"op": "replace", "path": "/metadata/resourceVersion", "value": "42"}


def test_union_of_field_sets():
    assert union_fields({"f:a": {"f:b": {}}}, {"f:a": {"f:c": {}}, "f:d": {}}) == {
        "f:a": {"f:b": {}, "f:c": {}},
        "f:d": {},
    }
