"""What a ModelServe serves: ``spec.model`` and ``spec.adapters`` (URIs or FineTuneJob references) turned
into sources its engine can load, or why not (UnsupportedByEngine) or what it waits for (pure).

Which result of a referenced FineTuneJob may be used is the rule chained FineTuneJobs use too
(results.py: a ModelServe follows every new result, and keeps serving the last one while the job runs
again); whether the engine can serve it is the engine's (kubetune/engines/).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubetune.api.v1alpha1 import FineTuneJob, FineTuneJobStatus, ModelServe, SecretKeyRef
from kubetune.api.v1alpha1.finetunejob import ResultStatus
from kubetune.engines import Engine, engine_of
from kubetune.engines.base import Source, Sources

from .results import readiness

REASON_UNSUPPORTED = "UnsupportedByEngine"
REASON_WAITING = "WaitingForResult"
# A followed FineTuneJob's latest result failed its evaluation gate (status.result.promoted false).
REASON_NOT_PROMOTED = "ResultNotPromoted"

Raw = Mapping[str, Any]
Job = FineTuneJob | Raw
"""A referenced FineTuneJob: as read from the API server, or parsed already."""


@dataclass
class Resolution(Sources):
    """What resolve_sources found: the sources, or why they cannot be served (yet)."""

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


def referenced_jobs(ms: ModelServe | Raw) -> list[str]:
    """Names of the FineTuneJobs a ModelServe reads (for the index that wakes it)."""
    spec = ms.spec.to_dict() if isinstance(ms, ModelServe) else dict(ms.get("spec") or {})
    names = []
    for src in [spec.get("model") or {}, *(spec.get("adapters") or [])]:
        ref = (src or {}).get("fineTuneJobRef") or {}
        if ref.get("name") and ref["name"] not in names:
            names.append(ref["name"])
    return names


class InvalidJob(ValueError):
    """A referenced FineTuneJob that does not parse (its own status says why)."""


def _as_job(obj: Raw) -> FineTuneJob:
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


@dataclass(frozen=True)
class _Referenced:
    """A referenced FineTuneJob: its object, its result when it may be used now, and its phase."""

    job: FineTuneJob
    result: ResultStatus | None
    phase: str
    uid: str

    def source_id(self, name: str) -> str:
        config_hash = (self.result.config_hash if self.result else None) or "unknown"
        return f"FineTuneJob/{name}@{config_hash}" + (f"#{self.uid[:8]}" if self.uid else "")

    def s3_secret(self, uri: str) -> str | None:
        secret = self.job.spec.output.secret_ref
        return secret.name if uri.startswith("s3://") and secret else None

    def registry_secret(self, uri: str) -> str | None:
        """The job's output.secretRef (a dockerconfigjson Secret) pulls its oci:// result too."""
        secret = self.job.spec.output.secret_ref
        return secret.name if uri.startswith("oci://") and secret else None


def _referenced(res: Resolution, where: str, ref: str, found: Job | None) -> _Referenced | None:
    """The referenced job, or None after recording why it cannot be used (missing or invalid)."""
    if found is None:
        res.waiting.append(f"{where}: FineTuneJob {ref!r} does not exist (yet); create it or fix the name")
        return None
    raw: Raw
    if isinstance(found, FineTuneJob):
        job, raw = found, found.model_dump(by_alias=True, mode="json", exclude_none=True)
    else:
        raw = found
        try:
            job = _as_job(raw)
        except InvalidJob as error:
            res.waiting.append(f"{where}: FineTuneJob {ref!r} is not valid ({error}); fix it first")
            return None
    ready = readiness(raw, follow=True)
    if ready.state == "not-promoted":
        evaluation = job.status.evaluation if job.status else None
        why = (
            evaluation.message
            if evaluation is not None and evaluation.message
            else "see its status.evaluation"
        )
        res.not_promoted.append(
            f"{where}: the latest result of FineTuneJob {ref!r} ({ready.result.get('uri')}) failed its evaluation "
            f"gate and is not served: {why}"
        )
        return None
    result = job.status.result if ready.ready and job.status else None
    uid = str((raw.get("metadata") or {}).get("uid") or "")
    return _Referenced(job, result, ready.phase, uid)


def _waiting_message(where: str, ref: str, phase: str) -> str:
    if phase == "Failed":
        return f"{where}: FineTuneJob {ref!r} failed and has no result; fix and rerun it (see its conditions)"
    return f"{where}: waiting for FineTuneJob {ref!r} to succeed (phase {phase})"


def _uri_source(name: str | None, uri: str, secret: SecretKeyRef | None) -> Source:
    """A source named by URI, with its secret where the scheme needs one."""
    if secret is None:
        return Source(name, uri)
    if uri.startswith("s3://"):
        return Source(name, uri, s3_secret=secret.name)
    if uri.startswith("hf://"):
        return Source(name, uri, hf_token=(secret.name, secret.key))
    if uri.startswith("oci://"):
        return Source(name, uri, registry_secret=secret.name)
    return Source(name, uri)


def _model(res: Resolution, ms: ModelServe, engine: Engine, jobs: Mapping[str, Job | None]) -> None:
    spec = ms.spec
    if spec.model.uri:
        res.model = _uri_source(None, spec.model.uri, spec.model.secret_ref)
        return
    ref = spec.model.fine_tune_job_ref.name  # type: ignore[union-attr]
    where = "model.fineTuneJobRef"
    found = _referenced(res, where, ref, jobs.get(ref))
    if found is None:
        return
    problem = engine.model_problem(where, ref, found.job, found.result)
    if problem is not None:
        res.unsupported.append(problem)
    elif found.result is None:
        res.waiting.append(_waiting_message(where, ref, found.phase))
    else:
        uri = found.result.merged_uri or found.result.uri or ""
        res.model = Source(
            None, uri, found.source_id(ref), found.s3_secret(uri), registry_secret=found.registry_secret(uri)
        )


def _adapters(res: Resolution, ms: ModelServe, engine: Engine, jobs: Mapping[str, Job | None]) -> None:
    spec = ms.spec
    for index, adapter in enumerate(spec.adapters):
        where = f"adapters[{index}] ({adapter.name})"
        if adapter.uri:
            res.adapters.append(_uri_source(adapter.name, adapter.uri, adapter.secret_ref))
            continue
        ref = adapter.fine_tune_job_ref.name  # type: ignore[union-attr]
        found = _referenced(res, where, ref, jobs.get(ref))
        if found is None:
            continue
        job = found.job
        problem = engine.adapter_problem(where, ref, job, found.result)
        if problem is not None:
            res.unsupported.append(problem)
        elif found.result is None:
            res.waiting.append(_waiting_message(where, ref, found.phase))
        else:
            uri = found.result.uri or ""
            lora = job.spec.method.lora
            rank = lora.r if lora is not None else None
            res.adapters.append(
                Source(
                    adapter.name,
                    uri,
                    found.source_id(ref),
                    found.s3_secret(uri),
                    registry_secret=found.registry_secret(uri),
                    rank=rank,
                )  # fmt: skip
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


def resolve_sources(ms: ModelServe, jobs: Mapping[str, Job | None]) -> Resolution:
    """Where the model and each adapter are, given the referenced FineTuneJobs (name -> object or None).

    Classifiers, prefix/prompt-tuned results and non-LoRA adapters are UnsupportedByEngine; a job
    without a result is waited for. A job that is running again but has a result from an earlier run
    keeps serving that result until the new one arrives.
    """
    engine = engine_of(ms)
    res = Resolution()
    _model(res, ms, engine, jobs)
    _adapters(res, ms, engine, jobs)
    problem = engine.sources_problem(ms, res)
    if problem:
        res.unsupported.append(problem)
    return res


__all__ = [
    "REASON_NOT_PROMOTED", "REASON_UNSUPPORTED", "REASON_WAITING", "Resolution", "referenced_jobs", "resolve_sources",
]  # fmt: skip
