"""A small, dict-based Kubernetes client for the reconcilers: get, list, server-side apply, merge patch,
delete, events. Responses stay JSON dicts (no model deserialization: fast and simple). Every write is
counted, so "an unchanged object makes no writes" can be measured.

The transport is urllib3 with credentials from the pod's ServiceAccount or a kubeconfig (certificates,
tokens), not the `kubernetes` package: importing that costs the operator about 55 MiB of RSS.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import tempfile
import threading
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote

import urllib3
import yaml

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
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
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


class ApiException(Exception):
    """An API error response (or a transport error, status 0)."""

    def __init__(self, status: int = 0, reason: str = "", body: str | None = None):
        super().__init__(f"({status}) {reason}: {(body or '')[:500]}")
        self.status = status
        self.reason = reason
        self.body = body


SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class RestClient:
    """HTTPS to one API server with one identity; thread-safe (urllib3 pools)."""

    def __init__(
        self,
        server: str,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        insecure: bool = False,
        pool_size: int = 16,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.token_file = token_file
        kwargs: dict[str, Any] = {
            "maxsize": pool_size,
            "retries": False,
            "timeout": urllib3.Timeout(connect=10, read=60),
        }
        if self.server.startswith("https"):
            if insecure:
                kwargs.update(cert_reqs=ssl.CERT_NONE)
            else:
                kwargs.update(cert_reqs=ssl.CERT_REQUIRED, ca_certs=ca_file)
            if cert_file:
                kwargs.update(cert_file=cert_file, key_file=key_file)
        self.http = urllib3.PoolManager(**kwargs)

    @classmethod
    def from_environment(cls, pool_size: int = 16) -> RestClient:
        """In-cluster credentials when running in a pod, else the current context of $KUBECONFIG
        (or ~/.kube/config)."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port and os.path.exists(f"{SA_DIR}/token"):
            host = f"[{host}]" if ":" in host else host
            return cls(
                f"https://{host}:{port}",
                ca_file=f"{SA_DIR}/ca.crt",
                token_file=f"{SA_DIR}/token",
                pool_size=pool_size,
            )
        return cls.from_kubeconfig(
            os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config"), pool_size=pool_size
        )

    @classmethod
    def from_kubeconfig(cls, path: str, pool_size: int = 16) -> RestClient:
        path = path.split(os.pathsep)[0]
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg.get("contexts", []) if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg.get("clusters", []) if c["name"] == ctx["cluster"])
        user = next((u.get("user") or {} for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {})
        base = os.path.dirname(os.path.abspath(path))

        def material(data_key: str, file_key: str, src: dict[str, Any]) -> str | None:
            if src.get(data_key):
                fh = tempfile.NamedTemporaryFile(prefix="kubetune-", delete=False)  # noqa: SIM115
                fh.write(base64.b64decode(src[data_key]))
                fh.close()
                os.chmod(fh.name, 0o600)
                return fh.name
            if src.get(file_key):
                return os.path.join(base, os.path.expanduser(src[file_key]))
            return None

        if "exec" in user or (
            "auth-provider" in user and not user["auth-provider"].get("config", {}).get("access-token")
        ):
            raise ApiException(
                0,
                "unsupported kubeconfig",
                "exec / auth-provider credentials are not supported; "
                "use a token or client certificate (or run in-cluster)",
            )
        return cls(
            cluster["server"],
            ca_file=material("certificate-authority-data", "certificate-authority", cluster),
            cert_file=material("client-certificate-data", "client-certificate", user),
            key_file=material("client-key-data", "client-key", user),
            token=user.get("token")
            or (user.get("auth-provider") or {}).get("config", {}).get("access-token"),
            token_file=user.get("tokenFile"),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
            pool_size=pool_size,
        )

    def call(
        self, method: str, path: str, query: list[tuple[str, Any]] | None, body: Any, headers: dict[str, str]
    ) -> Any:
        headers = dict(headers)
        token = self.token
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as fh:  # re-read: projected tokens rotate
                token = fh.read().strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = self.server + path
        if query:
            from urllib.parse import urlencode

            url += "?" + urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        try:
            resp = self.http.request(method, url, body=data, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise ApiException(0, type(exc).__name__, str(exc)) from exc
        if resp.status >= 400:
            raise ApiException(resp.status, resp.reason or "", resp.data.decode(errors="replace"))
        return json.loads(resp.data) if resp.data else None


def label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Kube:
    """Thread-safe: one instance serves all reconcile workers."""

    def __init__(self, api: RestClient, field_manager: str = "kubetune") -> None:
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
        return self.api.call(method, path, query, body, headers)

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
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
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
        with contextlib.suppress(ApiException):
            self.request("POST", self._path("Event", meta["namespace"]), body=body)


__all__ = ["ApiException", "Kube", "RESOURCES", "RestClient", "fmt_time", "now", "parse_time"]
