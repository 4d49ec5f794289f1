"""Writes the API server refuses, the same way for every controller (pure): which answers are refusals,
what the server said, and the record a decision turns into a condition and an Event.

A refusal is an answer about the request, which a change by the user fixes: invalid (400, 422), forbidden
(403: RBAC, a ResourceQuota, an admission webhook or policy), a conflict (409: a foreign object of that name,
an object being deleted), too large (413). Everything else (no answer, 404 while something is being created,
408, 429, 5xx) is about the server or the moment: the work queue retries it with backoff.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REFUSAL_CODES = frozenset({400, 403, 409, 413, 422})


def is_refusal(code: int) -> bool:
    return code in REFUSAL_CODES


def status_body(body: str | bytes | None) -> Mapping[str, Any]:
    """The API server's ``Status`` object in an error answer's BODY ({} when it is not one)."""
    try:
        status = json.loads(body or "")
    except (TypeError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def server_message(body: str | bytes | None, fallback: str) -> str:
    """What the API server says is wrong (its Status message), else FALLBACK."""
    message = status_body(body).get("message")
    return str(message) if message else fallback


def namespace_terminating(body: str | bytes | None) -> bool:
    """The write was refused because its namespace is being deleted (and the owner with it)."""
    causes = (status_body(body).get("details") or {}).get("causes") or []
    return any(
        c.get("reason") == "NamespaceTerminating" or c.get("type") == "NamespaceTerminating" for c in causes
    )


@dataclass(frozen=True)
class Refusal:
    """A child write the API server refused (or a child of that name that belongs to someone else)."""

    kind: str
    name: str
    code: int
    message: str
    foreign: bool = False


__all__ = ["REFUSAL_CODES", "Refusal", "is_refusal", "namespace_terminating", "server_message", "status_body"]
