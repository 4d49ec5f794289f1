"""Helpers every renderer shares: child names, labels, owner references, content hashes.

Pure functions on plain data: no client, no kopf.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubetune.api.v1alpha1 import API_VERSION, GROUP

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kubetune"
PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"

FINETUNEJOB_LABEL = f"{GROUP}/finetunejob"  # on every child of a FineTuneJob: the owner's name
MODELSERVE_LABEL = f"{GROUP}/modelserve"
RUN_ID_LABEL = f"{GROUP}/run-id"  # the run (config hash) a trainer Job belongs to
ATTEMPT_LABEL = f"{GROUP}/attempt"  # 1, 2, ... within a run
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"  # hash of what the operator applied: no write when equal
RUN_GENERATION_ANNOTATION = f"{GROUP}/run-generation"  # metadata.generation that started the run

# Labels the operator never copies from the owner onto children (they are its own, or would lie).
_RESERVED_LABEL_PREFIXES = (f"{GROUP}/", "batch.kubernetes.io/", "controller-uid", "job-name")

MAX_NAME = 63


def short_hash(data: Any, length: int = 10) -> str:
    """A stable hex digest of JSON-able data."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def child_name(owner: str, suffix: str, max_len: int = MAX_NAME) -> str:
    """``OWNER-SUFFIX``, shortened with a hash of the owner's name when it would be too long."""
    name = f"{owner}-{suffix}" if suffix else owner
    if len(name) <= max_len:
        return name
    digest = short_hash(owner, 8)
    keep = max_len - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-.')}-{digest}-{suffix}"


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """The controller reference of a child: GC deletes it with its owner."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(
    owner: dict[str, Any], name: str, namespace: str | None, labels: dict[str, str], **extra: Any
) -> dict[str, Any]:
    """metadata of a child object: its name and labels, in its owner's namespace, owned by OWNER."""
    meta = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }
    return {**meta, **extra}


def propagated_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """The owner's labels that children carry too (so policies and selectors that match the owner match them)."""
    return {
        k: v for k, v in (labels or {}).items() if not any(k.startswith(p) for p in _RESERVED_LABEL_PREFIXES)
    }


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Put the hash of the object's desired content into its annotations (compared before applying)."""
    digest = short_hash(obj, 16)
    obj.setdefault("metadata", {}).setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = digest
    return obj


def applied_hash(obj: dict[str, Any] | None) -> str | None:
    """The hash a live object was applied with (None when absent)."""
    if not obj:
        return None
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
