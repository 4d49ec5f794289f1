"""The operator's one Kubernetes client: a thin adapter over the official ``kubernetes`` package, with the
credentials kubectl would use (credentials.py) and retries that honour 429 + Retry-After (throttling.py).

Objects stay plain JSON dicts: requests go through ``ApiClient.call_api`` with
``_preload_content=False`` and the body is ``json.loads``-ed, so no generated model classes are built
per object (the hot path of a reconcile is a few GETs and an apply; deserializing into models and back
costs more CPU and memory than the whole reconcile). Writes are server-side applies with one field
manager, JSON merge patches and deletes; every list is paginated (``limit`` + ``continue``). Every
request is counted (``reads``/``writes``), so "an unchanged object makes no writes" can be measured.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s

from .clock import fmt_time, now
from .credentials import load_configuration
from .refusals import server_message
from .throttling import throttled_retries

log = logging.getLogger("kubetune.client")

# kind -> (API prefix, plural); every kind here is namespaced but Namespace and Node (read by the fit check)
RESOURCES: dict[str, tuple[str, str]] = {
    "Node": ("/api/v1", "nodes"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Pod": ("/api/v1", "pods"),
    "Namespace": ("/api/v1", "namespaces"),
    "Event": ("/api/v1", "events"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "FineTuneJob": ("/apis/kubetune.io/v1alpha1", "finetunejobs"),
    "ModelServe": ("/apis/kubetune.io/v1alpha1", "modelserves"),
}

COMPONENT = "kubetune-operator"
Page = list[dict[str, Any]]  # the objects of one list request (a name here: Kube.list shadows "list")
# Items per list request (the API server's own default page is unbounded), and kopf's chunk of its initial
# lists (handlers.configure_kopf). Small on purpose: a page is parsed into Python objects at once, and what is
# kept of it (the watch index's entries) pins the allocator's memory of the whole page, which Python then
# never returns. The index primed page by page in pages of 100 (instead of whole lists read in pages of 500)
# left a restarted operator among 1,100 FineTuneJobs 12 MiB smaller (docs/benchmarks.md, "Operator RSS").
# 10,000 objects are 100 requests of a few milliseconds each.
LIST_PAGE_SIZE = 100


class ApiException(Exception):
    """An error response of the API server (or a transport error: status 0).

    ``body`` is the response text (a ``Status`` object as JSON for API errors); ``message`` is the
    server's own explanation from it, fit to quote to a user in a condition or an Event.
    """

    def __init__(self, status: int = 0, reason: str = "", body: str | None = None) -> None:
        super().__init__(f"({status}) {reason}: {(body or '')[:500]}")
        self.status = status
        self.reason = reason
        self.body = body

    @property
    def message(self) -> str:
        """The API server's own words (refusals.server_message, the one parser of its answers)."""
        return server_message(self.body, (self.body or "").strip() or self.reason or f"HTTP {self.status}")


def api_client(
    cfg: k8s.Configuration | None = None, pool_size: int = 16, retries: urllib3.util.Retry | None = None
) -> k8s.ApiClient:
    """An ApiClient with connections for POOL_SIZE concurrent requests that honours 429 + Retry-After
    (RETRIES: another policy, e.g. fewer retries for requests that must finish within a deadline)."""
    cfg = cfg or load_configuration()
    cfg.connection_pool_maxsize = pool_size
    cfg.retries = retries if retries is not None else throttled_retries()
    return k8s.ApiClient(configuration=cfg)


# ---------------------------------------------------------------------------------------------------
# The adapter the reconcilers use


def label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Kube:
    """get/list/apply/patch/delete/event on plain dicts. Thread-safe: one instance serves all workers."""

    def __init__(
        self,
        api: k8s.ApiClient,
        field_manager: str = "kubetune",
        *,
        timeout: tuple[float, float] = (10.0, 60.0),
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self.api = api
        self.field_manager = field_manager
        self.timeout = timeout  # (connect, read) seconds
        self.page_size = page_size
        self.writes: Counter[tuple[str, str]] = Counter()  # (verb, kind) -> requests
        self.reads: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self.on_write: Callable[[str, str], None] | None = None
        self.on_read: Callable[[str, str], None] | None = None
        self.instance = f"{socket.gethostname()}-{os.getpid()}"

    @classmethod
    def from_environment(cls, field_manager: str = "kubetune", pool_size: int = 16) -> Kube:
        """A client with the credentials kubectl would use here (see ``load_configuration``)."""
        return cls(api_client(load_configuration(), pool_size), field_manager)

    # -----------------------------------------------------------------------------------------------
    def _path(self, kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = RESOURCES[kind]
        path = prefix
        if namespace:
            path += f"/namespaces/{quote(namespace)}"
        path += f"/{plural}"
        if name:
            path += f"/{quote(name)}"
        if sub:
            path += f"/{sub}"
        return path

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API request; the decoded JSON response (None when empty). Raises ApiException."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            resp = self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        except k8s.ApiException as exc:
            body_text = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
            raise ApiException(exc.status or 0, exc.reason or "", body_text) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApiException(0, type(exc).__name__, str(exc)) from exc
        try:
            data = resp.data
        finally:
            resp.release_conn()
        return json.loads(data) if data else None

    def _count(self, table: Counter[tuple[str, str]], verb: str, kind: str) -> None:
        with self._lock:
            table[(verb, kind)] += 1
        hook = self.on_write if table is self.writes else self.on_read
        if hook is not None:
            hook(verb, kind)

    # -----------------------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        self._count(self.reads, "get", kind)
        try:
            obj: dict[str, Any] = self.request("GET", self._path(kind, namespace, name))
            return obj
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | str | None = None,
        fields: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every object of KIND (with LABELS, a map or a selector such as "key" for "has the label", and
        FIELDS: a field selector), fetched page by page; NAMESPACE None: in every namespace."""
        items: list[dict[str, Any]] = []
        for page, first in self.pages(kind, namespace, labels, fields):
            if first:
                items = []
            items.extend(page)
        return items

    def pages(
        self,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | str | None = None,
        fields: dict[str, str] | None = None,
    ) -> Iterator[tuple[Page, bool]]:
        """The pages of list(): each page's objects and whether it is the first page of a consistent list.
        A caller that keeps only what it needs of each page never holds the whole list at once (a restart
        among thousands of objects). When the continue token expires the list starts again: a page marked
        first after others means "forget what the earlier pages gave"."""
        labels = label_selector(labels) if isinstance(labels, dict) else labels
        selector = [("labelSelector", labels)] if labels else []
        if fields:
            selector.append(("fieldSelector", label_selector(fields)))
        token: str | None = None
        while True:
            query = [*selector, ("limit", self.page_size)] + ([("continue", token)] if token else [])
            self._count(self.reads, "list", kind)
            try:
                page = self.request("GET", self._path(kind, namespace), query=query) or {}
            except ApiException as exc:
                if exc.status == 410 and token:  # the continue token expired: start a consistent list again
                    token = None
                    continue
                raise
            yield page.get("items") or [], token is None
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager (force: the operator owns its children)."""
        meta = obj["metadata"]
        self._count(self.writes, "apply", obj["kind"])
        applied: dict[str, Any] = self.request(
            "PATCH",
            self._path(obj["kind"], meta.get("namespace"), meta["name"]),
            query=[("fieldManager", self.field_manager), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        return applied

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST OBJ under the operator's field manager (its fields are recorded as that manager's Update)."""
        meta = obj["metadata"]
        self._count(self.writes, "create", obj["kind"])
        created: dict[str, Any] = self.request(
            "POST",
            self._path(obj["kind"], meta.get("namespace")),
            query=[("fieldManager", self.field_manager)],
            body=obj,
        )
        return created

    def json_patch(
        self, kind: str, namespace: str | None, name: str, operations: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        """A JSON patch (RFC 6902) of the object."""
        self._count(self.writes, "patch", kind)
        patched: dict[str, Any] = self.request(
            "PATCH",
            self._path(kind, namespace, name),
            query=[("fieldManager", self.field_manager)],
            body=operations,
            content_type="application/json-patch+json",
        )
        return patched

    def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch (only the fields in PATCH change)."""
        self._count(self.writes, "patch" + (f"/{subresource}" if subresource else ""), kind)
        patched: dict[str, Any] = self.request(
            "PATCH",
            self._path(kind, namespace, name, subresource),
            query=[("fieldManager", self.field_manager)],
            body=patch,
            content_type="application/merge-patch+json",
        )
        return patched

    def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """Delete (only the object with UID when given); False when it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        self._count(self.writes, "delete", kind)
        try:
            self.request("DELETE", self._path(kind, namespace, name), body=body)
            return True
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about OBJ (best effort: an event that cannot be written is not an error)."""
        meta = obj["metadata"]
        t = fmt_time(now())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance[:128],
            "firstTimestamp": t,
            "lastTimestamp": t,
            "count": 1,
        }
        self._count(self.writes, "create", "Event")
        try:
            self.request("POST", self._path("Event", meta["namespace"]), body=body)
        except ApiException as exc:
            log.debug("event %s on %s/%s not written: %s", reason, meta["namespace"], meta["name"], exc)


__all__ = ["COMPONENT", "RESOURCES", "ApiException", "Kube", "api_client", "label_selector"]
