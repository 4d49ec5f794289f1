"""What a decision wants written to status, and the Events it wants, the same way for every controller
(pure: reconcile/writes.py sends them).

Status: a controller owns some top-level fields of its object's status (others belong to someone else,
e.g. the trainer's progress reports). ``status_patch`` computes a JSON merge patch (RFC 7396) from what
the object's status holds to what the decision wants: only changed keys, nested keys that went away
become null, None values mean "absent". No change -> no patch -> no write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple


class Event(NamedTuple):
    type: str  # Normal | Warning
    reason: str
    message: str


def strip_none(value: Any) -> Any:
    """VALUE without the None values of its mappings (absent and null mean the same in status)."""
    if isinstance(value, dict):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    return value


def merge_patch(old: Any, new: Any) -> Any:
    """A JSON merge patch (RFC 7396) from OLD to NEW: maps merge, so keys that went away become null."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: None for k in old if k not in new}
    for k, v in new.items():
        if old.get(k) != v:
            patch[k] = merge_patch(old.get(k), v)
    return patch


def owned_status(obj: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The FIELDS of OBJ's status as they are now (None values dropped)."""
    status = obj.get("status") or {}
    return strip_none({k: status.get(k) for k in fields})


def status_patch(obj: dict[str, Any], new: dict[str, Any], fields: Iterable[str]) -> dict[str, Any] | None:
    """The merge patch of status that turns OBJ's FIELDS into NEW (None: nothing to write).

    Only FIELDS are compared and touched; a field of FIELDS missing from NEW (or None) is removed."""
    fields = tuple(fields)
    old = owned_status(obj, fields)
    want = strip_none({k: new.get(k) for k in fields})
    if want == old:
        return None
    return merge_patch(old, want)


__all__ = ["Event", "merge_patch", "owned_status", "status_patch", "strip_none"]
