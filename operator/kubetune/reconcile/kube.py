"""A small, dict-based Kubernetes client for the reconcilers: get, list, server-side apply, merge patch,
delete, events. Responses stay JSON dicts (no model deserialization: fast and simple). Every write is
counted, so "an unchanged object makes no writes" can be measured.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

# kind -> (API prefix, plural, namespaced)
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "FineTuneJob": ("/apis/kubetune.io/v1alpha1", "finetunejobs"),
    "ModelServe": ("/apis/kubetune.io/v1alpha1", "modelserves"),
}

COMPONENT = "kubetune-operator"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fmt_time(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Kube:
    """Thread-safe: one instance serves all reconcile workers."""

    def __init__(self, api: ApiClient, field_manager: str = "kubetune") -> None:
        self.api = api
        self.field_manager = field_manager
        self.writes: Counter[tuple[str, str]] = Counter()  # (verb, kind) -> count
        self.reads: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self.on_write = None  # optional callback(verb, kind)
        self.instance = f"{socket.gethostname()}-{os.getpid()}"

    # ---------------------------------------------------------------------------------------------
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
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        resp = self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=30,
        )
        data = resp.data
        return json.loads(data) if data else None

    def _count(self, table: Counter, verb: str, kind: str) -> None:
        with self._lock:
            table[(verb, kind)] += 1
        if table is self.writes and self.on_write is not None:
            self.on_write(verb, kind)

    # ---------------------------------------------------------------------------------------------
    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self._count(self.reads, "get", kind)
        try:
            return self.request("GET", self._path(kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, labels: dict[str, str] | None = None) -> list[dict]:
        self._count(self.reads, "list", kind)
        query = [("labelSelector", label_selector(labels))] if labels else []
        out = self.request("GET", self._path(kind, namespace), query=query)
        return list(out.get("items") or [])

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager (force: the operator owns its children)."""
        meta = obj["metadata"]
        self._count(self.writes, "apply", obj["kind"])
        return self.request(
            "PATCH",
            self._path(obj["kind"], meta.get("namespace"), meta["name"]),
            query=[("fieldManager", self.field_manager), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    def patch(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        """JSON merge patch (only the fields in PATCH change)."""
        self._count(self.writes, "patch" + (f"/{subresource}" if subresource else ""), kind)
        return self.request(
            "PATCH",
            self._path(kind, namespace, name, subresource),
            query=[("fieldManager", self.field_manager)],
            body=patch,
            content_type="application/merge-patch+json",
        )

    def delete(
        self, kind: str, namespace: str | None, name: str, *, uid: str | None = None, propagation: str = "Background"
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
        with contextlib.suppress(ApiException):
            self.request("POST", self._path("Event", meta["namespace"]), body=body)


__all__ = ["ApiException", "Kube", "RESOURCES", "fmt_time", "now", "parse_time"]
