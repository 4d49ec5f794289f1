"""Who owns a child's fields, for children first made with a plain create and later server-side applied.

A child that does not exist yet is created with a POST (cheaper for the API server than a server-side apply,
which is a create too when nothing exists): the API server records its fields under the operator's field
manager with ``operation: Update``. A later server-side apply by the same manager name is a different owner
(``operation: Apply``), so a field that the operator stops setting would stay, still owned by the create's
entry. Before such an apply the create's fields are therefore moved into the operator's Apply entry (``adopt``,
client-go's csaupgrade does the same for kubectl): the apply then owns every field the operator ever set and
removes those it no longer sets, as if the child had been applied from the start.

Pure functions on ``metadata.managedFields``; the write path (``writes.Writer``) sends the result.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

Entry = dict[str, Any]


def _is_entry(entry: Mapping[str, Any], manager: str, operation: str) -> bool:
    """Whether ENTRY is MANAGER's OPERATION ("Update" or "Apply") entry of the object itself (not a
    subresource)."""
    return (
        entry.get("manager") == manager
        and entry.get("operation") == operation
        and not entry.get("subresource")
    )


def written_by_update(managed_fields: Sequence[Mapping[str, Any]] | None, manager: str) -> bool:
    """Whether MANAGER owns fields of the object itself (not a subresource) through an update (a create, a
    PUT, a merge patch): what ``adopt`` moves."""
    return any(_is_entry(e, manager, "Update") for e in managed_fields or ())


def union_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The union of two ``fieldsV1`` sets (nested maps whose leaves are empty maps)."""
    merged = copy.deepcopy(dict(a))
    for key, value in b.items():
        mine = merged.get(key)
        merged[key] = (
            union_fields(mine, value)
            if isinstance(mine, Mapping) and isinstance(value, Mapping)
            else copy.deepcopy(value)
        )
    return merged


def adopt(managed_fields: Sequence[Mapping[str, Any]], manager: str) -> list[Entry] | None:
    """MANAGED_FIELDS with MANAGER's update entries of the object itself folded into its Apply entry (made from
    the first of them when there is none); None when there is nothing to move."""
    updates = [e for e in managed_fields if _is_entry(e, manager, "Update")]
    if not updates:
        return None
    rest = [copy.deepcopy(dict(e)) for e in managed_fields if not any(e is u for u in updates)]
    applied = next((e for e in rest if _is_entry(e, manager, "Apply")), None)
    if applied is None:
        applied = {k: copy.deepcopy(v) for k, v in updates[0].items() if k != "subresource"}
        applied["operation"] = "Apply"
        applied["fieldsV1"] = {}
        rest.append(applied)
    fields = applied.get("fieldsV1") or {}
    for update in updates:
        fields = union_fields(fields, update.get("fieldsV1") or {})
    applied["fieldsV1"] = fields
    applied["fieldsType"] = "FieldsV1"
    return rest


def adopt_patch(obj: Mapping[str, Any], manager: str) -> list[dict[str, Any]] | None:
    """The JSON patch that makes OBJ's fields written by MANAGER's updates owned by its Apply entry, or None
    when there are none. It carries OBJ's resourceVersion, so the API server refuses it (409) when the object
    changed since it was read."""
    meta = obj.get("metadata") or {}
    adopted = adopt(meta.get("managedFields") or [], manager)
    if adopted is None:
        return None
    return [
        {"op": "replace", "path": "/metadata/managedFields", "value": adopted},
        {"op": "replace", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
    ]


__all__ = ["adopt", "adopt_patch", "union_fields", "written_by_update"]
