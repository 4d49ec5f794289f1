"""Chained FineTuneJobs: a job that starts from another job's result (spec.model.fineTuneJobRef) or trains
against another job's reward model (objective.rl.rewards[].model.fineTuneJobRef).

Pure: ``resolve`` takes the job and the FineTuneJobs of its chain by name (raw objects as read from the API
server, None when missing) and returns a Verdict: ready (with the resolved URIs for the TrainerConfig and
the parents for status.result.parents), waiting (WaitingForModel: a referenced job does not exist yet,
reason ReferenceNotFound, or has not succeeded yet) or failed (a referenced job failed or does not produce
what is needed, or the chain has a cycle). ``read_chain`` collects those objects through an injected
getter, following the references transitively.

Chains converge in any order of creation: a job applied before the job it refers to waits for it (Argo CD
and Flux apply a commit's manifests in any order), and a cycle is a cycle whichever of its jobs came
first. A failed verdict is never final: it is decided again whenever a referenced job changes (the
dependents index wakes the job), and clears once the reference is fixed.

How a result becomes the next job's base model:
- a full model (method full or head-only) or a merged model (output.mergeAdapter) is loaded as it is;
- an adapter (lora, qlora, ia3 without mergeAdapter) is merged into its own base (found by following the
  referenced job's model.uri or its fineTuneJobRef, recursively) before this job applies its own method;
- prefix- and prompt-tuning results cannot be a base.
A reward model (objective reward) is resolved the same way and loaded as a sequence classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.api.v1alpha1 import (
    ADAPTER_METHODS,
    CLASSIFICATION_TASKS,
    RL_OBJECTIVES,
    ChainResolution,
    FineTuneJob,
    ParentResult,
    ResolvedModel,
    implied_task,
)
from kubetune.reconcile.references import ReferenceIndex
from kubetune.reconcile.results import readiness

WAITING_CONDITION = "WaitingForModel"
# Reasons of a verdict that holds the job back (ReferenceNotFound waits; the others are a Failed condition
# that clears once the reference is fixed).
REFERENCE_REASONS = (
    "ReferenceNotFound", "ReferenceFailed", "ReferenceCycle", "ReferenceIncompatible", "ReferenceNotPromoted",
)  # fmt: skip
MAX_DEPTH = 32

Raw = Mapping[str, Any]


@dataclass(frozen=True)
class Reference:
    """One reference of a job to another: its role and the field that makes it."""

    name: str
    role: Literal["model", "reward-model"]
    field: str


@dataclass(frozen=True)
class Verdict:
    state: Literal["ready", "waiting", "failed"]
    reason: str
    message: str
    chain: ChainResolution = field(default_factory=ChainResolution)

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class _Stop(Exception):
    def __init__(self, state: str, reason: str, message: str):
        super().__init__(message)
        self.verdict = Verdict(state, reason, message)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ references


def references(spec: FineTuneJob | Raw) -> list[Reference]:
    """The FineTuneJobs a job refers to, from a validated job or a raw object/spec dict."""
    if isinstance(spec, FineTuneJob):
        raw: Raw = spec.spec.to_dict()
    else:
        raw = spec.get("spec", spec) if isinstance(spec.get("spec"), Mapping) else spec
    found: list[Reference] = []
    model = raw.get("model") or {}
    ref = (model.get("fineTuneJobRef") or {}).get("name") if isinstance(model, Mapping) else None
    if ref:
        found.append(Reference(ref, "model", "spec.model.fineTuneJobRef"))
    objective = raw.get("objective") or {}
    if isinstance(objective, Mapping) and objective.get("type") in RL_OBJECTIVES:
        for i, reward in enumerate(((objective.get("rl") or {}).get("rewards")) or []):
            name = (((reward or {}).get("model") or {}).get("fineTuneJobRef") or {}).get("name")
            if name:
                found.append(
                    Reference(name, "reward-model", f"spec.objective.rl.rewards[{i}].model.fineTuneJobRef")
                )
    return found


def referenced_names(obj: Raw) -> set[str]:
    """Names of the FineTuneJobs a raw FineTuneJob (or its spec) refers to (for watch-event fan-out)."""
    return {r.name for r in references(obj)}


def read_chain(get: Callable[[str], Raw | None], job: FineTuneJob | Raw) -> dict[str, Raw | None]:
    """The FineTuneJobs reachable from JOB's references (name -> object, None when missing), read with GET."""
    seen: dict[str, Raw | None] = {}
    todo = [r.name for r in references(job)]
    while todo and len(seen) < MAX_DEPTH * 4:
        name = todo.pop()
        if name in seen:
            continue
        obj = get(name)
        seen[name] = obj
        if obj is not None:
            todo += [r.name for r in references(obj)]
    return seen


# ------------------------------------------------------------------------------------------------ resolve


def _status(obj: Raw) -> Raw:
    return obj.get("status") or {}


def _spec(obj: Raw) -> Raw:
    return obj.get("spec") or {}


def _cycle(name: str, jobs: Mapping[str, Raw | None], path: tuple[str, ...]) -> tuple[str, ...] | None:
    if name in path:
        return (*path[path.index(name) :], name)
    obj = jobs.get(name)
    if obj is None or len(path) > MAX_DEPTH:
        return None
    for ref in references(obj):
        found = _cycle(ref.name, jobs, (*path, name))
        if found:
            return found
    return None


def _succeeded(ref: Reference, jobs: Mapping[str, Raw | None], via: str, started: bool = False) -> Raw:
    """The referenced job when its result can be used (results.py); else stop with the verdict. STARTED: this
    job's run has begun, so it follows the referenced job's result (keeps the one it began with)."""
    obj = jobs.get(ref.name)
    found = readiness(obj, follow=started)
    if found.state == "missing":
        raise _Stop(
            "waiting",
            "ReferenceNotFound",
            f"{via}: FineTuneJob {ref.name!r} not found in this namespace: waiting for it to be created "
            "(or fix the name)",
        )
    if found.state == "failed":
        raise _Stop(
            "failed",
            "ReferenceFailed",
            f"{via}: FineTuneJob {ref.name!r} failed, so its result cannot be used: fix and re-run it "
            "(this job starts once it has Succeeded)",
        )
    if found.state == "not-promoted":
        raise _Stop(
            "failed",
            "ReferenceNotPromoted",
            f"{via}: the latest result of FineTuneJob {ref.name!r} failed its evaluation gate and is not promoted: "
            "this job starts from a promoted result only (fix and re-run that job)",
        )
    if found.state == "waiting":
        what = "the base model" if ref.role == "model" else "a reward model"
        raise _Stop(
            "waiting",
            WAITING_CONDITION,
            f"waiting for FineTuneJob {ref.name!r} (phase {found.phase}) to succeed: its result is {what} "
            "of this job",
        )
    assert obj is not None
    return obj


def _resolved_result(name: str, jobs: Mapping[str, Raw | None], via: str, depth: int = 0) -> ResolvedModel:
    """The loadable model a Succeeded job's result is: itself, its merged copy, or its adapter on its base."""
    obj = jobs[name] or {}
    spec, result = _spec(obj), _status(obj).get("result") or {}
    method = (spec.get("method") or {}).get("type", "lora")
    if result.get("mergedUri"):
        return ResolvedModel(uri=result["mergedUri"])
    if method in ("prefix-tuning", "prompt-tuning") or result.get("kind") in ("prefix", "prompt"):
        raise _Stop(
            "failed",
            "ReferenceIncompatible",
            f"{via}: FineTuneJob {name!r} produced a {method} result, which cannot be a base model; "
            "reference a full, merged or LoRA/QLoRA/IA3 result",
        )
    if method not in ADAPTER_METHODS:
        return ResolvedModel(uri=result["uri"])
    base = _base_of(name, jobs, via, depth + 1)
    return base.model_copy(update={"adapters": [*base.adapters, result["uri"]]})


def _base_of(name: str, jobs: Mapping[str, Raw | None], via: str, depth: int) -> ResolvedModel:
    """The model job NAME trained on (its model.uri, or what its own fineTuneJobRef resolves to)."""
    model = _spec(jobs[name] or {}).get("model") or {}
    if model.get("uri"):
        revision = model.get("revision") if str(model["uri"]).startswith("hf://") else None
        return ResolvedModel(uri=model["uri"], revision=revision)
    parent = (model.get("fineTuneJobRef") or {}).get("name")
    if not parent or depth > MAX_DEPTH:
        raise _Stop("failed", "ReferenceIncompatible", f"{via}: FineTuneJob {name!r} has no base model")
    _succeeded(Reference(parent, "model", f"FineTuneJob {name!r}"), jobs, via)
    return _resolved_result(parent, jobs, via, depth)


def _implied_task(objective: str) -> str:
    try:
        return implied_task(objective)
    except KeyError:  # not an objective of this version: its own validation says so
        return "causal-lm"


def _check_kind(ref: Reference, obj: Raw, task: str) -> None:
    spec = _spec(obj)
    objective = (spec.get("objective") or {}).get("type", "sft")
    # A job stored without model.task trains the task its objective implies (reward: a classifier).
    parent_task = (spec.get("model") or {}).get("task") or _implied_task(objective)
    if ref.role == "reward-model":
        if objective != "reward":
            raise _Stop(
                "failed",
                "ReferenceIncompatible",
                f"{ref.field}: FineTuneJob {ref.name!r} has objective {objective}, not reward: a reward model "
                "comes from a FineTuneJob with objective.type reward",
            )
        return
    if parent_task in CLASSIFICATION_TASKS and task not in CLASSIFICATION_TASKS:
        raise _Stop(
            "failed",
            "ReferenceIncompatible",
            f"{ref.field}: FineTuneJob {ref.name!r} produces a {parent_task} model (a classifier), which "
            f"cannot be the base of a {task} job; reference a causal-lm or seq2seq job",
        )
    if parent_task == "seq2seq" and task == "causal-lm":
        raise _Stop(
            "failed",
            "ReferenceIncompatible",
            f"{ref.field}: FineTuneJob {ref.name!r} produces a seq2seq model, which cannot be the base of a "
            "causal-lm job",
        )


def _parent(ref: Reference, obj: Raw, resolved: ResolvedModel) -> ParentResult:
    result = _status(obj).get("result") or {}
    return ParentResult(
        name=ref.name,
        uri=result.get("mergedUri") or result.get("uri") or resolved.uri,
        digest=result.get("configHash"),
        role=ref.role,
    )


def resolve(job: FineTuneJob, jobs: Mapping[str, Raw | None], started: bool = False) -> Verdict:
    """Resolve JOB's references against the FineTuneJobs of its chain (see read_chain). STARTED: the job's run
    has begun (it is never held back or restarted for a new result of a referenced job)."""
    refs = references(job)
    if not refs:
        return Verdict("ready", "NoReferences", "the job refers to no other FineTuneJob")
    name = job.metadata.name or ""
    for ref in refs:
        if ref.name == name:
            return Verdict(
                "failed", "ReferenceCycle", f"{ref.field}: the FineTuneJob refers to itself; name another job"
            )
        cycle = _cycle(ref.name, {**jobs, name: job.model_dump(by_alias=True, mode="json")}, (name,))
        if cycle:
            return Verdict(
                "failed",
                "ReferenceCycle",
                f"{ref.field}: the chain of FineTuneJobs has a cycle ({' -> '.join(cycle)}), so none of them "
                "can start: remove one of the references",
            )
    chain = ChainResolution()
    try:
        for ref in refs:
            obj = _succeeded(ref, jobs, ref.field, started)
            _check_kind(ref, obj, job.spec.model.task)
            resolved = _resolved_result(ref.name, jobs, ref.field)
            if ref.role == "model":
                chain.model = resolved
            else:
                chain.reward_models[ref.name] = resolved
            chain.parents.append(_parent(ref, obj, resolved))
            # the parent's own chain, so status.result.parents reaches back to the first job
            for grand in (_status(obj).get("result") or {}).get("parents") or []:
                parent = ParentResult.model_validate(grand)
                if all(p.name != parent.name for p in chain.parents):
                    chain.parents.append(parent)
    except _Stop as stop:
        return stop.verdict
    names = ", ".join(f"{p.name} ({p.uri})" for p in chain.parents[: len(refs)])
    return Verdict("ready", "ModelReady", f"the referenced results are ready: {names}", chain)


def conditions(verdict: Verdict) -> list[tuple[str, bool, str, str]]:
    """The FineTuneJob conditions (type, status, reason, message) for a verdict that holds the run back."""
    if verdict.state == "waiting":
        return [
            (WAITING_CONDITION, True, verdict.reason, verdict.message),
            ("Running", False, verdict.reason, verdict.message),
        ]
    return [
        (WAITING_CONDITION, False, verdict.reason, verdict.message),
        ("Failed", True, verdict.reason, verdict.message),
        ("Running", False, verdict.reason, verdict.message),
    ]


class Dependents(ReferenceIndex):
    """Which FineTuneJobs refer to which (their base model or a reward model): a change of a job that its
    dependents read (``references.Readings``) wakes the jobs that refer to it."""

    def __init__(self) -> None:
        super().__init__(referenced_names)
