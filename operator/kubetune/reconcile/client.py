"""The operator's one Kubernetes client: a thin adapter over the official ``kubernetes`` package.

Credentials come from ``kubernetes.config`` exactly as kubectl finds them: the pod's ServiceAccount
in a cluster, else the current context of $KUBECONFIG (or ~/.kube/config), with every kind of user
the package supports (exec plugins as EKS/GKE/AKS/OIDC use them, auth-providers, tokens, token files,
client certificates) and proxies ($HTTPS_PROXY/$NO_PROXY, and the cluster's ``proxy-url``).
Credentials that expire are refreshed by the package itself before a request (its
``refresh_api_key_hook``: exec plugins are run again, projected ServiceAccount tokens re-read).
kubetune writes no credentials anywhere (kubeconfigs are loaded with ``persist_config=False``); the
package keeps ``*-data`` certificates in private temporary files (mode 0600) that it removes at exit,
because Python's TLS stack loads client certificates only from files.

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
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config import kube_config

from .clock import fmt_time, now

log = logging.getLogger("kubetune.client")

# kind -> (API prefix, plural); every kind here is namespaced but Node (read by the fit check)
RESOURCES: dict[str, tuple[str, str]] = {
    "Node": ("/api/v1", "nodes"),
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
LIST_PAGE_SIZE = 500  # items per list request; the API server's own default page is unbounded


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
        try:
            status = json.loads(self.body or "")
        except ValueError:
            status = None
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
        return (self.body or "").strip() or self.reason or f"HTTP {self.status}"


# ---------------------------------------------------------------------------------------------------
# Credentials


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> k8s.Configuration:
    """The client configuration kubectl would use: in-cluster when the pod's ServiceAccount is
    mounted (and no KUBECONFIG path is given), else the kubeconfig (KUBECONFIG may list several
    files, merged like kubectl). Raises ``kubernetes.config.ConfigException`` when neither works."""
    cfg = k8s.Configuration()
    if kubeconfig is None and not os.environ.get("KUBECONFIG"):
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
            _serialize_refreshes(cfg)
            log.debug("credentials: in-cluster ServiceAccount")
            return cfg
        except k8s_config.ConfigException:
            pass
    loader = kube_config._get_kube_config_loader(
        filename=kubeconfig or os.environ.get("KUBECONFIG") or kube_config.KUBE_CONFIG_DEFAULT_LOCATION,
        active_context=context,
        persist_config=False,  # never write refreshed tokens back into the user's files
    )
    loader.load_and_set(cfg)
    # The package reads proxies from $HTTPS_PROXY/$NO_PROXY only; kubectl also honours the cluster's
    # proxy-url (and lets it win over the environment).
    proxy_url = loader._cluster.safe_get("proxy-url")
    if proxy_url:
        cfg.proxy = proxy_url
    _serialize_refreshes(cfg)
    log.debug("credentials: kubeconfig context %s", loader.current_context.get("name"))
    return cfg


def _serialize_refreshes(cfg: k8s.Configuration) -> None:
    """Run the package's credential refresh (an exec plugin, a token file) one thread at a time.

    Every request calls ``refresh_api_key_hook``; when the credential expired, all worker threads
    would run the exec plugin at once. The package's hook re-installs itself on each refresh, so the
    wrapper keeps track of the current one.
    """
    inner: Callable[[k8s.Configuration], None] | None = cfg.refresh_api_key_hook
    if inner is None:
        return
    lock = threading.Lock()
    current = [inner]

    def refresh(c: k8s.Configuration) -> None:
        with lock:
            current[0](c)
            if c.refresh_api_key_hook is not refresh:
                current[0] = c.refresh_api_key_hook
                c.refresh_api_key_hook = refresh

    cfg.refresh_api_key_hook = refresh


THROTTLED_RETRIES = 8
"""How often one request is sent again after 429 Too Many Requests before the caller sees the 429."""


class ThrottledRetry(urllib3.util.Retry):
    """urllib3's retries (connection errors; idempotent requests on a 503 with Retry-After), plus: a 429 Too
    Many Requests is retried for every method, after the server's Retry-After.

    The API server answers 429 when API Priority and Fairness (or --max-requests-inflight) rejects a
    request, before it is executed, so sending a POST or PATCH again cannot apply it twice. urllib3 by
    default retries only idempotent methods, and the package sends applies and merge patches as PATCH: a
    throttled operator would see every rejected write as a failed reconcile."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 429:
            return self.respect_retry_after_header and self.total != 0 and self.status != 0
        return super().is_retry(method, status_code, has_retry_after)


def throttled_retries() -> ThrottledRetry:
    """The retry policy of the operator's requests (``Configuration.retries``)."""
    return ThrottledRetry(
        total=THROTTLED_RETRIES,
        connect=3,
        read=3,  # idempotent methods only (urllib3's allowed_methods): a lost PATCH response is not resent
        redirect=3,
        status=THROTTLED_RETRIES,
        backoff_factor=0.5,  # without a Retry-After: 0.5 s, 1 s, 2 s, ... (at most backoff_max)
        backoff_max=10,
        respect_retry_after_header=True,
        raise_on_status=False,  # retries used up: the 429 itself goes to the caller (ApiException 429)
    )


class ThrottledRetryLevel(logging.Filter):
    """kopf's log of a 429 it retries, as a WARNING rather than an ERROR (a handler filter: sees every logger).

    kopf (``kopf/_cogs/clients/api.py``) retries a 429 with its ``networking.error_backoffs``, waiting at
    least the server's Retry-After, and logs each retry at ERROR ("Request attempt #1/9 failed; will
    retry"). A throttled operator is doing what the cluster's administrator asked, so a burst would fill the
    log with ERROR lines that need nobody's attention. Only those records are lowered: kopf giving up
    ("escalating") and every other error stay ERRORs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.name.startswith("kopf."):
            message = record.getMessage()
            if "will retry" in message and "APITooManyRequestsError" in message:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def lower_throttled_retries(root: logging.Logger | None = None) -> None:
    """Install ThrottledRetryLevel on the handlers of ROOT (default: the root logger), once."""
    for handler in (root or logging.getLogger()).handlers:
        if not any(isinstance(f, ThrottledRetryLevel) for f in handler.filters):
            handler.addFilter(ThrottledRetryLevel())


def api_client(
    cfg: k8s.Configuration | None = None, pool_size: int = 16, retries: urllib3.util.Retry | None = None
) -> k8s.ApiClient:
    """An ApiClient with connections for POOL_SIZE concurrent requests that honours 429 + Retry-After
    (RETRIES: another policy, e.g. fewer retries for requests that must finish within a deadline)."""
    cfg = cfg or load_configuration()
    cfg.connection_pool_maxsize = pool_size
    cfg.retries = retries if retries is not None else throttled_retries()
    return k8s.ApiClient(configuration=cfg)


def bearer_token(cfg: k8s.Configuration) -> str | None:
    """The current bearer token of CFG (refreshed first when it expired), without the scheme."""
    header = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token if token else scheme


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
        if table is self.writes and self.on_write is not None:
            self.on_write(verb, kind)

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
        labels: dict[str, str] | None = None,
        fields: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every object of KIND (with LABELS and FIELDS: a field selector), fetched page by page."""
        selector = [("labelSelector", label_selector(labels))] if labels else []
        if fields:
            selector.append(("fieldSelector", label_selector(fields)))
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            query = [*selector, ("limit", self.page_size)] + ([("continue", token)] if token else [])
            self._count(self.reads, "list", kind)
            try:
                page = self.request("GET", self._path(kind, namespace), query=query) or {}
            except ApiException as exc:
                if exc.status == 410 and token:  # the continue token expired: start a consistent list again
                    items, token = [], None
                    continue
                raise
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return items

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


__all__ = [
    "COMPONENT",
    "RESOURCES",
    "ApiException",
    "Kube",
    "ThrottledRetry",
    "ThrottledRetryLevel",
    "api_client",
    "bearer_token",
    "load_configuration",
    "lower_throttled_retries",
    "throttled_retries",
]
