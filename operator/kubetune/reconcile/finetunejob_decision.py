"""What a FineTuneJob needs, decided without I/O: ``decide(observed, opts, now) -> Decision``.

Inputs (``Observed``): the FineTuneJob as read, its trainer Jobs (the current attempt's, or all of them),
the pods of the Job the decision looks at, the run id the live ConfigMap carries, the Secrets and PVCs the
pods will need (found or None), and the writes the API server refused in this pass. The clock is ``now``.

Outputs (``Decision``): the children to apply (the desired objects; the shell skips those live already
with the same content) and to delete, Job patches (suspend), the operator's status fields with their
conditions, the Events, when to look again and whether the queue should back off (something the user
must change). A decision that needs to look closer (all the Jobs, the pods of a Job, the Secrets and PVCs)
says so in ``need``; the shell reads that and decides again, so reads are made only when they matter.

The status a decision returns assumes its writes succeed; when one is refused the shell adds the refusal
to ``Observed.refusals`` and decides again, which then puts the refusal into the conditions instead.

Conditions: Validated, Running, Succeeded, Failed, Suspended (what happened), plus Ready, Reconciling and
Stalled for kstatus (see ``conditions.py`` and docs/operations.md for the mapping).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.fit import REASON_DOES_NOT_FIT, GpuMemory, estimate_status
from kubetune.api.v1alpha1 import ChainResolution, FineTuneJob, pvc_claims, validate_document
from kubetune.render.common import RUN_GENERATION_ANNOTATION, RUN_ID_LABEL
from kubetune.render.finetunejob import (
    RenderOptions,
    SecretUse,
    needs_service,
    render_configmap,
    render_job,
    render_rbac,
    render_service,
    run_id,
    secret_uses,
)
from kubetune.render.tracking import tracking_secrets

from . import chains
from .clock import fmt_time, parse_time
from .conditions import (
    KStatus,
    is_true,
    load_conditions,
    ordered,
    seconds_in_state,
    set_condition,
    set_kstatus,
)
from .finetunejob_readings import (
    Disruption,
    attempt_of,
    condition_true,
    disruptions,
    failure_reason,
    labels_of,
    latest_failed_create,
    pod_problem,
    reference_problems,
    refusal_advice,
)
from .status import Event

CONDITION_TYPES = ("Validated", "Running", "Succeeded", "Failed", "Suspended", chains.WAITING_CONDITION)
ALL_CONDITION_TYPES = (*CONDITION_TYPES, "Ready", "Reconciling", "Stalled")
STATUS_FIELDS = (
    "phase",
    "observedGeneration",
    "conditions",
    "jobName",
    "startTime",
    "completionTime",
    "attempts",
    "preemptions",
    "estimate",
)
# Reasons that ask the user to do something: Warning events, retry with backoff.
PROBLEM_REASONS = {
    "InvalidSpec", "SecretNotFound", "SecretKeyMissing", "PVCNotFound", "PVCLost", "ImagePullFailed",
    "ContainerConfigError", "Unschedulable", "ChildConflict", "ChildRejected", "AttemptFailed", "PodsRefused",
    "BackoffLimitExceeded", "DeadlineExceeded", "PendingDeadlineExceeded", *chains.REFERENCE_REASONS,
    REASON_DOES_NOT_FIT, "EvaluationGateFailed",
}  # fmt: skip
# Problems that may resolve themselves for a while (a Secret created right after the FineTuneJob, a
# registry that comes back): Reconciling during STALL_GRACE_SECONDS of not running, Stalled after.
GRACE_REASONS = {
    "SecretNotFound", "SecretKeyMissing", "PVCNotFound", "PVCLost", "ImagePullFailed", "ContainerConfigError",
    "WaitingForDeletion", "PodsRefused",
}  # fmt: skip
STALL_GRACE_SECONDS = 30.0
# HTTP status codes of a write the API server refused for a reason the user can act on (invalid, forbidden
# by RBAC, quota or admission, a conflict). Others (5xx, transport) are errors the queue retries.
REFUSAL_CODES = (400, 403, 409, 422)
RECHECK_BEING_DELETED = 1.0
# A Job without pods this long after it was created (or its run was preempted): look at the Job's Events
# for the Job controller's FailedCreate (a ResourceQuota, PodSecurity, an admission webhook refused them).
NO_PODS_LOOK_AFTER_SECONDS = 5.0


# ------------------------------------------------------------------------------------------------
# inputs and outputs


@dataclass(frozen=True)
class Refusal:
    """A child write the API server refused (or a child of that name that belongs to someone else)."""

    kind: str
    name: str
    code: int
    message: str
    foreign: bool = False


@dataclass
class Observed:
    """What the shell read for one decision."""

    obj: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)
    """Trainer Jobs owned by the FineTuneJob: the current attempt's only, or all when ``all_jobs``."""
    all_jobs: bool = False
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Pods by the uid of their Job (only Jobs the decision asked for)."""
    configmap_run: str | None = None
    """The run id label of the live trainer ConfigMap (None: none yet)."""
    secrets: dict[str, dict[str, Any] | None] | None = None
    """Referenced Secrets by name (None value: not found); None: not read."""
    pvcs: dict[str, dict[str, Any] | None] | None = None
    """Referenced PersistentVolumeClaims by name (None value: not found); None: not read."""
    refusals: list[Refusal] = field(default_factory=list)
    static_signature: str | None = None
    """``static_signature`` of the static children this process last applied successfully (None: unknown);
    when it matches, the decision does not render them again."""
    job_events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The FailedCreate Events of a Job, by the Job's uid (only Jobs the decision asked for)."""
    chain_jobs: dict[str, Mapping[str, Any] | None] | None = None
    """Chains (model.fineTuneJobRef, reward models by fineTuneJobRef): the FineTuneJobs reachable through
    the references, by name (None value: missing); None: not read (the decision asks for them)."""
    fit: tuple[dict[str, Any] | None, str | None, GpuMemory] | None = None
    """The fit check's inputs: the model's config.json (or None and why it could not be read) and the GPU
    memory of the nodes the pods may use; None: not read (the decision asks before a run's first Job)."""


@dataclass(frozen=True)
class Deletion:
    kind: str
    name: str
    uid: str | None
    propagation: str = "Background"


@dataclass(frozen=True)
class Need:
    """Read more and decide again: ``what`` is all_jobs | pods (of the Job ``job_uid``) | job_events (the
    FailedCreate Events of the Job ``job_uid``) | references (the Secrets ``secrets`` and
    PersistentVolumeClaims ``pvcs``) | chain (the referenced FineTuneJobs) | fit (the model's config.json
    and the GPU nodes, for the fit check)."""

    what: str
    job_uid: str | None = None
    secrets: tuple[str, ...] = ()
    pvcs: tuple[str, ...] = ()


@dataclass
class Decision:
    status: dict[str, Any] | None = None
    """The operator's status fields (STATUS_FIELDS); None when nothing is to be written (deleted)."""
    apply: list[dict[str, Any]] = field(default_factory=list)
    """Desired children, in order: RBAC, ConfigMap, Service, then a new trainer Job."""
    delete: list[Deletion] = field(default_factory=list)
    patch: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """(kind, name, merge patch) of children (Job.spec.suspend)."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    problem: bool = False
    """Something the user must change: the queue retries with exponential backoff."""
    status_first: bool = False
    """Write the status before the deletions (a new run: the reset is persisted before the old run goes)."""
    delete_self: bool = False
    """ttlSecondsAfterFinished passed: delete the FineTuneJob (and write nothing else)."""
    need: Need | None = None
    new_job_attempt: int | None = None
    """The attempt of the trainer Job in ``apply`` (None: no new Job)."""
    first_job: bool = False
    """The new Job is the run's first (the shell measures the creation-to-Job latency)."""
    run_seconds: float | None = None
    """Duration of a run that finished in this decision."""
    static_signature: str | None = None
    """What the static children in ``apply`` were rendered from (the shell remembers it once applied)."""

    @property
    def phase(self) -> str | None:
        return (self.status or {}).get("phase")


class _NeedMore(Exception):
    def __init__(self, need: Need):
        self.need = need


# ------------------------------------------------------------------------------------------------
# small readers of objects


def static_signature(obj: dict[str, Any], attempt: int, chain: ChainResolution | None = None) -> str:
    """Everything the RBAC, ConfigMap and Service are rendered from (besides the operator's settings)."""
    meta = obj["metadata"]
    labels = sorted((meta.get("labels") or {}).items())
    resolved = chain.model_dump_json() if chain is not None else None
    return repr((meta.get("uid"), meta.get("generation"), labels, attempt, resolved))


# ------------------------------------------------------------------------------------------------


def decide(observed: Observed, opts: RenderOptions, now: dt.datetime) -> Decision:
    """The decision for OBSERVED at NOW (pure: no I/O, no clock of its own)."""
    d = _Decider(observed, opts, now)
    try:
        d.run()
    except _NeedMore as more:
        return Decision(need=more.need)
    return d.out


class _Decider:
    """State of one decision (the old reconcile pass, with every read an input and every write an output)."""

    def __init__(self, observed: Observed, opts: RenderOptions, now: dt.datetime):
        self.o = observed
        self.opts = opts
        self.now = now
        self.obj = observed.obj
        self.meta = self.obj["metadata"]
        self.ns = self.meta.get("namespace")
        self.name = self.meta["name"]
        self.uid = self.meta.get("uid")
        self.gen = int(self.meta.get("generation") or 1)
        self.spec: dict[str, Any] = self.obj.get("spec") or {}
        old = self.obj.get("status") or {}
        self.old_observed_generation = old.get("observedGeneration")
        self.st: dict[str, Any] = {
            "jobName": old.get("jobName"),
            "startTime": old.get("startTime"),
            "completionTime": old.get("completionTime"),
            "attempts": int(old.get("attempts") or 0),
            "preemptions": old.get("preemptions"),
            "estimate": old.get("estimate"),
        }
        self.conds = load_conditions(old, ALL_CONDITION_TYPES)
        self.old_conds = {t: dict(c) for t, c in self.conds.items()}
        self.out = Decision()
        self.requeue: list[float] = []
        self.stall: tuple[str, str] | None = None  # set when the user must change something
        self.deleted_uids: set[str] = set()
        self.chain: ChainResolution | None = None  # what the references resolved to (TrainerConfig, volumes)
        self.chain_verdict: chains.Verdict | None = None

    # ---------------------------------------------------------------------------------------------
    # helpers

    def set(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        set_condition(self.conds, type_, status, reason, message, generation=self.gen, now=self.now)

    def is_true(self, type_: str) -> bool:
        return is_true(self.conds, type_)

    def reason(self, type_: str) -> str | None:
        c = self.conds.get(type_)
        return c.get("reason") if c else None

    def after(self, seconds: float) -> None:
        self.requeue.append(max(0.05, seconds))

    def event(self, type_: str, reason: str, message: str) -> None:
        self.out.events.append(Event(type_, reason, message))

    def since(self, stamp: str | None) -> float | None:
        t = parse_time(stamp)
        return None if t is None else (self.now - t).total_seconds()

    def _default(self, type_: str, reason: str, message: str) -> None:
        if type_ not in self.conds:
            self.set(type_, False, reason, message)

    def refusal(self, kind: str, name: str) -> Refusal | None:
        return next((r for r in self.o.refusals if (r.kind, r.name) == (kind, name)), None)

    # ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        if self._ttl_expired():
            return
        self._converge()
        self._finish_status()
        if self.requeue:
            self.out.requeue_after = min(self.requeue)

    def _converge(self) -> None:
        doc = {k: v for k, v in self.obj.items() if k != "status"}
        validated = validate_document(doc)
        if not validated.ok:
            message = "; ".join(
                f"spec.{p}" if p.path and not p.path.startswith(("spec", "metadata")) else str(p)
                for p in validated.problems
            )
            self.set("Validated", False, "InvalidSpec", message)
            self.set("Failed", True, "InvalidSpec", f"the spec is invalid, fix it: {message}")
            self.set("Running", False, "InvalidSpec", "not started: the spec is invalid")
            self._default("Succeeded", "NotStarted", "the run has not finished")
            self._default("Suspended", "NotSuspended", "")
            for job in self._jobs(everything=True):
                self._delete_job(job)
            return  # nothing to retry: an edit of the spec triggers the next decision
        self.set("Validated", True, "Valid", "the spec is valid")
        ftj: FineTuneJob = validated.obj  # type: ignore[assignment]
        self._resolve_chain(ftj)
        rid = run_id(ftj)

        jobs = self._jobs()
        stale = [j for j in jobs if labels_of(j).get(RUN_ID_LABEL) != rid]
        current = [j for j in jobs if labels_of(j).get(RUN_ID_LABEL) == rid]
        cm_run = self.o.configmap_run
        if stale or (cm_run is not None and cm_run != rid):
            stale = [j for j in self._jobs(everything=True) if labels_of(j).get(RUN_ID_LABEL) != rid]
            self._start_new_run(rid, stale)
            if stale:
                self.after(RECHECK_BEING_DELETED)  # the old Job's name is reused: wait until it is gone
                return

        if self._terminal(ftj):
            self._apply_static(ftj, max(self.st["attempts"], 1))
            self._ttl_timer()
            return

        cur = max(current, key=attempt_of) if current else None
        attempt = attempt_of(cur) if cur else max(self.st["attempts"], 1)
        if not self._apply_static(ftj, attempt):
            return
        if cur is None:
            if self._held_by_chain(ftj):
                return
            problems = self._reference_problems(ftj)
            if problems:
                reason, message = problems[0][0], "; ".join(m for _, m in problems)
                self.set("Running", False, reason, message)
                self._suspended_condition(ftj, None)
                self._default("Succeeded", "NotStarted", "the run has not finished")
                self._default("Failed", "NotFailed", "")
                self.out.problem = True
                self._grace(reason, message)
                clock_start = self.st["startTime"] or self.meta.get("creationTimestamp")
                self._pending_deadline(ftj, None, clock_start, message)
                return
            if self.st["jobName"] is None and self._does_not_fit(ftj, rid):
                return
            self._create_job(ftj, attempt)
            return
        self._observe(ftj, cur, [j for j in current if j is not cur])

    # ---------------------------------------------------------------------------------------------
    # chains: model.fineTuneJobRef and reward models by fineTuneJobRef (reconcile/chains.py)

    def _resolve_chain(self, ftj: FineTuneJob) -> None:
        """Resolve the referenced FineTuneJobs; a broken chain that is whole again clears its Failed."""
        if not chains.references(ftj):
            return
        if self.o.chain_jobs is None:
            raise _NeedMore(Need("chain"))
        started = self.st["jobName"] is not None  # a started run keeps the results it began with
        self.chain_verdict = chains.resolve(ftj, self.o.chain_jobs, started=started)
        if self.chain_verdict.ready:
            self.chain = self.chain_verdict.chain
            if self.reason("Failed") in chains.REFERENCE_REASONS and self.is_true("Failed"):
                self.set("Failed", False, "ModelReady", self.chain_verdict.message)
            if chains.WAITING_CONDITION in self.conds:
                self.set(chains.WAITING_CONDITION, False, "ModelReady", self.chain_verdict.message)

    def _does_not_fit(self, ftj: FineTuneJob, rid: str) -> bool:
        """The fit check before a run's first Job: status.estimate, and no Job when it cannot fit (Validated
        False, DoesNotFit, with the numbers and what would fit) unless resources.skipFitCheck."""
        if ftj.spec.resources.gpus_per_node < 1:
            self.st["estimate"] = None  # CPU runs are not checked
            return False
        estimate = self.st["estimate"] or {}
        if estimate.get("configHash") == rid:  # estimated for this run before
            refuse = estimate.get("fits") is False and not ftj.spec.resources.skip_fit_check
        else:
            if self.o.fit is None:
                raise _NeedMore(Need("fit"))
            config, why, gpus = self.o.fit
            estimate, refuse = estimate_status(ftj.spec, config, why, gpus, rid)
            self.st["estimate"] = estimate
        if not refuse:
            return False
        message = f"does not fit: {estimate.get('message')} (or set spec.resources.skipFitCheck)"
        self.set("Validated", False, REASON_DOES_NOT_FIT, message)
        self.set("Running", False, REASON_DOES_NOT_FIT, f"not started: the run {message}")
        self._suspended_condition(ftj, None)
        self._default("Succeeded", "NotStarted", "the run has not finished")
        self._default("Failed", "NotFailed", "")
        self.out.problem = True
        self.stall = (REASON_DOES_NOT_FIT, message)
        return True

    def _gate_failed(self, rid: str | None) -> str | None:
        """The trainer's verdict on this run's result (status.evaluation): the message when it failed its gate."""
        status = self.obj.get("status") or {}
        evaluation = status.get("evaluation") or {}
        if (
            not self.spec.get("evaluation")
            or evaluation.get("configHash") != rid
            or evaluation.get("passed") is not False
        ):
            return None
        kept = (status.get("result") or {}).get("uri")
        where = (
            f"; the result is kept at {kept}, not promoted" if kept else "; the result is kept, not promoted"
        )
        return f"the result failed its evaluation gate: {evaluation.get('message') or 'see status.evaluation'}{where}"

    def _gate_passed(self, rid: str | None) -> str | None:
        """The trainer's message when this run's result passed its gate (and is promoted)."""
        evaluation = (self.obj.get("status") or {}).get("evaluation") or {}
        if (
            not self.spec.get("evaluation")
            or evaluation.get("configHash") != rid
            or evaluation.get("passed") is not True
        ):
            return None
        return f"the result passed its evaluation gate and is promoted: {evaluation.get('message') or ''}".rstrip(
            ": "
        )

    def _held_by_chain(self, ftj: FineTuneJob) -> bool:
        """No trainer Job while a referenced job has not Succeeded (WaitingForModel) or the chain is broken."""
        verdict = self.chain_verdict
        if verdict is None or verdict.ready:
            return False
        for type_, status, reason, message in chains.conditions(verdict):
            self.set(type_, status, reason, message)
        self._suspended_condition(ftj, None)
        self._default("Succeeded", "NotStarted", "the run has not finished")
        self._default("Failed", "NotFailed", "")
        self.out.problem = verdict.state == "failed"  # retried with backoff; a fixed chain also wakes it
        return True

    # ---------------------------------------------------------------------------------------------
    # lifecycle pieces

    def _jobs(self, everything: bool = False) -> list[dict[str, Any]]:
        if everything and not self.o.all_jobs:
            raise _NeedMore(Need("all_jobs"))
        return [j for j in self.o.jobs if (j["metadata"].get("uid") not in self.deleted_uids)]

    def _pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"].get("uid")
        if uid is None:  # a Job this decision creates: no pods yet
            return []
        if uid not in self.o.pods:
            raise _NeedMore(Need("pods", uid))
        return self.o.pods[uid]

    def _start_new_run(self, rid: str, stale: list[dict[str, Any]]) -> None:
        message = f"the spec changed (generation {self.gen}): starting run {rid} from scratch"
        self.st.update(
            {"attempts": 0, "startTime": None, "completionTime": None, "jobName": None, "preemptions": None}
        )
        for type_ in ("Running", "Succeeded", "Failed"):
            self.set(type_, False, "NewRun", message)
        self.event("Normal", "NewRun", message)
        # Persist the reset before anything of the old run disappears (a crash in between repeats it).
        self.out.status_first = True
        for job in stale:
            self._delete_job(job, propagation="Foreground")

    def _terminal(self, ftj: FineTuneJob) -> bool:
        if self.is_true("Succeeded"):
            return True
        if self.is_true("Failed"):
            reason = self.reason("Failed")
            if reason == "InvalidSpec":
                self.set("Failed", False, "Valid", "the spec is valid again")
                return False
            if reason == "BackoffLimitExceeded" and self.st["attempts"] <= ftj.spec.backoff_limit:
                # backoffLimit was raised after the run failed: continue with the next attempt.
                self.set(
                    "Failed",
                    False,
                    "BackoffLimitRaised",
                    f"backoffLimit raised to {ftj.spec.backoff_limit}: continuing",
                )
                self.st["completionTime"] = None
                return False
            return True
        return False

    def _ttl_expired(self) -> bool:
        ttl = self.spec.get("ttlSecondsAfterFinished")
        done = condition_true(self.obj, "Succeeded") or condition_true(self.obj, "Failed")
        elapsed = self.since(self.st["completionTime"])
        if ttl is None or not done or elapsed is None or elapsed < ttl:
            return False
        self.event("Normal", "Deleted", f"ttlSecondsAfterFinished ({ttl}s) passed: deleting the FineTuneJob")
        self.out.delete_self = True
        return True

    def _ttl_timer(self) -> None:
        ttl = self.spec.get("ttlSecondsAfterFinished")
        elapsed = self.since(self.st["completionTime"])
        if ttl is not None and elapsed is not None:
            self.after(ttl - elapsed)

    def _reference_problems(self, ftj: FineTuneJob) -> list[tuple[str, str]]:
        """Secrets and PVCs the pods need, which the CRD cannot check: (reason, message) per problem."""
        # The trackers' Secrets too: a missing one would otherwise only show as a pod stuck in
        # CreateContainerConfigError.
        tracked = [SecretUse(path, name, keys) for path, name, keys in tracking_secrets(ftj)]
        uses = [*secret_uses(ftj), *tracked]
        claims = pvc_claims(ftj, self.chain.uris() if self.chain else ())
        if not uses and not claims:
            return []
        if self.o.secrets is None or self.o.pvcs is None:
            names = tuple(dict.fromkeys(u.name for u in uses))
            raise _NeedMore(Need("references", secrets=names, pvcs=tuple(claims)))
        return reference_problems(uses, claims, self.o.secrets, self.o.pvcs, self.ns)

    def _grace(self, reason: str, message: str) -> None:
        """A problem that may fix itself: Reconciling until the FineTuneJob has not run for the grace
        period (from the Running condition's lastTransitionTime: it survives restarts), Stalled after."""
        waited = seconds_in_state(self.conds.get("Running"), self.now)
        if waited >= STALL_GRACE_SECONDS:
            self.stall = (reason, message)
        else:
            self.after(STALL_GRACE_SECONDS - waited)

    def _rejected(self, refusal: Refusal) -> None:
        """A child write the API server refused: a condition with its message and what to change."""
        if refusal.foreign:
            reason = "ChildConflict"
            message = refusal.message
        else:
            reason = "ChildRejected"
            message = (
                f"the API server refused the {refusal.kind} {refusal.name!r} ({refusal.code}): "
                f"{refusal.message.strip()}; {refusal_advice(refusal.kind, refusal.code, refusal.message)}"
            )
        self.set("Running", False, reason, message)
        self._default("Succeeded", "NotStarted", "the run has not finished")
        self._default("Failed", "NotFailed", "")
        self.out.problem = True
        self.stall = (reason, message)

    def _apply_static(self, ftj: FineTuneJob, attempt: int) -> bool:
        """RBAC, ConfigMap and (multi-node) Service of ATTEMPT; False (and a condition) when one was refused."""
        signature = static_signature(self.obj, attempt, self.chain)
        if signature == self.o.static_signature:
            return True  # applied from exactly this before: not even rendered (rendering YAML costs ms)
        desired = [
            *render_rbac(ftj),
            render_configmap(ftj, self.opts, self.chain),
            *([render_service(ftj, attempt)] if needs_service(ftj) else []),
        ]
        for obj in desired:
            refused = self.refusal(obj["kind"], obj["metadata"]["name"])
            if refused is not None:
                self._rejected(refused)
                return False
        for obj in desired:
            self._want(obj)
        self.out.static_signature = signature
        return True

    def _want(self, obj: dict[str, Any]) -> None:
        """Add OBJ to the children to apply; it replaces an earlier version of itself (the next attempt's
        Service replaces the current one's)."""
        key = (obj["kind"], obj["metadata"]["name"])
        self.out.apply = [o for o in self.out.apply if (o["kind"], o["metadata"]["name"]) != key]
        self.out.apply.append(obj)

    def _create_job(self, ftj: FineTuneJob, attempt: int) -> bool:
        body = render_job(ftj, self.opts, attempt, chain=self.chain)
        jname = body["metadata"]["name"]
        refused = self.refusal("Job", jname)
        if refused is not None:
            being_deleted = any(
                j["metadata"]["name"] == jname and j["metadata"].get("deletionTimestamp") for j in self.o.jobs
            )
            if refused.code == 409 or being_deleted:
                # A Job of this name is still being deleted (its immutable template differs): wait.
                message = (
                    f"waiting for the old Job {jname} to be deleted ({refused.message.strip()}); "
                    "if it stays, remove its finalizers or delete it"
                )
                self.set("Running", False, "WaitingForDeletion", message)
                self.after(RECHECK_BEING_DELETED)
                self._grace("WaitingForDeletion", message)  # a conflict that persists stalls
                return False
            self._rejected(refused)
            return False
        self._want(body)
        self.out.new_job_attempt = attempt
        if self.st["startTime"] is None:
            self.st["startTime"] = fmt_time(self.now)
            self.out.first_job = attempt == 1
        self.st["attempts"] = attempt
        self.st["jobName"] = jname
        limit = ftj.spec.backoff_limit + 1
        self.event("Normal", "JobCreated", f"created trainer Job {jname} (attempt {attempt} of {limit})")
        self._observe(ftj, body, [])
        return True

    def _delete_job(self, job: dict[str, Any], propagation: str = "Background") -> bool:
        """Delete JOB (unless it is already going); False when the API server refused that."""
        meta = job["metadata"]
        if meta.get("uid") is None or meta.get("deletionTimestamp") or meta["uid"] in self.deleted_uids:
            return True
        refused = self.refusal("Job", meta["name"])
        if refused is not None:
            self._rejected(refused)
            return False
        self.deleted_uids.add(meta["uid"])
        self.out.delete.append(Deletion("Job", meta["name"], meta["uid"], propagation))
        return True

    def _suspended_condition(self, ftj: FineTuneJob, job: dict[str, Any] | None) -> None:
        job_suspended = bool(((job or {}).get("spec") or {}).get("suspend"))
        if ftj.spec.suspend:
            self.set(
                "Suspended",
                True,
                "Suspended",
                "spec.suspend is true: the trainer pods are stopped; "
                "set it to false to resume from the latest checkpoint",
            )
        elif ftj.spec.queue_name and job_suspended:
            self.set(
                "Suspended",
                True,
                "WaitingForAdmission",
                f"waiting for Kueue to admit the Job from LocalQueue {ftj.spec.queue_name!r}",
            )
        elif job_suspended:
            self.set("Suspended", True, "Resuming", "resuming the Job")
        else:
            was = self.conds.get("Suspended")
            if was and was["status"] == "True":
                self.set("Suspended", False, "Resumed", "the run was resumed")
            else:
                self._default("Suspended", "NotSuspended", "")

    def _observe(self, ftj: FineTuneJob, job: dict[str, Any], older: list[dict[str, Any]]) -> None:
        """Status from the current attempt's Job and pods; next attempt, deadlines, suspend."""
        jname = job["metadata"]["name"]
        attempt = attempt_of(job)
        limit = ftj.spec.backoff_limit + 1
        self.st["attempts"] = attempt
        self.st["jobName"] = jname
        rid = labels_of(job).get(RUN_ID_LABEL)
        run_gen = (job["metadata"].get("annotations") or {}).get(RUN_GENERATION_ANNOTATION) or str(self.gen)
        for old in older:  # earlier failed attempts of this run
            if (old.get("status") or {}).get("active", 0) == 0 or condition_true(old, "Failed"):
                self._delete_job(old)
        self._default("Failed", "NotFailed", "")
        self._default("Succeeded", "NotStarted", "the run has not finished")

        if condition_true(job, "Complete") or condition_true(job, "SuccessCriteriaMet"):
            done_at = (job.get("status") or {}).get("completionTime") or fmt_time(self.now)
            self.st["completionTime"] = self.st["completionTime"] or done_at
            gate = self._gate_failed(rid)
            if gate is not None:  # the run worked, its result is not good enough: no retry would change that
                self._fail("EvaluationGateFailed", gate)
                self.set("Succeeded", False, "EvaluationGateFailed", gate)
                self._default("Suspended", "NotSuspended", "")
                return
            passed = self._gate_passed(rid)
            if passed is not None and not self.is_true("Succeeded"):
                self.event("Normal", "EvaluationPassed", passed)
            self.set(
                "Succeeded",
                True,
                "Completed",
                f"run {rid} (generation {run_gen}) finished in attempt {attempt} of {limit}",
            )
            self.set("Running", False, "Completed", "the run finished")
            self._default("Suspended", "NotSuspended", "")
            start = parse_time(self.st["startTime"])
            end = parse_time(self.st["completionTime"])
            if start and end:
                self.out.run_seconds = max(0.0, (end - start).total_seconds())
            self._ttl_timer()
            return
        if condition_true(job, "Failed") or condition_true(job, "FailureTarget"):
            why = self._failure_reason(job)
            if attempt < limit:
                nxt = attempt + 1
                message = (
                    f"attempt {attempt} of {limit} failed: {why}; "
                    f"starting attempt {nxt} (resumes from the latest checkpoint)"
                )
                # The trainer's stall watchdog ends an attempt with "Stalled: ..." (exit 75): say so.
                self.event("Warning", "AttemptStalled" if "Stalled:" in why else "AttemptFailed", message)
                self.set("Running", False, "Restarting", message)
                if self._apply_static(ftj, nxt) and self._create_job(ftj, nxt):
                    self._delete_job(job)  # its pods are done; the next attempt resumes from the checkpoint
                return
            message = f"all {limit} attempts failed; last: {why}" if limit > 1 else f"the run failed: {why}"
            self._fail("BackoffLimitExceeded", message)
            return

        # Active (or suspended): keep Job.spec.suspend in line with the FineTuneJob.
        job_suspended = bool((job.get("spec") or {}).get("suspend"))
        # Kueue admits (unsuspends) queued Jobs: with a queue the operator only ever suspends.
        want = (ftj.spec.suspend or job_suspended) if ftj.spec.queue_name else ftj.spec.suspend
        if want != job_suspended:
            refused = self.refusal("Job", jname)
            if refused is not None:
                self._rejected(refused)
                return
            self.out.patch.append(("Job", jname, {"spec": {"suspend": want}}))
            job = {**job, "spec": {**job.get("spec", {}), "suspend": want}}
            verb = "suspended" if want else "resumed"
            self.event("Normal", "Suspended" if want else "Resumed", f"{verb} trainer Job {jname}")
        self._suspended_condition(ftj, job)
        if want:
            self.set("Running", False, "Suspended", "the run is suspended")
            return

        every_pod = self._pods(job)
        disrupted = self._note_disruptions(every_pod)
        # A disrupted pod is on its way out even before its deletion (the Eviction API marks it first).
        pods = [
            p
            for p in every_pod
            if not p["metadata"].get("deletionTimestamp") and p["metadata"]["name"] not in disrupted
        ]
        nodes = ftj.spec.resources.nodes
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        problem_reason, pod_message = pod_problem(pods)
        preempted = self._preempted_in(job)
        if len(running) >= nodes:
            if preempted is not None:
                self._resumed(preempted, f"{len(running)}/{nodes} trainer pods running again")
            else:
                self.set(
                    "Running",
                    True,
                    "Running",
                    f"{len(running)}/{nodes} trainer pods running "
                    f"(run {rid}, generation {run_gen}, attempt {attempt} of {limit})",
                )
        else:
            if problem_reason is None and not every_pod:
                problem_reason, pod_message = self._pods_refused(job, preempted)
            if problem_reason is None and preempted is not None:
                problem_reason = "Preempted"
                pod_message = (
                    f"trainer pod {preempted['lastPod']} was preempted ({preempted['lastReason']}): waiting "
                    f"for its replacement, {len(running)}/{nodes} trainer pods running (no attempt used)"
                )
            self.set(
                "Running",
                False,
                problem_reason or "Pending",
                pod_message or f"{len(running)}/{nodes} trainer pods running (attempt {attempt} of {limit})",
            )
            if problem_reason in ("ImagePullFailed", "ContainerConfigError", "PodsRefused"):
                self.out.problem = True
                self._grace(problem_reason, pod_message or "")
            suspended = self.conds.get("Suspended") or {}
            starts = [
                self.st["startTime"],
                job["metadata"].get("creationTimestamp"),
                suspended.get("lastTransitionTime") if suspended.get("status") == "False" else None,
                # A preempted run waits for its replacement pod from the preemption on.
                preempted.get("lastTime") if preempted else None,
            ]
            clock_start = max(
                (s for s in starts if parse_time(s)), key=lambda s: parse_time(s) or self.now, default=None
            )
            if self._pending_deadline(ftj, job, clock_start, pod_message or "the trainer pods are pending"):
                return
        ads = ftj.spec.active_deadline_seconds
        elapsed = self.since(self.st["startTime"])
        if ads is not None and elapsed is not None:
            if elapsed >= ads:
                if not self._delete_job(job):
                    return  # the pods keep running: not Failed until the Job is gone
                self._fail(
                    "DeadlineExceeded", f"the run was active longer than activeDeadlineSeconds ({ads}s)"
                )
                return
            self.after(ads - elapsed)

    def _pods_refused(
        self, job: dict[str, Any], preempted: dict[str, Any] | None
    ) -> tuple[str | None, str | None]:
        """A Job without any pod: did the API server refuse them (the Job controller's FailedCreate Event,
        e.g. a ResourceQuota on GPUs, PodSecurity)? Read only once the Job had time to make them (the
        decision looks again then: a refused pod changes nothing the operator watches)."""
        uid = job["metadata"].get("uid")
        if uid is None:
            return None, None  # a Job this decision creates: its events wake the next decision
        since = max(
            (t for t in (job["metadata"].get("creationTimestamp"), (preempted or {}).get("lastTime")) if t),
            key=lambda t: parse_time(t) or self.now,
            default=None,
        )
        waited = self.since(since)
        if waited is None or waited < NO_PODS_LOOK_AFTER_SECONDS:
            self.after(NO_PODS_LOOK_AFTER_SECONDS - (waited or 0.0))
            return None, None
        if uid not in self.o.job_events:
            raise _NeedMore(Need("job_events", uid))
        refused = latest_failed_create(self.o.job_events[uid], since=parse_time(since))
        if refused is None:
            return None, None
        return (
            "PodsRefused",
            f"the Job controller cannot create the trainer pods of Job {job['metadata']['name']}: {refused}; "
            f"{refusal_advice('Pod', 403, refused)}",
        )

    def _note_disruptions(self, pods: list[dict[str, Any]]) -> Set[str]:
        """One Event ``Preempted`` per disrupted trainer pod, and ``status.preemptions``. The status keeps
        the names of the disrupted pods already reported while they exist, so a pod seen in several
        reconciles (it is Terminating for its grace period) or after an operator restart is reported once.
        Returns the names of the disrupted pods."""
        found = disruptions(pods)
        before = self.st["preemptions"] or {}
        reported = set(before.get("reportedPods") or [])
        new = [d for d in found if d.pod not in reported]
        if not new and not before:
            return set()
        for d in new:
            self.event("Normal", "Preempted", self._preempted_message(d))
        record: dict[str, Any] = {
            "count": int(before.get("count") or 0),
            "lastPod": before.get("lastPod"),
            "lastReason": before.get("lastReason"),
            "lastTime": before.get("lastTime"),
        }
        if new:
            last = new[-1]
            record.update(
                count=record["count"] + len(new),
                lastPod=last.pod,
                lastReason=last.reason,
                lastTime=last.time or fmt_time(self.now),
            )
        self.st["preemptions"] = {**record, "reportedPods": sorted(d.pod for d in found)}
        return {d.pod for d in found}

    @staticmethod
    def _preempted_message(d: Disruption) -> str:
        why = f"{d.reason}: {d.message}" if d.message else d.reason
        return (
            f"trainer pod {d.pod} was preempted ({why}); the Job replaces it without using an attempt "
            "and the run resumes from its latest checkpoint"
        )

    def _preempted_in(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """status.preemptions when a pod of JOB (the current attempt) was preempted, else None."""
        record = self.st["preemptions"] or {}
        at, created = parse_time(record.get("lastTime")), parse_time(job["metadata"].get("creationTimestamp"))
        if not record.get("count") or at is None or created is None or at < created:
            return None  # none, or before this Job existed (an earlier attempt), or a Job being created
        return record

    def _resumed(self, record: dict[str, Any], running: str) -> None:
        """Running=True, reason Resumed: the run continues after a preemption. The message says from which
        checkpoint; it is written when the run resumes and kept while it runs on (the trainer's later
        checkpoints are not where it resumed from)."""
        old = self.conds.get("Running") or {}
        if old.get("status") == "True" and old.get("reason") == "Resumed" and not self._new_preemption():
            self.set("Running", True, "Resumed", old.get("message") or "")
            return
        checkpoint = (self.obj.get("status") or {}).get("checkpoint") or {}
        if checkpoint.get("uri"):
            step = f" (step {checkpoint['step']})" if checkpoint.get("step") is not None else ""
            source = f"resumed from checkpoint {checkpoint['uri']}{step}"
        else:
            source = "no checkpoint had been saved yet: it started again from the beginning"
        count = record["count"]
        times = "once" if count == 1 else f"{count} times"
        self.set(
            "Running",
            True,
            "Resumed",
            f"{running}: the run was preempted {times} (last: pod {record['lastPod']}, "
            f"{record['lastReason']}) and {source}",
        )

    def _new_preemption(self) -> bool:
        return any(e.reason == "Preempted" for e in self.out.events)

    def _pending_deadline(
        self, ftj: FineTuneJob, job: dict[str, Any] | None, clock_start: str | None, why: str
    ) -> bool:
        pds = ftj.spec.pending_deadline_seconds
        waited = self.since(clock_start)
        if pds is None or waited is None:
            return False
        if waited >= pds:
            if job is not None and not self._delete_job(job):
                return True  # not Failed until the Job is gone
            self._fail(
                "PendingDeadlineExceeded",
                f"the trainer was not running {pds}s (pendingDeadlineSeconds) after it started: {why}",
            )
            return True
        self.after(pds - waited)
        return False

    def _fail(self, reason: str, message: str) -> None:
        self.set("Failed", True, reason, message)
        self.set("Running", False, reason, message)
        self.st["completionTime"] = self.st["completionTime"] or fmt_time(self.now)
        start = parse_time(self.st["startTime"])
        if start:
            self.out.run_seconds = max(0.0, (self.now - start).total_seconds())
        self._ttl_timer()

    def _failure_reason(self, job: dict[str, Any]) -> str:
        return failure_reason(job, self._pods(job))

    # ---------------------------------------------------------------------------------------------
    # status

    def _phase(self) -> str:
        if self.is_true("Failed"):
            return "Failed"
        if self.is_true("Succeeded"):
            return "Succeeded"
        if self.is_true("Suspended") and self.reason("Suspended") == "Suspended":
            return "Suspended"
        if self.is_true("Running"):
            return "Running"
        return "Pending"

    def _kstatus(self, phase: str) -> KStatus:
        running = self.conds["Running"]
        if phase == "Succeeded":
            c = self.conds["Succeeded"]
            return KStatus(True, "Succeeded", c.get("message", ""), idle_reason="Succeeded")
        if phase == "Failed":
            c = self.conds["Failed"]
            reason, message = c.get("reason") or "Failed", c.get("message", "")
            return KStatus(False, reason, message, stalled=(reason, message))
        if self.stall is not None:
            reason, message = self.stall
            return KStatus(False, reason, message, stalled=self.stall)
        if phase == "Suspended":
            message = self.conds["Suspended"].get("message", "")
            return KStatus(False, "Suspended", message, idle_reason="Suspended")
        reason, message = running.get("reason") or phase, running.get("message", "")
        if self.reason("Suspended") == "WaitingForAdmission" and self.is_true("Suspended"):
            reason, message = "WaitingForAdmission", self.conds["Suspended"].get("message", "")
        elif reason == "Pending" and self.st["attempts"] > 1:
            reason = "Retrying"  # a later attempt of the run, not running yet
        if phase == "Running":
            return KStatus(False, "Running", message, reconciling=("Running", message))
        return KStatus(False, reason, message, reconciling=(reason, message))

    def _finish_status(self) -> None:
        for type_, reason in (
            ("Running", "NotStarted"),
            ("Succeeded", "NotStarted"),
            ("Failed", "NotFailed"),
            ("Suspended", "NotSuspended"),
        ):
            self._default(type_, reason, "")
        for c in self.conds.values():  # every condition was evaluated against this generation
            c["observedGeneration"] = self.gen
        phase = self._phase()
        set_kstatus(self.conds, self._kstatus(phase), generation=self.gen, now=self.now)
        self.out.status = {
            "phase": phase,
            "observedGeneration": self.gen,
            "conditions": ordered(self.conds, CONDITION_TYPES),
            **self.st,
        }
        self._transition_events()

    def _transition_events(self) -> None:
        """An Event per condition that changed status or reason in a way the user wants to hear of."""
        for type_ in CONDITION_TYPES:
            new, old = self.conds.get(type_), self.old_conds.get(type_)
            if not new or (old and (old["status"], old.get("reason")) == (new["status"], new.get("reason"))):
                continue
            reason = new.get("reason") or type_
            if new["status"] == "True" or reason in PROBLEM_REASONS or (type_ == "Suspended" and old):
                if reason == "NewRun" or (type_ == "Validated" and new["status"] == "True" and not old):
                    continue
                warn = reason in PROBLEM_REASONS or (type_ == "Failed" and new["status"] == "True")
                message = new.get("message") or f"{type_} is {new['status']}"
                self.event("Warning" if warn else "Normal", reason, message)
        stalled, was = self.conds.get("Stalled") or {}, self.old_conds.get("Stalled") or {}
        flipped = stalled.get("status") == "True" and was.get("status") != "True"
        # A problem that outlived its grace: its own Event came when it was first seen; say it stalled.
        if flipped and stalled.get("reason") in GRACE_REASONS:
            self.event("Warning", "Stalled", stalled.get("message") or "stalled")


__all__ = [
    "ALL_CONDITION_TYPES",
    "CONDITION_TYPES",
    "Decision",
    "Deletion",
    "Need",
    "Observed",
    "Refusal",
    "STALL_GRACE_SECONDS",
    "STATUS_FIELDS",
    "attempt_of",
    "decide",
]
