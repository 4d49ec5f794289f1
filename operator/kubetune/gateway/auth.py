"""Who is calling, and may they: the cluster decides (TokenReview, SubjectAccessReview).

The bearer token of a request is a Kubernetes token (a ServiceAccount token, or whatever the API server's
authenticators accept: OIDC, webhook). The gateway asks the API server who it belongs to (TokenReview), then
whether that user may do the request's verb on finetunejobs.kubetune.io in the target namespace
(SubjectAccessReview with the user's name, uid, groups and extra), so RBAC decides. The token itself is never
logged or stored; cache keys are its SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubetune.reconcile.client import ApiException, Kube

from .errors import ApiError

log = logging.getLogger("kubetune.gateway.auth")

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
GROUP = "kubetune.io"
SA_PREFIX = "system:serviceaccount:"
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Caller:
    """The user a token belongs to, as the API server's authenticators say."""

    username: str
    uid: str | None = None
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict, hash=False, compare=False)

    @property
    def service_account_namespace(self) -> str | None:
        """NAMESPACE of a ServiceAccount's token (system:serviceaccount:NAMESPACE:NAME), else None."""
        if not self.username.startswith(SA_PREFIX):
            return None
        namespace, _, name = self.username[len(SA_PREFIX) :].partition(":")
        return namespace if namespace and name else None


def target_namespace(caller: Caller, header: str | None) -> str:
    """The namespace a request acts in: the header's, else the token's ServiceAccount's (a 400 otherwise)."""
    namespace = header.strip() if header else caller.service_account_namespace
    if not namespace:
        raise ApiError(
            400,
            "no namespace: send the OpenAI-Project header (project= in the OpenAI SDK) or Kubetune-Namespace "
            "naming it, or use a ServiceAccount token (its namespace is the default)",
            "project",
            "namespace_required",
            retry=False,
        )
    if len(namespace) > 63 or not NAMESPACE.match(namespace):
        raise ApiError(
            400, f"{namespace!r} is not a namespace name", "project", "invalid_namespace", retry=False
        )
    return namespace


def access_review(
    caller: Caller, namespace: str, verb: str, resource: str, name: str | None = None
) -> dict[str, Any]:
    """The SubjectAccessReview that asks whether CALLER may VERB RESOURCE.kubetune.io in NAMESPACE."""
    attributes: dict[str, Any] = {"namespace": namespace, "verb": verb, "group": GROUP, "resource": resource}
    if name:
        attributes["name"] = name
    spec: dict[str, Any] = {
        "user": caller.username,
        "groups": list(caller.groups),
        "resourceAttributes": attributes,
    }
    if caller.uid:
        spec["uid"] = caller.uid
    if caller.extra:
        spec["extra"] = caller.extra
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


class _TTLCache:
    """A small thread-safe cache whose entries expire SECONDS after they were put."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds, self.clock = seconds, clock
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            if hit[0] <= self.clock():
                del self._items[key]
                return None
            return hit[1]

    def put(self, key: Any, value: Any) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._items) >= CACHE_ENTRIES:  # drop the entries that expire first
                for old in sorted(self._items, key=lambda k: self._items[k][0])[: CACHE_ENTRIES // 10]:
                    del self._items[old]
            self._items[key] = (self.clock() + self.seconds, value)


def _unavailable(what: str, error: ApiException) -> ApiError:
    if error.status == 403:
        return ApiError(
            500,
            f"the gateway's ServiceAccount may not {what} (give it the chart's ClusterRole): {error.message}",
            None,
            "gateway_rbac",
            retry=False,
        )
    return ApiError(
        503, f"the API server could not {what}: {error.message}", None, "api_unavailable", retry=True
    )


class Reviews:
    """TokenReview and SubjectAccessReview through the gateway's own client, with a short cache of the
    answers that let a caller in (never of a refusal: a new RoleBinding works at once)."""

    def __init__(
        self,
        kube: Kube,
        audiences: list[str] | None = None,
        cache_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.audiences = list(audiences or [])
        self._callers = _TTLCache(cache_seconds, clock)
        self._allowed = _TTLCache(cache_seconds, clock)

    def authenticate(self, token: str) -> Caller:
        """The Caller of TOKEN (401 when the API server does not accept it)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._callers.get(key)
        if cached is not None:
            return cached
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        try:
            review = self.kube.request("POST", TOKEN_REVIEWS, body=body) or {}
        except ApiException as error:
            raise _unavailable("review the token (create tokenreviews)", error) from None
        status = review.get("status") or {}
        user = status.get("user") or {}
        if not status.get("authenticated") or not user.get("username"):
            raise ApiError(
                401,
                "the bearer token is not valid for this cluster (expired, revoked, or for another audience): "
                "use a Kubernetes token, e.g. `kubectl create token SERVICEACCOUNT`",
                None,
                "invalid_api_key",
                retry=False,
            )
        caller = Caller(
            username=user["username"],
            uid=user.get("uid"),
            groups=tuple(user.get("groups") or ()),
            extra={k: list(v) for k, v in (user.get("extra") or {}).items()},
        )
        self._callers.put(key, caller)
        return caller

    def allowed(
        self, caller: Caller, namespace: str, verb: str, resource: str = "finetunejobs"
    ) -> tuple[bool, str]:
        """(whether CALLER may VERB RESOURCE in NAMESPACE, the authorizer's reason)."""
        key = (caller.username, caller.uid, caller.groups, namespace, verb, resource)
        if self._allowed.get(key):
            return True, "cached"
        try:
            review = self.kube.request(
                "POST", ACCESS_REVIEWS, body=access_review(caller, namespace, verb, resource)
            )
        except ApiException as error:
            raise _unavailable("review the access (create subjectaccessreviews)", error) from None
        status = (review or {}).get("status") or {}
        allowed = bool(status.get("allowed")) and not status.get("denied")
        if allowed:
            self._allowed.put(key, True)
        return allowed, status.get("reason") or status.get("evaluationError") or ""

    def authorize(self, caller: Caller, namespace: str, verb: str, resource: str = "finetunejobs") -> None:
        """Nothing when CALLER may VERB RESOURCE.kubetune.io in NAMESPACE; else a 403 saying what is missing."""
        allowed, reason = self.allowed(caller, namespace, verb, resource)
        if not allowed:
            log.info("denied: %s may not %s %s in %s", caller.username, verb, resource, namespace)
            raise ApiError(
                403,
                f"{caller.username} may not {verb} {resource}.{GROUP} in namespace {namespace}"
                + (f" ({reason})" if reason else "")
                + ": ask for a Role that grants it (docs/openai-api.md lists the verbs each route needs)",
                None,
                "forbidden",
                retry=False,
            )


__all__ = ["Caller", "Reviews", "access_review", "target_namespace"]
