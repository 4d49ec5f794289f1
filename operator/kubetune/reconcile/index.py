"""The objects kopf's watches deliver, kept for the reconciles to read (controller-runtime's informer cache,
on kopf): FineTuneJobs, ModelServes, trainer Jobs and Pods, serving Deployments. A reconcile reads its
object and the children it watches from here, so a reconcile of an unchanged object makes no GET.

- The kopf handlers put every event's object (``put``; ``remove`` on DELETED) before they queue a key,
  so a reconcile never sees less than the event that queued it.
- The operator's own writes are put too, with what the API server answered (``put`` from the write
  path), so the next reconcile sees them before their watch events arrive.
- A read may still be stale (an event not delivered yet): every status write carries the resourceVersion
  it was decided from, and the API server refuses it (409) when the object changed meanwhile; the object is
  then read again (``refresh``) and reconciled once more. Child writes are server-side applies by name,
  which are idempotent.
- Objects are kept as compact JSON text (decoded on every read): a read gets its own copy (the decisions'
  inputs are never shared), and the text is one object per entry for the garbage collector, which a
  nested dict of hundreds of objects is not. Jobs lose their pod template and Pods their spec (the
  decisions read their metadata and status only).
- What the decisions never read, the field managers (``metadata.managedFields``), is dropped too; kept is
  only whether the operator's own manager wrote an object's fields through an update (``written_by_update``,
  for the write path: see ``field_owners``).

Thread-safe: the handlers write on kopf's event loop, the reconciles read in worker threads.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from .field_owners import written_by_update

Raw = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace, name

# Kinds whose bodies are trimmed to what the decisions read.
_DROP = {"Job": ("spec", "template"), "Pod": ("spec", None)}


def _slim(kind: str, body: Mapping[str, Any]) -> Raw:
    obj = dict(body)
    drop = _DROP.get(kind)
    if drop is not None:
        top, inner = drop
        if inner is None:
            obj.pop(top, None)
        elif isinstance(obj.get(top), Mapping):
            obj[top] = {k: v for k, v in obj[top].items() if k != inner}
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


def _controller_uid(meta: Mapping[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


class WatchIndex:
    """Watched objects by (kind, namespace, name), and by their controller's uid."""

    def __init__(self, manager: str = "kubetune") -> None:
        self.manager = manager  # the operator's field manager
        self._objects: dict[Key, str] = {}
        self._updated: set[Key] = set()  # objects whose fields MANAGER wrote through an update
        self._versions: dict[Key, str | None] = {}
        self._owned: dict[tuple[str, str, str], set[str]] = defaultdict(set)  # (kind, ns, owner uid) -> names
        self._owner: dict[Key, str] = {}
        self._lock = threading.Lock()

    # -- writes (handlers, the write path) --

    def put(self, body: Mapping[str, Any], kind: str | None = None) -> bool:
        """Keep BODY (a watch event's object or a write's answer) as the latest state of its object; False
        when the index held that very version already (nothing new)."""
        meta = body.get("metadata") or {}
        kind = kind or str(body.get("kind") or "")
        namespace, name = meta.get("namespace"), meta.get("name")
        if not (kind and namespace and name):
            return False
        key = (kind, namespace, name)
        version = meta.get("resourceVersion")
        with self._lock:
            if version is not None and self._versions.get(key) == version:
                return False  # the same version again (two handlers of one watch, or our own write's event)
        slim = _slim(kind, body)
        slim.setdefault("kind", kind)  # the items of a LIST have none
        text = json.dumps(slim, separators=(",", ":"))
        owner = _controller_uid(meta)
        updated = written_by_update(meta.get("managedFields"), self.manager)
        with self._lock:
            self._objects[key] = text
            self._versions[key] = version
            self._own(key, owner)
            if updated:
                self._updated.add(key)
            else:
                self._updated.discard(key)
        return True

    def remove(self, kind: str, namespace: str | None, name: str | None, *, uid: str | None = None) -> None:
        """Forget the object (UID: only when the kept one is that object, not a newer one of that name)."""
        if not (namespace and name):
            return
        key = (kind, namespace, name)
        with self._lock:
            text = self._objects.get(key)
            if (
                uid is not None
                and text is not None
                and (json.loads(text).get("metadata") or {}).get("uid") != uid
            ):
                return
            self._objects.pop(key, None)
            self._versions.pop(key, None)
            self._updated.discard(key)
            self._own(key, None)

    def _own(self, key: Key, owner: str | None) -> None:
        before = self._owner.pop(key, None)
        if before is not None:
            names = self._owned.get((key[0], key[1], before))
            if names is not None:
                names.discard(key[2])
                if not names:
                    del self._owned[(key[0], key[1], before)]
        if owner is not None:
            self._owner[key] = owner
            self._owned[(key[0], key[1], owner)].add(key[2])

    # -- reads (reconciles) --

    def get(self, kind: str, namespace: str, name: str) -> Raw | None:
        """A copy of the object, or None when the watch has not delivered it (or it was deleted)."""
        with self._lock:
            text = self._objects.get((kind, namespace, name))
        return None if text is None else json.loads(text)

    def written_by_update(self, kind: str, namespace: str, name: str) -> bool:
        """Whether the kept object has fields the operator's manager wrote through an update (a create, a
        merge patch), which a server-side apply must adopt first (``field_owners.adopt``)."""
        with self._lock:
            return (kind, namespace, name) in self._updated

    def owned(self, kind: str, namespace: str, owner_uid: str) -> list[Raw]:
        """Copies of the objects of KIND whose controller is OWNER_UID, by name."""
        with self._lock:
            names = sorted(self._owned.get((kind, namespace, owner_uid), ()))
            texts = [
                self._objects[(kind, namespace, n)] for n in names if (kind, namespace, n) in self._objects
            ]
        return [json.loads(t) for t in texts]

    def pods_of_job(self, namespace: str, job_uid: str) -> list[Raw]:
        """The pods a Job made (its controller-uid), by name."""
        return self.owned("Pod", namespace, job_uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


def match_namespace(name: str, pattern: str) -> bool:
    """Whether kopf watches namespace NAME for PATTERN (what ``kubetune operator --namespace`` takes): globs
    (``*``, ``?``) separated by commas, ``!`` excluding; a pattern that starts with an exclusion starts from
    everything; a later inclusion brings back only what the first glob matched (kopf's rules)."""
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    if not globs or globs[0].startswith("!"):
        globs.insert(0, "*")
    first = matched = fnmatch.fnmatchcase(name, globs[0])
    for glob in globs[1:]:
        if glob.startswith("!"):
            matched = matched and not fnmatch.fnmatchcase(name, glob[1:])
        else:
            matched = matched or (first and fnmatch.fnmatchcase(name, glob))
    return matched


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?!,")


__all__ = ["WatchIndex", "is_glob", "match_namespace"]
