"""What a FineTuneJob decision reads and writes (``Observed``, ``Decision``), and the draft it builds them
in (``FineTuneJobDraft``: the status fields, the children to apply and delete, and the small steps the
pieces of the decision share). Pure.

The decision is in pieces: finetunejob_decision.py (the flow and the status), finetunejob_attempts.py (the
children of an attempt and what its Job says), finetunejob_pods.py (what its pods say: pending, refused,
preempted).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.fit import GpuMemory
from kubetune.api.v1alpha1 import ChainResolution, FineTuneJob
from kubetune.render.finetunejob import RenderOptions

from . import chains
from .clock import fmt_time, parse_time
from .conditions import seconds_in_state
from .draft import Draft
from .finetunejob_readings import refusal_advice
from .refusals import Refusal
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
# Problems that may resolve themselves for a while (a Secret created right after the FineTuneJob, a
# registry that comes back): Reconciling during STALL_GRACE_SECONDS of not running, Stalled after.
GRACE_REASONS = {
    "SecretNotFound", "SecretKeyMissing", "PVCNotFound", "PVCLost", "ImagePullFailed", "ContainerConfigError",
    "WaitingForDeletion", "PodsRefused",
}  # fmt: skip
STALL_GRACE_SECONDS = 30.0


# ------------------------------------------------------------------------------------------------
# inputs and outputs


@dataclass(frozen=True)
class Observed:
    """Everything one decision reads, read before it (no read is made while deciding)."""

    obj: Mapping[str, Any]
    jobs: tuple[Mapping[str, Any], ...] = ()
    """Every trainer Job the FineTuneJob owns."""
    pods: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    """Pods by the uid of their Job."""
    configmap_run: str | None = None
    """The run id label of the live trainer ConfigMap (None: none yet)."""
    secrets: Mapping[str, Mapping[str, Any]] | None = None
    """The referenced Secrets that exist, by name (a name missing: not found); None: not read (they are read
    whenever the FineTuneJob may start a Job: ``finetunejob_observe.reads``)."""
    pvcs: Mapping[str, Mapping[str, Any]] | None = None
    """The referenced PersistentVolumeClaims that exist, by name; None: not read."""
    refusals: tuple[Refusal, ...] = ()
    """Writes the API server refused in this reconcile (a second decision turns them into conditions)."""
    static_signature: str | None = None
    """``static_signature`` of the static children this process last applied successfully (None: unknown);
    when it matches, the decision does not render them again."""
    job_events: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    """The FailedCreate Events of a Job without pods, by the Job's uid (read once it had time to make them)."""
    chain_jobs: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    """Chains (model.fineTuneJobRef, reward models by fineTuneJobRef): the FineTuneJobs reachable through
    the references, by name (None value: missing)."""
    fit: tuple[Mapping[str, Any] | None, str | None, GpuMemory] | None = None
    """The fit check's inputs: the model's config.json (or None and why it could not be read) and the GPU
    memory of the nodes the pods may use; None: not read (read before a run's first Job:
    ``finetunejob_observe.reads``)."""


@dataclass(frozen=True)
class Deletion:
    kind: str
    name: str
    uid: str | None
    propagation: str = "Background"


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


# ------------------------------------------------------------------------------------------------
# the draft


class FineTuneJobDraft(Draft):
    """One decision in progress: conditions (Draft), the operator's status fields, the children to write."""

    def __init__(self, observed: Observed, opts: RenderOptions, now: dt.datetime):
        super().__init__(observed.obj, CONDITION_TYPES, now)
        self.o = observed
        self.opts = opts
        self.ns = self.meta.get("namespace")
        self.name = self.meta["name"]
        self.uid = self.meta.get("uid")
        self.spec: Mapping[str, Any] = self.obj.get("spec") or {}
        old = self.obj.get("status") or {}
        self.st: dict[str, Any] = {
            "jobName": old.get("jobName"),
            "startTime": old.get("startTime"),
            "completionTime": old.get("completionTime"),
            "attempts": int(old.get("attempts") or 0),
            "preemptions": old.get("preemptions"),
            "estimate": old.get("estimate"),
        }
        self.out = Decision()
        self.stall: tuple[str, str] | None = None  # set when the user must change something
        self.deleted_uids: set[str] = set()
        self.chain: ChainResolution | None = None  # what the references resolved to (TrainerConfig, volumes)
        self.chain_verdict: chains.Verdict | None = None

    # -- reads of the observation --

    def refusal(self, kind: str, name: str) -> Refusal | None:
        return next((r for r in self.o.refusals if (r.kind, r.name) == (kind, name)), None)

    def jobs(self) -> list[Mapping[str, Any]]:
        """The trainer Jobs, less those this decision deletes."""
        return [j for j in self.o.jobs if j["metadata"].get("uid") not in self.deleted_uids]

    def pods(self, job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        uid = job["metadata"].get("uid")
        return [] if uid is None else list(self.o.pods.get(uid, []))  # a Job this decision creates: none

    # -- outputs --

    def want(self, obj: dict[str, Any]) -> None:
        """Add OBJ to the children to apply; it replaces an earlier version of itself (the next attempt's
        Service replaces the current one's)."""
        key = (obj["kind"], obj["metadata"]["name"])
        self.out.apply = [o for o in self.out.apply if (o["kind"], o["metadata"]["name"]) != key]
        self.out.apply.append(obj)

    def delete_job(self, job: Mapping[str, Any], propagation: str = "Background") -> bool:
        """Delete JOB (unless it is already going); False when the API server refused that."""
        meta = job["metadata"]
        if meta.get("uid") is None or meta.get("deletionTimestamp") or meta["uid"] in self.deleted_uids:
            return True
        refused = self.refusal("Job", meta["name"])
        if refused is not None:
            self.rejected(refused)
            return False
        self.deleted_uids.add(meta["uid"])
        self.out.delete.append(Deletion("Job", meta["name"], meta["uid"], propagation))
        return True

    # -- shared steps --

    def not_started_defaults(self) -> None:
        self.default("Succeeded", "NotStarted", "the run has not finished")
        self.default("Failed", "NotFailed", "")

    def grace(self, reason: str, message: str) -> None:
        """A problem that may fix itself: Reconciling until the FineTuneJob has not run for the grace
        period (from the Running condition's lastTransitionTime: it survives restarts), Stalled after."""
        waited = seconds_in_state(self.conds.get("Running"), self.now)
        if waited >= STALL_GRACE_SECONDS:
            self.stall = (reason, message)
        else:
            self.after(STALL_GRACE_SECONDS - waited)

    def rejected(self, refusal: Refusal) -> None:
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
        self.not_started_defaults()
        self.out.problem = True
        self.stall = (reason, message)

    def fail(self, reason: str, message: str) -> None:
        self.set("Failed", True, reason, message)
        self.set("Running", False, reason, message)
        self.st["completionTime"] = self.st["completionTime"] or fmt_time(self.now)
        start = parse_time(self.st["startTime"])
        if start:
            self.out.run_seconds = max(0.0, (self.now - start).total_seconds())
        self.ttl_timer()

    def ttl_timer(self) -> None:
        ttl = self.spec.get("ttlSecondsAfterFinished")
        elapsed = self.since(self.st["completionTime"])
        if ttl is not None and elapsed is not None:
            self.after(ttl - elapsed)

    def pending_deadline(
        self, ftj: FineTuneJob, job: Mapping[str, Any] | None, clock_start: str | None, why: str
    ) -> bool:
        """pendingDeadlineSeconds: True when it passed (the FineTuneJob failed, or waits for its Job to go)."""
        pds = ftj.spec.pending_deadline_seconds
        waited = self.since(clock_start)
        if pds is None or waited is None:
            return False
        if waited >= pds:
            if job is not None and not self.delete_job(job):
                return True  # not Failed until the Job is gone
            self.fail(
                "PendingDeadlineExceeded",
                f"the trainer was not running {pds}s (pendingDeadlineSeconds) after it started: {why}",
            )
            return True
        self.after(pds - waited)
        return False

    def suspended_condition(self, ftj: FineTuneJob, job: Mapping[str, Any] | None) -> None:
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
                self.default("Suspended", "NotSuspended", "")


__all__ = [
    "ALL_CONDITION_TYPES",
    "CONDITION_TYPES",
    "GRACE_REASONS",
    "STALL_GRACE_SECONDS",
    "STATUS_FIELDS",
    "Decision",
    "Deletion",
    "FineTuneJobDraft",
    "Observed",
]
