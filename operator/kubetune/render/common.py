"""Helpers every renderer shares: child names, labels, owner references, content hashes.

Pure functions on plain data: no client, no kopf.
"""

from __future__ import annotations

import hashlib
import json
import re
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

MAX_NAME = 63  # a DNS label (Service names, label values, pod hostnames)

# Service names (and, for simplicity, every child's name): start with a letter, lowercase alphanumerics
# and dashes, end alphanumeric, at most 63 characters. Owner names may be DNS subdomains (dots, up to 253).
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_HASH_LEN = 8


def short_hash(data: Any, length: int = 10) -> str:
    """A stable hex digest (sha256): of a string's text, or of other data as canonical JSON.

    Stable across processes and versions of Python (no ``hash()``), so names made with it survive restarts.
    """
    text = (
        data
        if isinstance(data, str)
        else json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def dns_label_part(text: str) -> str:
    """TEXT with everything a DNS label cannot hold (dots, underscores, capitals) turned into dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def child_name(owner: str, suffix: str = "", max_len: int = MAX_NAME) -> str:
    """The name of OWNER's child: ``OWNER-SUFFIX`` when that is a DNS-1035 label of at most MAX_LEN
    characters (the common case, so names stay readable); else a valid one that keeps as much of it as
    fits, with a hash that tells owners apart: ``llama-v2-sft-3f2a9c1e-trainer`` for ``llama.v2.sft``.

    The hash covers the owner's name (so every child of one owner shares it), and the suffix too when
    the suffix itself had to be cut. Deterministic: the same owner always gets the same names.
    """
    name = f"{owner}-{suffix}" if suffix else owner
    if len(name) <= max_len and DNS1035_LABEL.fullmatch(name):
        return name
    room_for_suffix = max_len // 2  # the owner's part keeps the other half
    suffix_part = dns_label_part(suffix)
    intact = suffix_part == suffix and len(suffix_part) <= room_for_suffix
    digest = short_hash(owner if intact else name, _HASH_LEN)
    suffix_part = suffix_part[:room_for_suffix].rstrip("-")
    tail = "-".join(p for p in (digest, suffix_part) if p)
    keep = max_len - len(tail) - 1
    base = dns_label_part(owner)[:keep].rstrip("-")
    if not base[:1].isalpha():  # empty, or starts with a digit: DNS-1035 labels start with a letter
        base = ("k" + base)[:keep].rstrip("-")
    return f"{base}-{tail}"


def label_value(value: str) -> str:
    """VALUE as a label value: itself when it is one (at most 63 characters), else cut with a hash."""
    if len(value) <= MAX_NAME and LABEL_VALUE.fullmatch(value):
        return value
    return f"{value[:52].rstrip('-_.')}-{short_hash(value, 10)}"


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
