"""ModelServe -> TGI or vLLM Deployment, Service and PodDisruptionBudget (pure functions, no client, no kopf).

The vLLM command line is in render/modelserve_vllm.py.

The reconcile layer reads the referenced FineTuneJobs and passes them in; everything here is a
function of its arguments:

- :func:`resolve_sources` turns ``spec.model`` / ``spec.adapters`` (URIs or FineTuneJob references)
  into locations TGI can load, or says why it cannot (UnsupportedByEngine) or what it waits for.
- :func:`revision_hash` names what a rollout serves (model, adapters, TGI settings, image).
- :func:`render_deployment`, :func:`render_service`, :func:`render_pdb` build the children.

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

from pydantic import ValidationError

from kubetune.api.v1alpha1 import (
    API_VERSION,
    CLASSIFICATION_TASKS,
    ENCODER_TASKS,
    FineTuneJob,
    FineTuneJobStatus,
    ModelServe,
    Revision,
    SecretKeyRef,
    parse_uri,
    pvc_local_path,
)
from kubetune.api.v1alpha1.trainerconfig import PVC_MOUNT_ROOT
from kubetune.render import modelserve_vllm as vllm
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

# ---- names, labels, annotations -------------------------------------------------------------

LABEL_REVISION = "kubetune.io/revision"
ANNOTATION_REVISION = "kubetune.io/revision"
# On the Deployment (not its template): the pod template of the last revision that passed, so a failed
# rollout can go back to exactly what was served, and the hash of a revision that failed (never retried
# until the spec or a result changes).
ANNOTATION_PREVIOUS_TEMPLATE = "kubetune.io/previous-template"
ANNOTATION_FAILED_REVISION = "kubetune.io/failed-revision"

CONTAINER_NAME = "tgi"
# The TGI image sets PORT=80; a non-root process without capabilities cannot bind a port below 1024 (on
# most container runtimes), so the pods listen on 8080 (PORT is set explicitly; the Service keeps its port).
CONTAINER_PORT = 8080
PORT_NAME = "http"
MODELS_DIR = "/mnt/kubetune/models"  # emptyDir: s3:// downloads
HF_CACHE_DIR = "/data"  # the TGI image's HUGGINGFACE_HUB_CACHE
# PodSecurity "restricted": the TGI and vLLM images run as root by default and have no user of their own;
# their pods run as this uid/gid (the trainer's, whose image the download init containers use), and every
# place they write is an emptyDir: the Hub cache (/data), /tmp (TGI's shard sockets, torch's compile
# caches) and a HOME (Triton, FlashInfer, vLLM and numba caches under ~/.cache, ~/.triton, ~/.config).
SERVE_UID = 1000
HOME_DIR = "/home/kubetune"
SERVE_USER = (
    "kubetune"  # $USER: getpass.getuser() (torch's cache paths) needs a name; the uid has no passwd entry
)
PROBE_PERIOD_SECONDS = 10

REASON_UNSUPPORTED = "UnsupportedByEngine"
REASON_WAITING = "WaitingForResult"
# A followed FineTuneJob's latest result failed its evaluation gate (status.result.promoted false).
REASON_NOT_PROMOTED = "ResultNotPromoted"
ENGINE_NAMES = {"tgi": "TGI", "vllm": "vLLM"}
# Results that are not text generators (reward models score, masked LMs fill in, QA models extract).
UNSERVABLE_MODEL_KINDS = ("reward-model", "masked-lm", "question-answering")
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


# ---- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedSource:
    """One thing to load: the model (name None) or an adapter."""

    name: str | None
    uri: str
    """Where it is (hf://, pvc:// or s3://)."""
    source: str | None = None
    """FineTuneJob/NAME@CONFIGHASH#UID when it came from a job's result."""
    s3_secret: str | None = None
    """Secret with S3 credentials (a job's output.secretRef) for the download init container."""
    hf_token: tuple[str, str] | None = None
    """(Secret, key) with a Hub token for a private hf:// source."""
    rank: int | None = None
    """An adapter's LoRA rank (its FineTuneJob's method.lora.r; None when given by URI)."""


@dataclass
class Resolution:
    """What resolve_sources found: the sources, or why they cannot be served (yet)."""

    model: ResolvedSource | None = None
    adapters: list[ResolvedSource] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    """Messages: the engine cannot serve this; each says what would work."""
    waiting: list[str] = field(default_factory=list)
    """Messages: a referenced job has no result yet."""
    not_promoted: list[str] = field(default_factory=list)
    """Messages: a referenced job's latest result failed its evaluation gate (it is not served)."""

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.waiting and not self.not_promoted and self.model is not None

    @property
    def reason(self) -> str | None:
        if self.unsupported:
            return REASON_UNSUPPORTED
        if self.not_promoted:
            return REASON_NOT_PROMOTED
        if self.waiting:
            return REASON_WAITING
        return None

    @property
    def message(self) -> str:
        return "; ".join(self.unsupported + self.not_promoted + self.waiting)

    @property
    def sources(self) -> list[str]:
        items = [self.model] if self.model else []
        return [s.source for s in items + self.adapters if s.source]


class InvalidJob(ValueError):
    """A referenced FineTuneJob that does not parse (its own status says why)."""


def _as_job(obj: FineTuneJob | Mapping[str, Any] | None) -> FineTuneJob | None:
    if obj is None or isinstance(obj, FineTuneJob):
        return obj
    body = {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if obj.get(k) is not None}
    status = dict(obj.get("status") or {})
    # Status is written by the operator and the trainer; read only the fields this version knows.
    known = {f.alias or n for n, f in FineTuneJobStatus.model_fields.items()}
    body["status"] = {k: v for k, v in status.items() if k in known}
    try:
        return FineTuneJob.model_validate(body, context={"target": "cluster"})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidJob(f"{where}: {first.get('msg')}") from None


def _load_job(res: Resolution, where: str, ref: str, raw: Any) -> FineTuneJob | None:
    """The job, or None after recording why it cannot be used (missing or invalid)."""
    try:
        job = _as_job(raw)
    except InvalidJob as error:
        res.waiting.append(f"{where}: FineTuneJob {ref!r} is not valid ({error}); fix it first")
        return None
    if job is None:
        res.waiting.append(f"{where}: FineTuneJob {ref!r} does not exist (yet); create it or fix the name")
    return job


def _job_uid(obj: FineTuneJob | Mapping[str, Any] | None) -> str:
    if obj is None:
        return ""
    if isinstance(obj, FineTuneJob):
        return str((obj.metadata.model_extra or {}).get("uid") or "")
    return str((obj.get("metadata") or {}).get("uid") or "")


def _source_id(name: str, job: FineTuneJob, uid: str) -> str:
    result = job.status.result if job.status else None
    config_hash = (result.config_hash if result else None) or "unknown"
    return f"FineTuneJob/{name}@{config_hash}" + (f"#{uid[:8]}" if uid else "")


def _not_promoted(where: str, ref: str, job: FineTuneJob) -> str | None:
    """Why JOB's latest result is not served: it failed its evaluation gate (None: it is promoted)."""
    result = job.status.result if job.status else None
    if result is None or result.promoted is not False:
        return None
    evaluation = job.status.evaluation if job.status else None
    why = evaluation.message if evaluation and evaluation.message else "see its status.evaluation"
    return (
        f"{where}: the latest result of FineTuneJob {ref!r} ({result.uri}) failed its evaluation gate and is not "
        f"served: {why}"
    )


def resolve_sources(ms: ModelServe, jobs: Mapping[str, FineTuneJob | Mapping[str, Any] | None]) -> Resolution:
    """Where the model and each adapter are, given the referenced FineTuneJobs (name -> object or None).

    Classifiers, prefix/prompt-tuned results and non-LoRA adapters are UnsupportedByEngine; a job
    without a result is waited for. A job that is running again but has a result from an earlier run
    keeps serving that result until the new one arrives.
    """
    res = Resolution()
    spec = ms.spec
    engine = ENGINE_NAMES[spec.engine]

    # The model.
    if spec.model.uri:
        res.model = _uri_source(None, spec.model.uri, spec.model.secret_ref)
    else:
        ref = spec.model.fine_tune_job_ref.name  # type: ignore[union-attr]
        raw = jobs.get(ref)
        where = "model.fineTuneJobRef"
        job = _load_job(res, where, ref, raw)
        held = _not_promoted(where, ref, job) if job is not None else None
        if held is not None:
            res.not_promoted.append(held)
        elif job is not None:
            task = job.spec.model.task
            result = job.status.result if job.status else None
            phase = job.status.phase if job.status else None
            if task in CLASSIFICATION_TASKS:
                res.unsupported.append(
                    f"{where}: FineTuneJob {ref!r} trains a {task} model and {engine} serves only text "
                    "generation here; serve a causal-lm or seq2seq FineTuneJob, or run the classifier with your "
                    "own Deployment"
                )
            elif task in ENCODER_TASKS:
                res.unsupported.append(
                    _encoder_message(where, ref, task, engine, result.uri if result else None)
                )
            elif result is None or not result.uri:
                res.waiting.append(_waiting_message(where, ref, phase))
            elif result.kind in UNSERVABLE_MODEL_KINDS:
                res.unsupported.append(
                    f"{where}: FineTuneJob {ref!r} produced a {result.kind} model, which is not a text "
                    f"generator {engine} can serve; serve a causal-lm result (SFT, DPO, KTO, GRPO, RLOO)"
                )
            elif result.kind in ("prefix", "prompt"):
                res.unsupported.append(
                    f"{where}: FineTuneJob {ref!r} produced a {result.kind}-tuning result, which {engine} "
                    "cannot load; train with method lora (served under adapters) or full (served as model)"
                )
            elif result.merged_uri:
                res.model = ResolvedSource(
                    None,
                    result.merged_uri,
                    _source_id(ref, job, _job_uid(raw)),
                    _s3_secret(job, result.merged_uri),
                )
            elif result.kind == "full":
                res.model = ResolvedSource(
                    None, result.uri, _source_id(ref, job, _job_uid(raw)), _s3_secret(job, result.uri)
                )
            else:  # an adapter without a merged copy
                res.unsupported.append(
                    f"{where}: FineTuneJob {ref!r} produced a LoRA adapter without a merged model; set "
                    "spec.output.mergeAdapter: true on the job, or serve its base model "
                    f"(model.uri: {job.spec.model.uri}) with the adapter under adapters: "
                    f"[{{name: ..., fineTuneJobRef: {{name: {ref}}}}}]"
                )

    # The adapters.
    for index, adapter in enumerate(spec.adapters):
        where = f"adapters[{index}] ({adapter.name})"
        if adapter.uri:
            res.adapters.append(_uri_source(adapter.name, adapter.uri, adapter.secret_ref))
            continue
        ref = adapter.fine_tune_job_ref.name  # type: ignore[union-attr]
        raw = jobs.get(ref)
        job = _load_job(res, where, ref, raw)
        if job is None:
            continue
        held = _not_promoted(where, ref, job)
        if held is not None:
            res.not_promoted.append(held)
            continue
        result = job.status.result if job.status else None
        phase = job.status.phase if job.status else None
        method = job.spec.method.type
        if job.spec.model.task in CLASSIFICATION_TASKS:
            res.unsupported.append(
                f"{where}: FineTuneJob {ref!r} trains a {job.spec.model.task} model; {engine} serves "
                "adapters of text-generation models only"
            )
        elif job.spec.model.task in ENCODER_TASKS:
            res.unsupported.append(
                _encoder_message(where, ref, job.spec.model.task, engine, result.uri if result else None)
            )
        elif method in ("prefix-tuning", "prompt-tuning") or (result and result.kind in ("prefix", "prompt")):
            res.unsupported.append(
                f"{where}: FineTuneJob {ref!r} uses {method}, which {engine} cannot load as an adapter; "
                "train with method lora or qlora"
            )
        elif method == "ia3":
            res.unsupported.append(
                f"{where}: FineTuneJob {ref!r} trains an IA3 adapter and {engine} loads only LoRA adapters; "
                "train with method lora or qlora, or set output.mergeAdapter: true and serve the merged "
                "model under model.fineTuneJobRef"
            )
        elif method in ("full", "head-only") or (result and result.kind == "full"):
            res.unsupported.append(
                f"{where}: FineTuneJob {ref!r} produces a full model, not an adapter; serve it under "
                f"model.fineTuneJobRef: {{name: {ref}}}"
            )
        elif result is None or not result.uri:
            res.waiting.append(_waiting_message(where, ref, phase))
        elif result.kind in UNSERVABLE_MODEL_KINDS:
            res.unsupported.append(
                f"{where}: FineTuneJob {ref!r} produced a {result.kind} model, not a LoRA adapter {engine} "
                "can serve; serve a causal-lm LoRA result"
            )
        else:
            lora = job.spec.method.lora
            res.adapters.append(
                ResolvedSource(
                    adapter.name,
                    result.uri,
                    _source_id(ref, job, _job_uid(raw)),
                    _s3_secret(job, result.uri),
                    rank=lora.r if lora is not None else None,
                )
            )
        # An adapter trained on another Hub model than the one served does not load.
        served, trained_on = spec.model.uri or "", job.spec.model.uri or ""  # a chained job has no model.uri
        if (
            served.startswith("hf://")
            and trained_on.startswith("hf://")
            and served.rstrip("/") != trained_on.rstrip("/")
        ):
            res.unsupported.append(
                f"{where}: FineTuneJob {ref!r} trained its adapter on {job.spec.model.uri} but model.uri is "
                f"{served}; serve model.uri: {job.spec.model.uri}"
            )
    if spec.engine == "vllm":
        problem = vllm.rank_problem(ms, [(a.name or "", a.rank) for a in res.adapters])  # adapters are named
        if problem:
            res.unsupported.append(problem)
    return res


def _encoder_message(where: str, ref: str, task: str, engine: str, result_uri: str | None) -> str:
    """Why a masked-lm or extractive question-answering job's result cannot be served for text generation."""
    if task == "masked-lm":
        base = f" (model.uri: {result_uri})" if result_uri else ""
        return (
            f"{where}: FineTuneJob {ref!r} trains a masked-lm model (fill-mask, not text generation), which "
            f"{engine} cannot serve; use its result as the base of a sequence- or token-classification "
            f"FineTuneJob{base}, or serve it with your own Deployment (a transformers fill-mask pipeline)"
        )
    return (
        f"{where}: FineTuneJob {ref!r} trains an extractive question-answering model (it returns answer spans, "
        f"not generated text), which {engine} cannot serve; run it with your own Deployment (a transformers "
        "question-answering pipeline)"
    )


def _waiting_message(where: str, ref: str, phase: str | None) -> str:
    if phase == "Failed":
        return f"{where}: FineTuneJob {ref!r} failed and has no result; fix and rerun it (see its conditions)"
    return f"{where}: waiting for FineTuneJob {ref!r} to succeed (phase {phase or 'Pending'})"


def _uri_source(name: str | None, uri: str, secret: SecretKeyRef | None) -> ResolvedSource:
    """A source named by URI, with its secret where the scheme needs one."""
    if secret is None:
        return ResolvedSource(name, uri)
    if uri.startswith("s3://"):
        return ResolvedSource(name, uri, s3_secret=secret.name)
    if uri.startswith("hf://"):
        return ResolvedSource(name, uri, hf_token=(secret.name, secret.key))
    return ResolvedSource(name, uri)


def _s3_secret(job: FineTuneJob, uri: str) -> str | None:
    if uri.startswith("s3://") and job.spec.output.secret_ref:
        return job.spec.output.secret_ref.name
    return None


def adapter_path_in_pod(src: ResolvedSource) -> str:
    """Where a serving pod finds adapter SRC: a mounted claim's path, a Hub id, or the init container's copy."""
    parsed = parse_uri(src.uri, ("hf", "pvc", "s3"))
    if parsed.scheme == "hf":
        return parsed.hf_repo_id
    if parsed.scheme == "pvc":
        return pvc_local_path(src.uri)
    return f"{MODELS_DIR}/adapter-{src.name}"


# ---- revision --------------------------------------------------------------------------------


def _tgi_settings(ms: ModelServe) -> dict[str, Any]:
    return ms.spec.tgi.to_dict()


def revision_hash(ms: ModelServe, resolution: Resolution, image: str) -> str:
    """A short stable hash over what the pods serve: model, adapters, their sources, settings, image.

    vLLM loads adapters on running pods, so there only what the pod itself needs counts: the claims
    its adapters live on (mounts), adapters copied from S3 at start, whether LoRA is on and its rank.
    """
    if ms.spec.engine == "vllm":
        model_source = resolution.model.source if resolution.model else None
        return short_hash(
            {
                "model": resolution.model.uri if resolution.model else None,
                "sources": [model_source] if model_source else [],
                "adapters": vllm_pod_needs(ms, resolution),
                "vllm": ms.spec.vllm.to_dict(),
                "gpus": ms.spec.resources.gpus,
                "image": image,
            },
            16,
        )
    return short_hash(
        {
            "model": resolution.model.uri if resolution.model else None,
            "adapters": [f"{a.name}={a.uri}" for a in resolution.adapters],
            "sources": resolution.sources,
            "tgi": _tgi_settings(ms),
            "image": image,
        },
        16,
    )


def vllm_pod_needs(ms: ModelServe, resolution: Resolution) -> dict[str, Any]:
    """What a vLLM pod must have at start for its adapters (a change here is a rollout, not a live load)."""
    claims = sorted({parse_uri(a.uri).claim for a in resolution.adapters if a.uri.startswith("pvc://")})
    return {
        "lora": bool(ms.spec.adapters),
        "rank": vllm.max_lora_rank(ms, [a.rank for a in resolution.adapters]),
        "claims": claims,
        "downloaded": [f"{a.name}={a.uri}" for a in resolution.adapters if a.uri.startswith("s3://")],
    }


def revision(ms: ModelServe, resolution: Resolution, image: str) -> Revision:
    """The status.revision record of RESOLUTION."""
    return Revision(
        hash=revision_hash(ms, resolution, image),
        model=resolution.model.uri if resolution.model else None,
        adapters=[f"{a.name}={a.uri}" for a in resolution.adapters],
        sources=resolution.sources,
    )


# ---- the pod ----------------------------------------------------------------------------------


@dataclass
class _Volumes:
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    claims: set[str] = field(default_factory=set)
    downloads: list[tuple[str, str, str | None]] = field(default_factory=list)  # (uri, dest, secret)

    def local_path(self, src: ResolvedSource, slot: str) -> str:
        """Where SRC is inside the TGI container; hf:// ids are returned as is (TGI downloads them)."""
        parsed = parse_uri(src.uri, ("hf", "pvc", "s3"))
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
        self.downloads.append((src.uri, dest, src.s3_secret))
        return dest


def _tgi_args(ms: ModelServe) -> list[str]:
    tgi = ms.spec.tgi
    args = ["--json-output"]
    for flag, value in (
        ("--quantize", tgi.quantize),
        ("--num-shard", tgi.num_shard),
        ("--dtype", tgi.dtype),
        ("--max-input-tokens", tgi.max_input_tokens),
        ("--max-total-tokens", tgi.max_total_tokens),
        ("--max-batch-prefill-tokens", tgi.max_batch_prefill_tokens),
        ("--max-concurrent-requests", tgi.max_concurrent_requests),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args + list(tgi.extra_args)


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


def _home_env() -> list[dict[str, Any]]:
    return [{"name": "HOME", "value": HOME_DIR}, {"name": "USER", "value": SERVE_USER}]


def render_pod_template(
    ms: ModelServe,
    resolution: Resolution,
    *,
    image: str,
    trainer_image: str,
    revision_hash_: str,
    lora_modules: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The TGI or vLLM pod template of one revision (RESOLUTION must be ok).

    LORA_MODULES (vLLM): the ``--lora-modules`` the revision's pods start with; None means the adapters
    of RESOLUTION (a new revision). The decision passes the live Deployment's own while the revision
    stays, so later adapter versions, loaded at run time, never change the pod template.
    """
    if resolution.model is None:
        raise ValueError(f"nothing to serve: {resolution.message or 'no model resolved'}")
    spec = ms.spec
    vols = _Volumes()
    model_id = vols.local_path(resolution.model, "model")
    adapters = [f"{a.name}={vols.local_path(a, f'adapter-{a.name}')}" for a in resolution.adapters]
    # Hub token: the model's, else the first adapter's (both engines take one).
    token = next((src.hf_token for src in (resolution.model, *resolution.adapters) if src.hf_token), None)
    token_env = (
        [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token[0], "key": token[1]}}}]
        if token
        else []
    )

    env: list[dict[str, Any]] = [
        {"name": "MODEL_ID", "value": model_id},
        {"name": "PORT", "value": str(CONTAINER_PORT)},
        {"name": "HOSTNAME", "value": "0.0.0.0"},
        {"name": "HUGGINGFACE_HUB_CACHE", "value": HF_CACHE_DIR},
        *_home_env(),
    ]
    if adapters:
        env.append({"name": "LORA_ADAPTERS", "value": ",".join(adapters)})
    env += token_env

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
    if vols.downloads:
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

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "args": _tgi_args(ms),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
    }
    if spec.engine == "vllm":
        modules = adapters if lora_modules is None else list(lora_modules)
        ranks = [a.rank for a in resolution.adapters]
        container = {
            "name": vllm.CONTAINER_NAME,
            "image": image,
            "command": ["vllm", "serve"],
            "args": vllm.args(ms, model_id, modules, ranks),
            "env": vllm.env() + _home_env() + token_env,
            "ports": [{"name": PORT_NAME, "containerPort": vllm.CONTAINER_PORT, "protocol": "TCP"}],
        }
    container |= {
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "startupProbe": _probe("/health", PROBE_PERIOD_SECONDS, startup_failures, 5),
        "readinessProbe": _probe("/health", PROBE_PERIOD_SECONDS, 3, 5),
        "livenessProbe": _probe("/health", 30, 6, 10),
    }
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
        # TGI and vLLM drain in-flight requests on SIGTERM.
        "terminationGracePeriodSeconds": 60,
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


def referenced_jobs(ms: ModelServe | Mapping[str, Any]) -> list[str]:
    """Names of the FineTuneJobs a ModelServe reads (for the index that re-triggers it)."""
    spec = ms.spec.to_dict() if isinstance(ms, ModelServe) else dict(ms.get("spec") or {})
    names = []
    for src in [spec.get("model") or {}, *(spec.get("adapters") or [])]:
        ref = (src or {}).get("fineTuneJobRef") or {}
        if ref.get("name") and ref["name"] not in names:
            names.append(ref["name"])
    return names
