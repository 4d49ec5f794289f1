"""ModelServe -> Deployment, Service and PodDisruptionBudget (pure functions, no client, no kopf).

Engine-agnostic: the serving container (command, arguments, environment, port, health path) comes from the
ModelServe's engine (kubetune/engines/); everything around it is rendered here the same way for every
engine. Which sources a ModelServe serves is decided in reconcile/sources.py and passed in.

- :func:`revision_hash` names what a rollout serves (what the engine says its pods depend on).
- :func:`render_pod_template`, :func:`render_deployment`, :func:`render_service`, :func:`render_pdb` build
  the children.

Serving pods use the trainer's mount convention: a claim is mounted read-only at ``/mnt/pvc/CLAIM``
(``pvc_local_path``); s3:// sources are copied by an init container (the kubetune trainer image)
into an emptyDir under ``/mnt/kubetune/models``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import API_VERSION, ModelServe, Revision, parse_uri, pvc_local_path
from kubetune.api.v1alpha1.trainerconfig import PVC_MOUNT_ROOT
from kubetune.engines import engine_of
from kubetune.engines.base import (
    HF_CACHE_DIR,
    HOME_DIR,
    MODELS_DIR,
    PORT_NAME,
    Placement,
    Source,
    Sources,
)
from kubetune.render.common import (
    COMPONENT,
    MANAGED_BY,
    MANAGER,
    MAX_NAME,
    MODELSERVE_LABEL,
    child_metadata,
    child_name,
    propagated_labels,
    short_hash,
)
from kubetune.render.publishing import fetch_init_container, registry_auth

# ---- names, labels, annotations -------------------------------------------------------------

LABEL_REVISION = "kubetune.io/revision"
ANNOTATION_REVISION = "kubetune.io/revision"
# On the Deployment (not its template): the pod template of the last revision that passed, so a failed
# rollout can go back to exactly what was served, and the hash of a revision that failed (never retried
# until the spec or a result changes).
ANNOTATION_PREVIOUS_TEMPLATE = "kubetune.io/previous-template"
ANNOTATION_FAILED_REVISION = "kubetune.io/failed-revision"

# PodSecurity "restricted": the TGI and vLLM images run as root by default and have no user of their own;
# their pods run as this uid/gid (the trainer's, whose image the download init containers use), and every
# place they write is an emptyDir: the Hub cache (/data), /tmp (TGI's shard sockets, torch's compile
# caches) and a HOME (Triton, FlashInfer, vLLM and numba caches under ~/.cache, ~/.triton, ~/.config).
SERVE_UID = 1000
PROBE_PERIOD_SECONDS = 10

DNS_1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"


def _fit(name: str) -> str:
    """NAME when it fits a label value and a child name (63), else a stable shortened form with a hash."""
    if len(name) <= MAX_NAME:
        return name
    digest = short_hash(name, 8)
    return f"{name[: MAX_NAME - len(digest) - 1].rstrip('-.')}-{digest}"


def deployment_name_of(name: str) -> str:
    """The Deployment (and label value) of the ModelServe NAME: a DNS subdomain of at most 63 characters."""
    return _fit(name)


def pdb_name_of(name: str) -> str:
    return _fit(name)


def service_name_of(name: str) -> str:
    """A DNS-1035 label (Services: lowercase letters, digits and '-', starting with a letter, <= 63): the
    ModelServe's name when it is one, else a cleaned name plus a hash of the real one (so ``a.b`` and
    ``a-b`` never share a Service) -- stable, since it depends on the name only."""
    if len(name) <= MAX_NAME and re.fullmatch(DNS_1035, name):
        return name
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not cleaned[:1].isalpha():
        cleaned = f"s-{cleaned}".rstrip("-")
    digest = short_hash(name, 8)
    return f"{cleaned[: MAX_NAME - len(digest) - 1].rstrip('-')}-{digest}"


def deployment_name(ms: ModelServe) -> str:
    return deployment_name_of(ms.metadata.name or "")


def pdb_name(ms: ModelServe) -> str:
    return pdb_name_of(ms.metadata.name or "")


def service_name(ms: ModelServe) -> str:
    return service_name_of(ms.metadata.name or "")


def selector_labels(ms: ModelServe) -> dict[str, str]:
    return {MODELSERVE_LABEL: deployment_name(ms)}


def common_labels(ms: ModelServe) -> dict[str, str]:
    return {
        **propagated_labels(ms.metadata.labels),
        "app.kubernetes.io/name": ms.spec.engine,
        "app.kubernetes.io/instance": deployment_name(ms),
        COMPONENT: "model-server",
        MANAGED_BY: MANAGER,
        **selector_labels(ms),
    }


def _meta(ms: ModelServe, uid: str, name: str) -> dict[str, Any]:
    owner = {
        "apiVersion": API_VERSION,
        "kind": "ModelServe",
        "metadata": {"name": ms.metadata.name, "uid": uid},
    }
    return child_metadata(owner, name, ms.metadata.namespace, common_labels(ms))


def endpoint(ms: ModelServe, override: str | None = None) -> str:
    """The URL the smoke test calls and status.endpoint shows.

    OVERRIDE (Settings.serve_endpoint_override) replaces the cluster DNS name; it may use the
    placeholders {name}, {namespace}, {service} and {port}, e.g. ``http://127.0.0.1:8090``.
    """
    svc, ns, port = service_name(ms), ms.metadata.namespace or "default", ms.spec.service.port
    if override:
        return override.format(name=ms.metadata.name, namespace=ns, service=svc, port=port).rstrip("/")
    return f"http://{svc}.{ns}.svc:{port}"


def adapter_path_in_pod(src: Source) -> str:
    """Where a serving pod finds adapter SRC: a mounted claim's path, a Hub id, or the init container's copy."""
    parsed = parse_uri(src.uri, ("hf", "pvc", "s3", "oci"))
    if parsed.scheme == "hf":
        return parsed.hf_repo_id
    if parsed.scheme == "pvc":
        return pvc_local_path(src.uri)
    return f"{MODELS_DIR}/adapter-{src.name}"


# ---- revision --------------------------------------------------------------------------------


def revision_hash(ms: ModelServe, sources: Sources, image: str) -> str:
    """A short stable hash over what the pods serve and need at start (the engine says what that is)."""
    return short_hash(engine_of(ms).revision_inputs(ms, sources, image), 16)


def revision(ms: ModelServe, sources: Sources, image: str) -> Revision:
    """The status.revision record of SOURCES."""
    return Revision(
        hash=revision_hash(ms, sources, image),
        model=sources.model.uri if sources.model else None,
        adapters=[f"{a.name}={a.uri}" for a in sources.adapters],
        sources=sources.sources,
    )


# ---- the pod ----------------------------------------------------------------------------------


@dataclass
class _Volumes:
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    claims: set[str] = field(default_factory=set)
    downloads: list[tuple[str, str, str | None]] = field(default_factory=list)  # (uri, dest, secret)
    pulls: list[tuple[str, str, str | None, str]] = field(
        default_factory=list
    )  # oci: (uri, dest, secret, field)

    def local_path(self, src: Source, slot: str, where: str = "model.uri") -> str:
        """Where SRC is inside the serving container; hf:// ids are returned as is (the engine downloads them)."""
        parsed = parse_uri(src.uri, ("hf", "pvc", "s3", "oci"))
        if parsed.scheme == "hf":
            return parsed.hf_repo_id
        if parsed.scheme == "pvc":
            if parsed.claim not in self.claims:
                self.claims.add(parsed.claim)
                vol = child_name("pvc", parsed.claim.replace(".", "-"))
                self.volumes.append(
                    {"name": vol, "persistentVolumeClaim": {"claimName": parsed.claim, "readOnly": True}}
                )
                self.mounts.append(
                    {"name": vol, "mountPath": f"{PVC_MOUNT_ROOT}/{parsed.claim}", "readOnly": True}
                )
            return pvc_local_path(src.uri)
        dest = f"{MODELS_DIR}/{slot}"
        if parsed.scheme == "oci":  # pulled by an init container (render/publishing.py)
            self.pulls.append((src.uri, dest, src.registry_secret, where))
        else:
            self.downloads.append((src.uri, dest, src.s3_secret))
        return dest


def pod_security_context() -> dict[str, Any]:
    """The pod's securityContext: non-root, the RuntimeDefault seccomp profile, emptyDirs writable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": SERVE_UID,
        "runAsGroup": SERVE_UID,
        "fsGroup": SERVE_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Every container's securityContext (init containers too): no privilege escalation, no capabilities."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def render_pod_template(
    ms: ModelServe,
    sources: Sources,
    *,
    image: str,
    trainer_image: str,
    revision_hash_: str,
    lora_modules: Sequence[str] | None = None,
    oci_plain_http: Sequence[str] = (),
) -> dict[str, Any]:
    """The pod template of one revision: the engine's container around SOURCES (which must have a model).

    OCI_PLAIN_HTTP: registries the pull init containers of oci:// sources reach over plain HTTP.

    LORA_MODULES (engines with live adapters): the adapters the revision's pods start with; None means those
    of SOURCES (a new revision). The decision passes the live Deployment's own while the revision stays, so
    later adapter versions, loaded at run time, never change the pod template.
    """
    if sources.model is None:
        raise ValueError("nothing to serve: no model was resolved")
    spec = ms.spec
    engine = engine_of(ms)
    vols = _Volumes()
    model_path = vols.local_path(sources.model, "model")
    adapters = tuple(
        (a.name or "", vols.local_path(a, f"adapter-{a.name}", f"adapters[{i}].uri"))
        for i, a in enumerate(sources.adapters)
    )
    placement = Placement(
        model=model_path,
        adapters=adapters,
        ranks=tuple(a.rank for a in sources.adapters),
        # Hub token: the model's, else the first adapter's (both engines take one).
        hf_token=next((src.hf_token for src in (sources.model, *sources.adapters) if src.hf_token), None),
    )

    resources: dict[str, dict[str, Any]] = {"requests": {}, "limits": {}}
    res = spec.resources
    if res.gpus:
        resources["limits"][res.gpu_resource] = res.gpus
        resources["requests"][res.gpu_resource] = res.gpus
    for key, value in (("cpu", res.cpu), ("memory", res.memory)):
        if value is not None:
            resources["requests"][key] = str(value)
            resources["limits"][key] = str(value)
    resources = {k: v for k, v in resources.items() if v}

    # Large models take a long time to download and load: give the startup probe the whole progress
    # deadline, then check readiness often and liveness gently.
    startup_failures = max(6, math.ceil(spec.rollout.progress_deadline_seconds / PROBE_PERIOD_SECONDS))
    volumes = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": str(res.shared_memory)}},
        {"name": "hf-cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
        *vols.volumes,
    ]
    mounts = [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "hf-cache", "mountPath": HF_CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": HOME_DIR},
        *vols.mounts,
    ]
    init_containers = []
    if vols.downloads or vols.pulls:
        volumes.append({"name": "models", "emptyDir": {}})
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
        for index, (uri, dest, secret) in enumerate(vols.downloads):
            init: dict[str, Any] = {
                "name": f"fetch-{index}",
                "image": trainer_image,
                # The trainer's own S3 download (kubetune_trainer.sources.download_s3), tested there.
                "command": ["kubetune-trainer", "fetch", uri, dest],
                "volumeMounts": [
                    {"name": "models", "mountPath": MODELS_DIR},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
                "securityContext": container_security_context(),
            }
            if secret:
                init["envFrom"] = [{"secretRef": {"name": secret}}]
            init_containers.append(init)
        registry_volumes: dict[str, str] = {}  # Secret -> volume
        for index, (uri, dest, secret, where) in enumerate(vols.pulls):
            volume = None
            if secret:
                volume = registry_volumes.setdefault(secret, f"registry-{len(registry_volumes)}")
            init_containers.append(
                fetch_init_container(
                    name=f"pull-{index}", image=trainer_image, uri=uri, dest=dest, field=where,
                    models_volume="models", models_dir=MODELS_DIR, security_context=container_security_context(),
                    registry_volume=volume, plain_http=oci_plain_http,
                )
            )  # fmt: skip
        for secret, volume in registry_volumes.items():
            volumes.append(registry_auth("model", secret, volume)[0])

    container = engine.container(ms, placement, image, live_modules=lora_modules)
    health = engine.health_path
    container |= {
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "startupProbe": _probe(health, PROBE_PERIOD_SECONDS, startup_failures, 5),
        "readinessProbe": _probe(health, PROBE_PERIOD_SECONDS, 3, 5),
        "livenessProbe": _probe(health, 30, 6, 10),
    }
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
        # TGI and vLLM drain in-flight requests on SIGTERM.
        "terminationGracePeriodSeconds": 60,
        # No <SERVICE>_PORT=tcp://... variables from the namespace's Services: both engines read variables of
        # that form (TGI's launcher PROMETHEUS_PORT, MASTER_PORT; vLLM's VLLM_PORT) and refuse to start when a
        # Service named "prometheus", "master" or "vllm" puts a URL there.
        "enableServiceLinks": False,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_dict() for t in res.tolerations]

    return {
        "metadata": {
            "labels": {**common_labels(ms), LABEL_REVISION: revision_hash_},
            "annotations": {ANNOTATION_REVISION: revision_hash_},
        },
        "spec": pod_spec,
    }


def template_revision(template: Mapping[str, Any] | None) -> str | None:
    """The revision hash a pod template carries."""
    meta = (template or {}).get("metadata") or {}
    return (meta.get("annotations") or {}).get(ANNOTATION_REVISION) or (meta.get("labels") or {}).get(
        LABEL_REVISION
    )


def render_deployment(
    ms: ModelServe,
    uid: str,
    template: Mapping[str, Any],
    *,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Deployment around a pod TEMPLATE (this revision's, or a previous one when rolling back).

    ANNOTATIONS go on the Deployment itself (previous template, failed revision): they are carried
    from apply to apply because one field manager owns them.
    """
    spec = ms.spec
    meta = _meta(ms, uid, deployment_name(ms))
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(ms)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
            "revisionHistoryLimit": 3,
            "template": json.loads(json.dumps(template)),
        },
    }


def render_service(ms: ModelServe, uid: str) -> dict[str, Any]:
    """The Service in front of the pods: spec.service.port -> the container's http port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ms, uid, service_name(ms)),
        "spec": {
            "type": ms.spec.service.type,
            "selector": selector_labels(ms),
            "ports": [
                {"name": PORT_NAME, "port": ms.spec.service.port, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def wants_pdb(ms: ModelServe) -> bool:
    return ms.spec.replicas > 1


def render_pdb(ms: ModelServe, uid: str) -> dict[str, Any]:
    """At most one TGI pod voluntarily disrupted at a time (only rendered when replicas > 1)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(ms, uid, pdb_name(ms)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(ms)}},
    }
