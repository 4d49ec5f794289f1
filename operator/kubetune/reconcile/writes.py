"""The one write path of both controllers: children, status, Events.

- **Children** are written under the operator's field manager (``apply``), and only when what is live
  differs from what is wanted: every child carries the hash of the content it was applied with
  (``render.common.with_hash``), compared with the watched copy (``index.WatchIndex``: Jobs, Deployments),
  or for children the operator does not watch (ConfigMaps, Services, RBAC, PDBs) with what it last applied
  or read (``Children``, entries expire after ``max_age`` so drift is repaired), or else with a GET when the
  child may exist. A child that does not exist is created (a POST costs the API server less than a
  server-side apply); one that exists is server-side applied, after its fields written by the create (or by
  a merge patch) were moved to the operator's Apply entry (``field_owners``), so the apply removes what the
  operator no longer sets. A child of that name owned by someone else is refused without a write.
- **Status**: a JSON merge patch of the fields the controller owns (``status.status_patch``: nothing when
  nothing changed) that carries the resourceVersion the decision read: when the object changed meanwhile
  the API server answers 409, and the write is reported as ``Conflict``; the shell reads the object again
  and reconciles once more (controller-runtime's optimistic concurrency).
- **Events** through one recorder (``EventRecorder``) that writes each (object, type, reason, message) at
  most once per window.
- **Refusals**: a write the API server refuses (``refusals.is_refusal``) comes back as a ``Refusal`` for
  the decision to turn into a condition and an Event; other errors are raised (the work queue retries with
  backoff); a namespace being deleted raises ``NamespaceTerminating`` (nothing left to do).
- **Own writes**: every write's answer goes into the watch index (so the next reconcile sees it before its
  watch event) and into ``OwnWrites`` (so that event queues no reconcile).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from kubetune.render.common import RUN_ID_LABEL, SPEC_HASH_ANNOTATION, applied_hash

from .client import ApiException, Kube
from .field_owners import adopt_patch, written_by_update
from .index import WatchIndex
from .own_writes import OwnWrites
from .refusals import Refusal, is_refusal, namespace_terminating
from .status import Event, status_patch

WATCHED = frozenset({"FineTuneJob", "ModelServe", "Job", "Pod", "Deployment"})
"""Kinds the operator's kopf handlers watch (their objects are in the watch index)."""
CHILD_CACHE_SECONDS = 600.0
ADOPT_TRIES = 3  # a child changed between the read and the adoption of its fields: read it again


class NamespaceTerminating(Exception):
    """A write was refused because the namespace is being deleted: nothing to decide, nothing to retry."""


class Conflict(Exception):
    """The object changed since it was read (409 on a write that carried its resourceVersion)."""


class Expiring:
    """A thread-safe map whose entries are forgotten MAX_AGE seconds after they were put."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self.clock = clock
        self._entries: dict[Hashable, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, *, any_age: bool = False) -> Any:
        """The entry put under KEY, unless it is older than MAX_AGE (ANY_AGE: however old)."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or (not any_age and self.clock() - entry[1] > self.max_age):
            return None
        return entry[0]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = (value, self.clock())

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Children(Expiring):
    """What the operator knows of the children it does not watch, as it last applied or read them, by (kind,
    namespace, name): their uid, owners, the hash they were applied with, their run id and whether MANAGER
    (the operator's field manager) wrote fields of theirs through an update, nothing else (kept as JSON text:
    tens of thousands of them at scale); an entry is forgotten after MAX_AGE seconds (and then read again:
    drift repair)."""

    def __init__(
        self,
        max_age: float = CHILD_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        manager: str = "kubetune",
    ):
        super().__init__(max_age, clock)
        self.manager = manager
        # (owner kind, namespace, owner name) -> the keys of its remembered children, so that an owner's
        # deletion forgets them (forget_owned): nothing else would, and every child ever made would stay
        # remembered. A list: an owner has a handful, and it is a third of a set's size.
        self._owned: dict[tuple[str, str, str], list[Hashable]] = {}

    def remember(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        slim: dict[str, Any] = {
            "kind": kind,
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "labels": {k: v for k, v in labels.items() if k == RUN_ID_LABEL},
                "annotations": {k: v for k, v in annotations.items() if k == SPEC_HASH_ANNOTATION},
                "ownerReferences": [
                    {k: ref.get(k) for k in ("kind", "name", "uid", "controller")}
                    for ref in meta.get("ownerReferences") or []
                ],
            },
        }
        if written_by_update(meta.get("managedFields"), self.manager):
            slim["writtenByUpdate"] = True
        key = (kind, meta.get("namespace") or "", meta.get("name") or "")
        text = json.dumps(slim, separators=(",", ":"))
        owners = [
            (ref.get("kind") or "", key[1], ref.get("name") or "")
            for ref in slim["metadata"]["ownerReferences"]
            if ref.get("controller")
        ]
        with self._lock:
            self._entries[key] = (text, self.clock())
            for owner in owners:
                children = self._owned.setdefault(owner, [])
                if key not in children:
                    children.append(key)

    def forget_owned(self, owner_kind: str, namespace: str, owner_name: str) -> None:
        """Forget the children of an owner that is gone (garbage collection deletes them). A child forgotten
        too early (a new owner of that name already wrote it) costs one read later, nothing more."""
        with self._lock:
            for key in self._owned.pop((owner_kind, namespace, owner_name), ()):
                self._entries.pop(key, None)

    def known(self, kind: str, namespace: str, name: str, *, any_age: bool = False) -> dict[str, Any] | None:
        text = self.get((kind, namespace, name), any_age=any_age)
        if text is None:
            return None
        known: dict[str, Any] = json.loads(text)
        known.pop("writtenByUpdate", None)
        return known

    def written_by_update(self, kind: str, namespace: str, name: str) -> bool:
        text = self.get((kind, namespace, name))
        return text is not None and bool(json.loads(text).get("writtenByUpdate"))


class EventRecorder:
    """Writes Events about objects, at most once per (object, type, reason, message) per WINDOW seconds."""

    def __init__(
        self,
        kube: Kube,
        window: float = 600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self._seen: OrderedDict[tuple[str, str, str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def _fresh(self, key: tuple[str, str, str, str]) -> bool:
        """True when KEY was not emitted within the window (and records it as emitted now)."""
        now = self.clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last < self.window:
                return False
            self._seen[key] = now
            self._seen.move_to_end(key)
            # Oldest first: drop what fell out of the window (it dedupes nothing any more), and keep the bound.
            while len(self._seen) > self.max_entries or now - next(iter(self._seen.values())) >= self.window:
                self._seen.popitem(last=False)
            return True

    def __len__(self) -> int:
        """How many recent Events it remembers (to skip their repeats)."""
        with self._lock:
            return len(self._seen)

    def emit(self, obj: dict[str, Any], events: Iterable[tuple[str, str, str]]) -> list[Event]:
        """Write EVENTS (type, reason, message) about OBJ, skipping repeats; returns those written."""
        meta = obj["metadata"]
        owner = meta.get("uid") or f"{meta.get('namespace')}/{meta['name']}"
        written = []
        for ev in map(Event._make, events):
            if self._fresh((owner, ev.type, ev.reason, ev.message)):
                self.kube.event(obj, ev.type, ev.reason, ev.message)
                written.append(ev)
        return written


def owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])


class Writer:
    """Every write of a reconcile; thread-safe (one instance serves every worker of both controllers)."""

    def __init__(
        self,
        kube: Kube,
        index: WatchIndex | None = None,
        own_writes: OwnWrites | None = None,
        events: EventRecorder | None = None,
        children: Children | None = None,
    ):
        self.kube = kube
        # "is None", not "or": an empty index or memory is falsy (they have a length), and one passed in must
        # be the one used (the runtime's Children carries the resync period).
        self.index = WatchIndex(kube.field_manager) if index is None else index
        self.own_writes = OwnWrites() if own_writes is None else own_writes
        self.events = EventRecorder(kube) if events is None else events
        self.children = Children(manager=kube.field_manager) if children is None else children

    # -- what a write made --

    def remember(self, written: dict[str, Any] | None, kind: str | None = None) -> None:
        """WRITTEN (an API answer) is the object's latest state: into the index or the child cache, and its
        resourceVersion into the own writes (its watch event then queues nothing)."""
        if not written or not written.get("metadata"):
            return
        kind = kind or str(written.get("kind") or "")
        meta = written["metadata"]
        if kind not in WATCHED:
            self.children.remember(kind, written)
            return
        self.index.put(written, kind)
        self.own_writes.record(
            kind, meta.get("namespace") or "", meta.get("name") or "", meta.get("resourceVersion")
        )

    def refused(self, exc: ApiException, kind: str, name: str) -> Refusal:
        """EXC as a refusal the decision turns into a condition; other errors go up (the queue retries)."""
        if not is_refusal(exc.status):
            raise exc
        if namespace_terminating(exc.body):
            raise NamespaceTerminating(str(exc)) from exc
        return Refusal(kind, name, exc.status, exc.message)

    # -- children --

    def live(
        self, kind: str, namespace: str, name: str, *, may_exist: bool, any_age: bool = False
    ) -> dict[str, Any] | None:
        """What is live of a child: the watched copy, the remembered one (ANY_AGE: even one older than the
        drift-repair age), or (MAY_EXIST) a GET."""
        if kind in WATCHED:
            return self.index.get(kind, namespace, name)
        cached = self.children.known(kind, namespace, name, any_age=any_age)
        if cached is not None or not may_exist:
            return cached
        found = self.kube.get(kind, namespace, name)
        if found is not None:
            self._keep_read(kind, found)
        return found

    def _keep_read(self, kind: str, found: dict[str, Any]) -> None:
        """What a GET found (not an own write: its watch event still counts): into the index or the child
        cache."""
        if kind in WATCHED:
            self.index.put(found, kind)
        else:
            self.children.remember(kind, found)

    def apply(self, obj: dict[str, Any], *, owner_uid: str, may_exist: bool = True) -> Refusal | None:
        """Create child OBJ, or apply it unless what is live was applied with the same content; a child of that
        name that belongs to someone else is refused. MAY_EXIST False (its owner was never reconciled): no
        GET."""
        kind, meta = obj["kind"], obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        live = self.live(kind, namespace, name, may_exist=may_exist)
        if live is None:
            try:
                self.remember(self.kube.create(obj), kind)
                return None
            except ApiException as exc:
                if exc.status != 409:  # 409: it exists after all (not seen yet, or someone else's)
                    return self.refused(exc, kind, name)
            live = self.kube.get(kind, namespace, name)
            if live is None:  # deleted again meanwhile: the next reconcile creates it
                raise Conflict(f"{kind} {name} was there and is gone")
            self._keep_read(kind, live)
        if not owned_by(live, owner_uid):
            message = (
                f"{kind} {name!r} already exists and does not belong to this {self._owner_kind(obj)}: "
                f"delete it or rename the {self._owner_kind(obj)}"
            )
            return Refusal(kind, name, 409, message, foreign=True)
        if applied_hash(live) is not None and applied_hash(live) == applied_hash(obj):
            return None
        try:
            if self._written_by_update(kind, namespace, name):
                self._adopt_updated_fields(kind, namespace, name)
            self.remember(self.kube.apply(obj), kind)
        except ApiException as exc:
            return self.refused(exc, kind, name)
        return None

    def _written_by_update(self, kind: str, namespace: str, name: str) -> bool:
        if kind in WATCHED:
            return self.index.written_by_update(kind, namespace, name)
        return self.children.written_by_update(kind, namespace, name)

    def _adopt_updated_fields(self, kind: str, namespace: str, name: str) -> None:
        """Move the child's fields written by the operator's updates (its create, merge patches) to the
        operator's Apply entry, so the apply that follows owns them (``field_owners``)."""
        for _ in range(ADOPT_TRIES):
            current = self.kube.get(kind, namespace, name)
            patch = adopt_patch(current, self.kube.field_manager) if current is not None else None
            if patch is None:
                return
            try:
                self.remember(self.kube.json_patch(kind, namespace, name, patch), kind)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise Conflict(f"{kind} {name} kept changing while its field owners were moved")

    @staticmethod
    def _owner_kind(obj: dict[str, Any]) -> str:
        refs = obj["metadata"].get("ownerReferences") or [{}]
        return str(refs[0].get("kind") or "owner")

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> Refusal | None:
        """A JSON merge patch of a child. A child that is gone (404: its DELETED event not seen yet, or
        missed) leaves the index, and the reconcile runs again without it (``Conflict``)."""
        try:
            self.remember(self.kube.patch(kind, namespace, name, patch), kind)
        except ApiException as exc:
            if exc.status == 404 and kind in WATCHED:
                self.index.remove(kind, namespace, name)
                raise Conflict(f"{kind} {name} is gone") from exc
            return self.refused(exc, kind, name)
        return None

    def delete(
        self, kind: str, namespace: str, name: str, *, uid: str | None, propagation: str = "Background"
    ) -> Refusal | None:
        try:
            deleted = self.kube.delete(kind, namespace, name, uid=uid, propagation=propagation)
        except ApiException as exc:
            return self.refused(exc, kind, name)
        if kind not in WATCHED:
            self.children.forget((kind, namespace, name))
        elif not deleted:  # it was gone already (its DELETED event not seen yet, or missed): forget it
            self.index.remove(kind, namespace, name, uid=uid)
        return None

    # -- the owner --

    def status(
        self, obj: dict[str, Any], new: dict[str, Any], fields: Iterable[str]
    ) -> dict[str, Any] | None:
        """Patch OBJ's status subresource to NEW's FIELDS when they differ, as of OBJ's resourceVersion (else
        ``Conflict``). OBJ's status and resourceVersion follow the write, so a second write in the same
        reconcile compares with the first. Returns the patch sent (None: no write). An object deleted
        meanwhile is not an error."""
        fields = tuple(fields)
        patch = status_patch(obj, new, fields)
        if patch is None:
            return None
        meta = obj["metadata"]
        body: dict[str, Any] = {"status": patch}
        if meta.get("resourceVersion"):
            body["metadata"] = {"resourceVersion": meta["resourceVersion"]}
        try:
            written = self.kube.patch(
                obj["kind"], meta.get("namespace"), meta["name"], body, subresource="status"
            )
        except ApiException as exc:
            if exc.status == 404:  # deleted meanwhile (or its DELETED event was missed): forget it
                self.index.remove(obj["kind"], meta.get("namespace"), meta["name"])
                return None
            if exc.status == 409:
                raise Conflict(exc.message) from exc
            raise
        self.remember(written, obj["kind"])
        version = ((written or {}).get("metadata") or {}).get("resourceVersion")
        if version:
            meta["resourceVersion"] = version
        status = obj.setdefault("status", {})
        for k in fields:
            if new.get(k) is None:
                status.pop(k, None)
            else:
                status[k] = new[k]
        return patch

    def refresh(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Read the object again (after a Conflict) into the index; None when it is gone."""
        found = self.kube.get(kind, namespace, name)
        if found is None:
            self.index.remove(kind, namespace, name)
        else:
            self.index.put(found, kind)
        return found

    def emit(self, obj: dict[str, Any], events: Iterable[tuple[str, str, str]]) -> None:
        self.events.emit(obj, events)


__all__ = [
    "WATCHED",
    "Children",
    "Expiring",
    "Conflict",
    "EventRecorder",
    "NamespaceTerminating",
    "Writer",
    "owned_by",
]
