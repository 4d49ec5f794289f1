"""FineTuneJob -> the children that run it: ConfigMap, headless Service, Indexed Job, ServiceAccount, Role,
RoleBinding. Pure functions of the (validated) FineTuneJob, the operator's render options and the attempt.

Names (deterministic; ``N`` is the FineTuneJob's name):
    ConfigMap              N-trainer-config
    Service (headless)     N-trainer           pods are N-trainer[-K]-<index>.N-trainer (multi-node only)
    ServiceAccount, Role,
    RoleBinding            N-trainer
    Job, attempt 1         N-trainer           (status.jobName names the current one)
    Job, attempt K > 1     N-trainer-K
Any legal N works (dots, up to 253 characters): when ``N-suffix`` is not a DNS-1035 label of at most 63
characters (52 for Jobs, whose pods' hostnames append an index), ``render.common.child_name`` makes it one
with a hash of N, e.g. ``llama-v2-sft-<hash>-trainer`` for ``llama.v2.sft``. Label values are cut the
same way (``label_value``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune.api.v1alpha1 import (
    ChainResolution,
    FineTuneJob,
    SecretKeyRef,
    TrainerConfig,
    TrainerRuntime,
    config_hash,
    pvc_claims,
)
from kubetune.api.v1alpha1.trainerconfig import (
    CACHE_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_PATH,
    ENV_CONFIG,
    ENV_GPUS_PER_NODE,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_NODE_RANK,
    ENV_NUM_NODES,
    ENV_POD_NAME,
    ENV_REPORT_STATUS,
    METRICS_PORT,
    PVC_MOUNT_ROOT,
    RENDEZVOUS_PORT,
    WORK_DIR,
    pvc_local_path,
)
from kubetune.api.v1alpha1.uris import parse_uri

from .common import (
    ATTEMPT_LABEL,
    COMPONENT,
    DNS1035_LABEL,
    FINETUNEJOB_LABEL,
    MANAGED_BY,
    MANAGER,
    MAX_NAME,
    PART_OF,
    RUN_GENERATION_ANNOTATION,
    RUN_ID_LABEL,
    child_metadata,
    child_name,
    label_value,
    propagated_labels,
    short_hash,
    with_hash,
)
from .publishing import DOCKER_CONFIG_KEY, register_env, registry_secrets, trainer_registry
from .tracking import tracking_env

# Spec fields that change in place; any other change after the run started starts a new run.
LIFECYCLE_FIELDS = (
    "suspend",
    "backoff_limit",
    "active_deadline_seconds",
    "pending_deadline_seconds",
    "ttl_seconds_after_finished",
)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
TRAINER_CONTAINER = "trainer"
TRAINER_UID = 1000
MAX_JOB_NAME = 52  # pods get the hostname JOB-INDEX (<= 63) and the label job-name

# libyaml's emitter (the same text as yaml.safe_dump, 4x faster: the pure-Python one was most of a first
# reconcile's CPU time, ~3 ms per FineTuneJob)
SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# S3 credential keys read from an S3 secret (the first two are required).
S3_KEYS_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_KEYS_OPTIONAL = ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class RenderOptions:
    """What the operator's settings contribute to a trainer pod."""

    trainer_image: str = "ghcr.io/kubetune/kubetune-trainer:0.1.0"
    image_pull_policy: str | None = None
    termination_grace_seconds: int = 120
    oci_plain_http: tuple[str, ...] = ()
    """Registries (host[:port]) spoken to over plain HTTP (KUBETUNE_OCI_PLAIN_HTTP_REGISTRIES)."""


# ------------------------------------------------------------------------------------------------
# names and identity


def configmap_name(name: str) -> str:
    return child_name(name, "trainer-config")


def service_name(name: str) -> str:
    return child_name(name, "trainer")


def serviceaccount_name(name: str) -> str:
    return child_name(name, "trainer")


def job_name(name: str, attempt: int = 1) -> str:
    return child_name(name, "trainer" if attempt <= 1 else f"trainer-{attempt}", MAX_JOB_NAME)


def run_spec(job: FineTuneJob) -> FineTuneJob:
    """The job as one run sees it: lifecycle fields at their defaults (they change in place), no status."""
    defaults = {f: job.spec.__class__.model_fields[f].default for f in LIFECYCLE_FIELDS}
    spec = job.spec.model_copy(update=defaults)
    meta = job.metadata.model_copy(update={"labels": None, "annotations": None})
    keep = {k: v for k, v in (meta.model_extra or {}).items() if k in ("uid",)}
    meta = meta.__class__(name=meta.name, namespace=meta.namespace, **keep)
    return job.model_copy(update={"spec": spec, "metadata": meta, "status": None})


def run_id(job: FineTuneJob) -> str:
    """The run's identity: the config hash of the spec without its lifecycle fields."""
    return config_hash(run_spec(job))


def uid_of(job: FineTuneJob) -> str:
    return str((job.metadata.model_extra or {}).get("uid") or "")


def image_of(job: FineTuneJob, opts: RenderOptions) -> str:
    return job.spec.image or opts.trainer_image


def storage_uri(job: FineTuneJob) -> str:
    """Where checkpoints and the saved result go: output.uri, or output.checkpointUri for an oci:// output."""
    output = job.spec.output
    uri = output.uri or ""
    return (output.checkpoint_uri or "") if uri.startswith("oci://") else uri


def output_dir(job: FineTuneJob) -> str:
    uri = storage_uri(job)
    if uri.startswith("pvc://"):
        return pvc_local_path(uri)
    return f"{WORK_DIR}/output"


def base_labels(job: FineTuneJob) -> dict[str, str]:
    """Labels of every child: the owner's own labels (propagated) plus kubetune's."""
    labels = propagated_labels(job.metadata.labels)
    labels.update(
        {
            MANAGED_BY: MANAGER,
            PART_OF: "kubetune",
            COMPONENT: "trainer",
            FINETUNEJOB_LABEL: label_value(job.metadata.name or ""),
        }
    )
    return labels


def _meta(job: FineTuneJob, owner: dict[str, Any], name: str, **extra: Any) -> dict[str, Any]:
    return child_metadata(owner, name, job.metadata.namespace, base_labels(job), **extra)


def _owner(job: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "metadata": {"name": job.metadata.name, "uid": uid_of(job)},
    }


# ------------------------------------------------------------------------------------------------
# secrets


@dataclass(frozen=True)
class SecretUse:
    """A Secret the pod reads: which field refers to it, and the keys that must exist."""

    field: str
    name: str
    required_keys: tuple[str, ...]
    optional_keys: tuple[str, ...] = ()
    env_prefix: str = ""


def secret_uses(job: FineTuneJob) -> list[SecretUse]:
    """Every Secret a FineTuneJob's pods read, with the keys they need (checked before the Job is made)."""
    spec = job.spec
    uses: list[SecretUse] = []
    for role, path, uri, ref in (
        (
            "CHECKPOINT",
            "spec.output.checkpointSecretRef",
            spec.output.checkpoint_uri or "",
            spec.output.checkpoint_secret_ref,
        ),  # fmt: skip
        ("OUTPUT", "spec.output.secretRef", spec.output.uri or "", spec.output.secret_ref),
        ("DATASET", "spec.dataset.secretRef", spec.dataset.uri, spec.dataset.secret_ref),
        ("MODEL", "spec.model.secretRef", spec.model.uri or "", spec.model.secret_ref),
    ):
        if ref is None:
            continue
        if uri.startswith("s3://"):
            uses.append(SecretUse(path, ref.name, S3_KEYS_REQUIRED, S3_KEYS_OPTIONAL, f"KUBETUNE_{role}_"))
        elif uri.startswith("hf://") and isinstance(ref, SecretKeyRef):
            uses.append(SecretUse(path, ref.name, (ref.key,), (), f"KUBETUNE_{role}_"))
    # oci://: a kubernetes.io/dockerconfigjson Secret, mounted as a file (render/publishing.py), not env
    uses += [SecretUse(path, name, (DOCKER_CONFIG_KEY,)) for _, path, name in registry_secrets(job)]
    return uses


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def secret_env(job: FineTuneJob) -> list[dict[str, Any]]:
    """Credentials as env from Secrets (never in the ConfigMap).

    HF_TOKEN comes from the model's secret (hf:// model), else the dataset's (hf:// dataset); AWS_* from
    the output's secret (s3:// output), else the dataset's, else the model's. Each role's credentials are
    also available under KUBETUNE_<ROLE>_<VAR> (ROLE: MODEL, DATASET, OUTPUT) when they differ.
    """
    env: list[dict[str, Any]] = []
    seen: set[str] = set()
    uses = [u for u in secret_uses(job) if u.required_keys != (DOCKER_CONFIG_KEY,)]
    hf = [u for u in uses if u.required_keys and u.required_keys[0] not in S3_KEYS_REQUIRED]
    s3 = [u for u in uses if u.required_keys == S3_KEYS_REQUIRED]
    hf_order = sorted(hf, key=lambda u: 0 if u.field.startswith("spec.model") else 1)
    if hf_order:
        u = hf_order[0]
        env.append(_secret_env("HF_TOKEN", u.name, u.required_keys[0]))
        seen.add("HF_TOKEN")
    if s3:
        u = s3[0]
        env += [_secret_env(k, u.name, k) for k in S3_KEYS_REQUIRED]
        env += [_secret_env(k, u.name, k, optional=True) for k in S3_KEYS_OPTIONAL]
        seen.update(S3_KEYS_REQUIRED + S3_KEYS_OPTIONAL)
    for u in uses if len(uses) > 1 else ():
        if u.required_keys == S3_KEYS_REQUIRED:
            env += [_secret_env(u.env_prefix + k, u.name, k) for k in S3_KEYS_REQUIRED]
            env += [_secret_env(u.env_prefix + k, u.name, k, optional=True) for k in S3_KEYS_OPTIONAL]
        else:
            env.append(_secret_env(u.env_prefix + "HF_TOKEN", u.name, u.required_keys[0]))
    return env


# ------------------------------------------------------------------------------------------------
# children


def trainer_config(
    job: FineTuneJob, opts: RenderOptions, chain: ChainResolution | None = None
) -> TrainerConfig:
    """CHAIN: what the job's FineTuneJob references resolved to (reconcile/chains.py), for the trainer."""
    return TrainerConfig(
        job=run_spec(job),
        runtime=TrainerRuntime(
            run_id=run_id(job),
            output_dir=output_dir(job),
            output_uri=job.spec.output.uri,
            checkpoint_uri=storage_uri(job)
            if job.spec.output.uri and job.spec.output.uri.startswith("oci://")
            else None,
            image=image_of(job, opts),
            report_status=True,
            metrics_port=METRICS_PORT,
            uid=uid_of(job) or None,
            chain=chain,
        ),
    )


def render_configmap(
    job: FineTuneJob, opts: RenderOptions, chain: ChainResolution | None = None
) -> dict[str, Any]:
    """The trainer config (spec + runtime facts, no secrets) at CONFIG_DIR/CONFIG_FILE."""
    config = trainer_config(job, opts, chain)
    text = yaml.dump(config.to_dict(), Dumper=SAFE_DUMPER, sort_keys=False)
    meta = _meta(job, _owner(job), configmap_name(job.metadata.name or ""))
    meta["labels"][RUN_ID_LABEL] = config.runtime.run_id
    return with_hash({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {CONFIG_FILE: text}})


def needs_service(job: FineTuneJob) -> bool:
    """Whether the run has a headless Service: only multi-node runs, whose pods find pod 0 (the rendezvous)
    by its DNS name; a single pod rendezvouses with itself (the launcher ignores MASTER_ADDR for one node)
    and its metrics are scraped from the pod (PodMonitor), so one write per FineTuneJob is saved."""
    return job.spec.resources.nodes > 1


def render_service(job: FineTuneJob, attempt: int = 1) -> dict[str, Any]:
    """Headless Service for rendezvous: stable DNS names for the current attempt's pods (multi-node runs)."""
    name = job.metadata.name or ""
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(job, _owner(job), service_name(name)),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"batch.kubernetes.io/job-name": job_name(name, attempt)},
                "ports": [
                    {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT},
                ],
            },
        }
    )


def render_rbac(job: FineTuneJob) -> list[dict[str, Any]]:
    """ServiceAccount + Role (this FineTuneJob only: get it, get/patch its status) + RoleBinding."""
    name = job.metadata.name or ""
    sa = serviceaccount_name(name)
    owner = _owner(job)
    return [
        with_hash({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(job, owner, sa)}),
        with_hash(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": _meta(job, owner, sa),
                "rules": [
                    {
                        "apiGroups": ["kubetune.io"],
                        "resources": ["finetunejobs"],
                        "resourceNames": [name],
                        "verbs": ["get"],
                    },
                    {
                        "apiGroups": ["kubetune.io"],
                        "resources": ["finetunejobs/status"],
                        "resourceNames": [name],
                        "verbs": ["get", "patch"],
                    },
                ],
            }
        ),
        with_hash(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": _meta(job, owner, sa),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": job.metadata.namespace}],
            }
        ),
    ]


def _volume_name(claim: str) -> str:
    """A volume name (a DNS label) for the claim CLAIM (a DNS subdomain: it may hold dots)."""
    name = f"pvc-{claim}"
    return name if len(name) <= MAX_NAME and DNS1035_LABEL.fullmatch(name) else f"pvc-{short_hash(claim, 12)}"


def _volumes(
    job: FineTuneJob, chain: ChainResolution | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = job.spec
    name = job.metadata.name or ""
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": configmap_name(name)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.resources.shared_memory)}},
        {"name": "work", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        # Non-root, possibly read-only image filesystem (PodSecurity "restricted"): scratch goes here.
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "work", "mountPath": WORK_DIR},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    out = storage_uri(job)
    written = {parse_uri(out, ("pvc",)).claim} if out.startswith("pvc://") else set()
    for claim in pvc_claims(job, chain.uris() if chain else ()):
        vol = _volume_name(claim)
        read_only = claim not in written
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": vol, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": read_only})
    return volumes, mounts


def _env(job: FineTuneJob, jname: str, registry_env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = job.spec
    name = job.metadata.name or ""
    ours: list[dict[str, Any]] = [
        {"name": ENV_CONFIG, "value": CONFIG_PATH},
        {
            "name": ENV_NODE_RANK,
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
            },
        },
        {"name": ENV_NUM_NODES, "value": str(spec.resources.nodes)},
        {"name": ENV_GPUS_PER_NODE, "value": str(spec.resources.gpus_per_node)},
        {"name": ENV_MASTER_ADDR, "value": f"{jname}-0.{service_name(name)}"},
        {"name": ENV_MASTER_PORT, "value": str(RENDEZVOUS_PORT)},
        {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": ENV_REPORT_STATUS, "value": "true"},
        {"name": "HF_HOME", "value": CACHE_DIR},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        *secret_env(job),
        *tracking_env(job),
        *register_env(job),
        *registry_env,
    ]
    user = [e.to_dict() for e in spec.env]
    user_names = {e["name"] for e in user}
    # The user's value wins; a name must appear once (server-side apply keys env by name).
    return [e for e in ours if e["name"] not in user_names] + user


def _resources(job: FineTuneJob) -> dict[str, Any]:
    res = job.spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu is not None:
        requests["cpu"] = limits["cpu"] = str(res.cpu)
    if res.memory is not None:
        requests["memory"] = limits["memory"] = str(res.memory)
    if res.gpus_per_node > 0:
        limits[res.gpu_resource] = str(res.gpus_per_node)
        requests[res.gpu_resource] = str(res.gpus_per_node)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def pod_failure_policy() -> dict[str, Any]:
    """A failed trainer pod fails the attempt at once (the operator then starts the next attempt, which
    resumes from the latest checkpoint). A pod disrupted by preemption, eviction or a node drain (condition
    DisruptionTarget) is replaced by the Job controller without using an attempt: that is not the
    trainer's fault, and the replacement also resumes from the latest checkpoint."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "NotIn", "values": [0]},
            },
        ]
    }


def render_job(
    job: FineTuneJob,
    opts: RenderOptions,
    attempt: int = 1,
    *,
    suspend: bool | None = None,
    chain: ChainResolution | None = None,
) -> dict[str, Any]:
    """The Indexed batch/v1 Job of one attempt: one pod per node, rank = completion index."""
    spec = job.spec
    res = spec.resources
    name = job.metadata.name or ""
    jname = job_name(name, attempt)
    rid = run_id(job)
    volumes, mounts = _volumes(job, chain)
    registry_volumes, registry_mounts, registry_env = trainer_registry(job, opts.oci_plain_http)
    volumes += registry_volumes
    mounts += registry_mounts
    labels = base_labels(job)
    labels.update({RUN_ID_LABEL: rid, ATTEMPT_LABEL: str(attempt)})
    job_labels = dict(labels)
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    if suspend is None:
        suspend = spec.suspend or bool(spec.queue_name)
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": image_of(job, opts),
        "command": ["kubetune-trainer", "launch"],
        "env": _env(job, jname, registry_env),
        "ports": [
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(job),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if opts.image_pull_policy:
        container["imagePullPolicy"] = opts.image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": service_name(name),
        "serviceAccountName": serviceaccount_name(name),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": opts.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_dict() for t in res.tolerations]
    if res.affinity:
        pod_spec["affinity"] = copy.deepcopy(res.affinity)
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if res.scheduler_name:
        pod_spec["schedulerName"] = res.scheduler_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    meta = _meta(job, _owner(job), jname)
    meta["labels"] = job_labels
    meta["annotations"] = {
        RUN_GENERATION_ANNOTATION: str((job.metadata.model_extra or {}).get("generation", ""))
    }
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": res.nodes,
            "parallelism": res.nodes,
            "backoffLimit": 0,
            "podFailurePolicy": pod_failure_policy(),
            "suspend": bool(suspend),
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        RUN_GENERATION_ANNOTATION: meta["annotations"][RUN_GENERATION_ANNOTATION],
                        FINETUNEJOB_LABEL: name,  # the owner's full name (a label value may be shortened)
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    return with_hash(body)
