"""The FineTuneJob reconcile: read the object and its children, converge, write status. Level-based: it
never asks why it runs (create, update, a child's event, a timer, a restart); it only looks at the world.

Everything that must survive an operator restart lives in the cluster: the run id and attempt are labels
of the trainer Jobs (and the ConfigMap's run id), deadlines are computed from status timestamps and the
Jobs' creationTimestamps, conditions keep their lastTransitionTime.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob, validate_document
from kubetune.render.common import (
    ATTEMPT_LABEL,
    FINETUNEJOB_LABEL,
    RUN_GENERATION_ANNOTATION,
    RUN_ID_LABEL,
    applied_hash,
)
from kubetune.render.finetunejob import (
    RenderOptions,
    configmap_name,
    job_name,
    render_configmap,
    render_job,
    render_rbac,
    render_service,
    run_id,
    secret_uses,
)
from kubetune.render.finetunejob import (
    _label_value as label_value,
)

from . import chains
from .conditions import load_conditions, set_condition
from .kube import ApiException, Kube, fmt_time, now, parse_time

log = logging.getLogger("kubetune.finetunejob")

CONTROLLER = "finetunejob"
CONDITION_TYPES = ("Validated", "Running", "Succeeded", "Failed", "Suspended", chains.WAITING_CONDITION)
OWN_STATUS_FIELDS = (
    "phase",
    "observedGeneration",
    "conditions",
    "jobName",
    "startTime",
    "completionTime",
    "attempts",
)
# Reasons that ask the user to do something: Warning events, retry with backoff.
PROBLEM_REASONS = {
    "InvalidSpec", "SecretNotFound", "SecretKeyMissing", "PVCNotFound", "PVCLost", "ImagePullFailed",
    "ContainerConfigError", "Unschedulable", "ChildConflict", "AttemptFailed", "BackoffLimitExceeded",
    "DeadlineExceeded", "PendingDeadlineExceeded", *chains.REFERENCE_REASONS,
}  # fmt: skip
IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
STATIC_KINDS_RECHECK_SECONDS = 600.0


@dataclass
class Result:
    """What the caller (the work queue) does next."""

    requeue_after: float | None = None
    """Reconcile again after this many seconds (timers: deadlines, TTL, waiting for deletions)."""
    problem: bool = False
    """Something the user must fix: retry with exponential backoff until it is fixed."""
    phase: str | None = None
    job_created_after: float | None = None
    """Seconds from the FineTuneJob's creation to its first trainer Job (measured once)."""
    run_seconds: float | None = None
    """Duration of a run that finished in this reconcile."""


@dataclass
class AppliedCache:
    """What this process last applied per child (kind, namespace, name) -> (hash, run id, when). Lets a
    reconcile of an unchanged object skip even the reads; entries older than ``max_age`` are re-checked
    against the cluster (drift repair)."""

    max_age: float = STATIC_KINDS_RECHECK_SECONDS
    entries: dict[tuple[str, str, str], tuple[str | None, str | None, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[str, str, str]) -> tuple[str | None, str | None] | None:
        with self.lock:
            entry = self.entries.get(key)
        if entry is None or time.monotonic() - entry[2] > self.max_age:
            return None
        return entry[0], entry[1]

    def put(self, key: tuple[str, str, str], digest: str | None, run: str | None) -> None:
        with self.lock:
            self.entries[key] = (digest, run, time.monotonic())

    def forget(self, namespace: str, owner_labelled: str | None = None) -> None:
        with self.lock:
            for key in [k for k in self.entries if k[1] == namespace]:
                del self.entries[key]

    def drop(self, key: tuple[str, str, str]) -> None:
        with self.lock:
            self.entries.pop(key, None)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def _true(obj: dict[str, Any] | None, type_: str) -> bool:
    c = _cond(obj, type_)
    return bool(c and c.get("status") == "True")


def _attempt(job: dict[str, Any]) -> int:
    try:
        return int(_labels(job).get(ATTEMPT_LABEL, "1"))
    except ValueError:
        return 1


def _tail(text: str | None, limit: int = 300) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class FineTuneJobReconciler:
    """One reconcile of one FineTuneJob; ``reconcile`` is safe to call from several threads for different
    objects (the work queue never runs the same object twice at once)."""

    def __init__(self, kube: Kube, opts: RenderOptions, cache: AppliedCache | None = None, clock=now):
        self.kube = kube
        self.opts = opts
        self.cache = cache or AppliedCache()
        self.clock = clock

    def reconcile(self, namespace: str, name: str) -> Result:
        obj = self.kube.get("FineTuneJob", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return Result()  # gone: garbage collection removes the children
        return _Pass(self, obj).run()


class _Pass:
    """State of one reconcile pass."""

    def __init__(self, r: FineTuneJobReconciler, obj: dict[str, Any]):
        self.r = r
        self.kube = r.kube
        self.obj = obj
        self.meta = obj["metadata"]
        self.ns = self.meta["namespace"]
        self.name = self.meta["name"]
        self.uid = self.meta["uid"]
        self.gen = int(self.meta.get("generation") or 1)
        self.now = r.clock()
        old = obj.get("status") or {}
        self.old = {k: old.get(k) for k in OWN_STATUS_FIELDS}
        self.st: dict[str, Any] = {
            "jobName": old.get("jobName"),
            "startTime": old.get("startTime"),
            "completionTime": old.get("completionTime"),
            "attempts": int(old.get("attempts") or 0),
        }
        self.conds = load_conditions(old, CONDITION_TYPES)
        self.old_conds = {t: dict(c) for t, c in self.conds.items()}
        self.events: list[tuple[str, str, str]] = []
        self.requeue: list[float] = []
        self.result = Result()
        self.spec: dict[str, Any] = obj.get("spec") or {}

    # ---------------------------------------------------------------------------------------------
    # helpers

    def set(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        set_condition(self.conds, type_, status, reason, message, generation=self.gen, now=self.now)

    def is_true(self, type_: str) -> bool:
        c = self.conds.get(type_)
        return bool(c and c["status"] == "True")

    def reason(self, type_: str) -> str | None:
        c = self.conds.get(type_)
        return c.get("reason") if c else None

    def after(self, seconds: float) -> None:
        self.requeue.append(max(0.05, seconds))

    def owned(self, child: dict[str, Any]) -> bool:
        return any(ref.get("uid") == self.uid for ref in child["metadata"].get("ownerReferences") or [])

    def since(self, stamp: str | None) -> float | None:
        t = parse_time(stamp)
        return None if t is None else (self.now - t).total_seconds()

    # ---------------------------------------------------------------------------------------------

    def run(self) -> Result:
        self._converge()
        self._write_status()
        if self.requeue:
            self.result.requeue_after = min(self.requeue)
        return self.result

    def _converge(self) -> None:
        if self._ttl_expired():
            return
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
            for job in self._trainer_jobs(everything=True):
                self._delete_job(job)
            return  # nothing to retry: an edit of the spec triggers the next reconcile
        self.set("Validated", True, "Valid", "the spec is valid")
        ftj: FineTuneJob = validated.obj  # type: ignore[assignment]
        self._resolve_chain(ftj)  # chains hook (rlhf, issue 11)
        rid = run_id(ftj)

        jobs = self._trainer_jobs()
        stale = [j for j in jobs if _labels(j).get(RUN_ID_LABEL) != rid]
        current = [j for j in jobs if _labels(j).get(RUN_ID_LABEL) == rid]
        cm_run = self._configmap_run()
        if stale or (cm_run is not None and cm_run != rid):
            stale = [j for j in self._trainer_jobs(everything=True) if _labels(j).get(RUN_ID_LABEL) != rid]
            self._start_new_run(rid, stale)
            if stale:
                self.after(1.0)  # the old Job's name is reused: wait until it is gone
                return

        if self._terminal(ftj):
            self._apply_static(ftj, max(self.st["attempts"], 1))
            self._ttl_timer()
            return

        cur = max(current, key=_attempt) if current else None
        attempt = _attempt(cur) if cur else max(self.st["attempts"], 1)
        problems = self._reference_problems(ftj)
        if not self._apply_static(ftj, attempt):
            return
        if cur is None and self._held_by_chain():  # chains hook (rlhf, issue 11)
            return
        if problems and cur is None:
            reason, message = problems[0][0], "; ".join(m for _, m in problems)
            self.set("Running", False, reason, message)
            self._suspended_condition(ftj, None)
            self._default("Succeeded", "NotStarted", "the run has not finished")
            self._default("Failed", "NotFailed", "")
            self.result.problem = True
            clock_start = self.st["startTime"] or self.meta.get("creationTimestamp")
            self._pending_deadline(ftj, None, clock_start, message)
            return
        if cur is None:
            self._create_job(ftj, attempt)
            return
        self._observe(ftj, cur, [j for j in current if j is not cur])

    # ---------------------------------------------------------------------------------------------
    # >>> chains hook (rlhf, issue 11): model.fineTuneJobRef and reward-model references (reconcile/chains.py)

    chain = None  # what the references resolved to: rendered into the TrainerConfig, mounted in the Job
    chain_verdict: chains.Verdict | None = None

    def _resolve_chain(self, ftj: FineTuneJob) -> None:
        """Read the referenced FineTuneJobs and resolve them; a broken chain that is whole again clears Failed."""
        if not chains.references(ftj):
            return
        started = self.st["jobName"] is not None  # a started run keeps the results it began with
        jobs = chains.read_chain(lambda n: self.kube.get("FineTuneJob", self.ns, n), ftj)
        self.chain_verdict = chains.resolve(ftj, jobs, started=started)
        if self.chain_verdict.ready:
            self.chain = self.chain_verdict.chain
            if self.reason("Failed") in chains.REFERENCE_REASONS and self.is_true("Failed"):
                self.set("Failed", False, "ModelReady", self.chain_verdict.message)
            if chains.WAITING_CONDITION in self.conds:
                self.set(chains.WAITING_CONDITION, False, "ModelReady", self.chain_verdict.message)

    def _held_by_chain(self) -> bool:
        """No trainer Job while a referenced job has not Succeeded (WaitingForModel) or the chain is broken."""
        verdict = self.chain_verdict
        if verdict is None or verdict.ready:
            return False
        for type_, status, reason, message in chains.conditions(verdict):
            self.set(type_, status, reason, message)
        self._default("Succeeded", "NotStarted", "the run has not finished")
        self._default("Failed", "NotFailed", "")
        self.result.problem = verdict.state == "failed"  # retried with backoff; a fixed chain also wakes it
        return True

    # <<< chains hook
    # ---------------------------------------------------------------------------------------------
    # lifecycle pieces

    def _default(self, type_: str, reason: str, message: str) -> None:
        if type_ not in self.conds:
            self.set(type_, False, reason, message)

    def _trainer_jobs(self, everything: bool = False) -> list[dict[str, Any]]:
        """The trainer Jobs: the current attempt's by name (a GET; status.attempts says which), or all of
        them by label (a LIST, which costs the API server a scan of the namespace) when EVERYTHING."""
        if everything:
            jobs = self.kube.list("Job", self.ns, {FINETUNEJOB_LABEL: label_value(self.name)})
        else:
            job = self.kube.get("Job", self.ns, job_name(self.name, max(self.st["attempts"], 1)))
            jobs = [job] if job is not None else []
        return [j for j in jobs if self.owned(j)]

    def _configmap_run(self) -> str | None:
        key = ("ConfigMap", self.ns, configmap_name(self.name))
        cached = self.r.cache.get(key)
        if cached is not None:
            return cached[1]
        if not self.old.get("observedGeneration"):
            return None  # never reconciled: no ConfigMap yet
        cm = self.kube.get("ConfigMap", self.ns, key[2])
        if cm is None or not self.owned(cm):
            return None
        self.r.cache.put(key, applied_hash(cm), _labels(cm).get(RUN_ID_LABEL))
        return _labels(cm).get(RUN_ID_LABEL)

    def _start_new_run(self, rid: str, stale: list[dict[str, Any]]) -> None:
        message = f"the spec changed (generation {self.gen}): starting run {rid} from scratch"
        self.st.update({"attempts": 0, "startTime": None, "completionTime": None, "jobName": None})
        for type_ in ("Running", "Succeeded", "Failed"):
            self.set(type_, False, "NewRun", message)
        self.events.append(("Normal", "NewRun", message))
        # Persist the reset before anything of the old run disappears (a crash in between repeats it).
        self._write_status()
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
        done = _true(self.obj, "Succeeded") or _true(self.obj, "Failed")
        elapsed = self.since(self.st["completionTime"])
        if ttl is None or not done or elapsed is None:
            return False
        if elapsed >= ttl:
            self.kube.event(
                self.obj,
                "Normal",
                "Deleted",
                f"ttlSecondsAfterFinished ({ttl}s) passed: deleting the FineTuneJob",
            )
            self.kube.delete("FineTuneJob", self.ns, self.name, uid=self.uid)
            self.deleted = True
            return True
        return False

    def _ttl_timer(self) -> None:
        ttl = self.spec.get("ttlSecondsAfterFinished")
        elapsed = self.since(self.st["completionTime"])
        if ttl is not None and elapsed is not None:
            self.after(ttl - elapsed)

    def _reference_problems(self, ftj: FineTuneJob) -> list[tuple[str, str]]:
        """Secrets and PVCs the pods need, which the CRD cannot check: (reason, message) per problem."""
        problems: list[tuple[str, str]] = []
        secrets: dict[str, dict | None] = {}
        for use in secret_uses(ftj):
            if use.name not in secrets:
                secrets[use.name] = self.kube.get("Secret", self.ns, use.name)
            secret = secrets[use.name]
            if secret is None:
                problems.append(
                    (
                        "SecretNotFound",
                        f"Secret {use.name!r} ({use.field}) not found in namespace "
                        f"{self.ns}: create it or fix {use.field}.name",
                    )
                )
                continue
            data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
            missing = [k for k in use.required_keys if k not in data]
            if missing:
                problems.append(
                    (
                        "SecretKeyMissing",
                        f"Secret {use.name!r} ({use.field}) has no key "
                        f"{', '.join(missing)}: add it or set {use.field}.key",
                    )
                )
        from kubetune.api.v1alpha1 import pvc_claims

        for claim in pvc_claims(ftj):
            pvc = self.kube.get("PersistentVolumeClaim", self.ns, claim)
            if pvc is None:
                problems.append(
                    (
                        "PVCNotFound",
                        f"PersistentVolumeClaim {claim!r} not found in namespace {self.ns}: "
                        f"create it or fix the pvc:// URIs that name it",
                    )
                )
            elif (pvc.get("status") or {}).get("phase") == "Lost":
                problems.append(
                    (
                        "PVCLost",
                        f"PersistentVolumeClaim {claim!r} is Lost (its volume is gone): "
                        f"restore the volume or point the pvc:// URIs to another claim",
                    )
                )
        return problems

    def _apply_static(self, ftj: FineTuneJob, attempt: int) -> bool:
        """RBAC, ConfigMap and Service: applied only when what they should be differs from what was applied."""
        # Everything they are rendered from: when it is what this process applied last, skip even rendering.
        signature = (self.uid, self.gen, tuple(sorted((self.meta.get("labels") or {}).items())), attempt)
        signature += (self.chain.model_dump_json() if self.chain else None,)  # chains hook (rlhf)
        sig_key = ("static", self.ns, self.name)
        if self.r.cache.get(sig_key) == (str(signature), None):
            return True
        desired = [
            *render_rbac(ftj),
            render_configmap(ftj, self.r.opts, self.chain),
            render_service(ftj, attempt),
        ]
        for obj in desired:
            key = (obj["kind"], self.ns, obj["metadata"]["name"])
            digest = applied_hash(obj)
            cached = self.r.cache.get(key)
            if cached is not None and cached[0] == digest:
                continue
            # Never reconciled before: its children cannot exist yet, so apply without reading first (a
            # foreign object of that name is refused by the API server: two controller references).
            live = self.kube.get(obj["kind"], self.ns, key[2]) if self.old.get("observedGeneration") else None
            if live is not None and not self.owned(live):
                message = (
                    f"{obj['kind']} {key[2]!r} already exists and does not belong to this FineTuneJob: "
                    f"delete it or rename the FineTuneJob"
                )
                self.set("Running", False, "ChildConflict", message)
                self.result.problem = True
                return False
            if live is None or applied_hash(live) != digest:
                live = self.kube.apply(obj)
            self.r.cache.put(key, applied_hash(live), _labels(live).get(RUN_ID_LABEL))
        self.r.cache.put(sig_key, str(signature), None)
        return True

    def _create_job(self, ftj: FineTuneJob, attempt: int) -> None:
        body = render_job(ftj, self.r.opts, attempt, chain=self.chain)
        try:
            created = self.kube.apply(body)
        except ApiException as exc:
            if exc.status in (409, 422):
                # 409: a Job of this name is being deleted; 422: the old one's immutable template differs.
                self.after(1.0)
                return
            raise
        first = self.st["startTime"] is None
        self.st["attempts"] = attempt
        self.st["jobName"] = created["metadata"]["name"]
        if first:
            self.st["startTime"] = fmt_time(self.now)
            created_at = parse_time(self.meta.get("creationTimestamp"))
            job_at = parse_time(created["metadata"].get("creationTimestamp")) or self.now
            if attempt == 1 and created_at is not None:
                # Wall-clock of the Job's creation at sub-second precision (creationTimestamp has 1 s).
                self.result.job_created_after = max(
                    0.0, (dt.datetime.now(dt.UTC) - created_at).total_seconds()
                )
                del job_at
        limit = ftj.spec.backoff_limit + 1
        self.events.append(
            (
                "Normal",
                "JobCreated",
                f"created trainer Job {created['metadata']['name']} (attempt {attempt} of {limit})",
            )
        )
        self._observe(ftj, created, [])

    def _delete_job(self, job: dict[str, Any], propagation: str = "Background") -> None:
        if not job["metadata"].get("deletionTimestamp"):
            self.kube.delete(
                "Job", self.ns, job["metadata"]["name"], uid=job["metadata"]["uid"], propagation=propagation
            )

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
        attempt = _attempt(job)
        limit = ftj.spec.backoff_limit + 1
        self.st["attempts"] = attempt
        self.st["jobName"] = jname
        rid = _labels(job).get(RUN_ID_LABEL)
        run_gen = (job["metadata"].get("annotations") or {}).get(RUN_GENERATION_ANNOTATION) or str(self.gen)
        for old in older:  # earlier failed attempts of this run
            if (old.get("status") or {}).get("active", 0) == 0 or _true(old, "Failed"):
                self._delete_job(old)
        self._default("Failed", "NotFailed", "")
        self._default("Succeeded", "NotStarted", "the run has not finished")

        if _true(job, "Complete") or _true(job, "SuccessCriteriaMet"):
            done_at = (job.get("status") or {}).get("completionTime") or fmt_time(self.now)
            self.st["completionTime"] = self.st["completionTime"] or done_at
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
                self.result.run_seconds = max(0.0, (end - start).total_seconds())
            self._ttl_timer()
            return
        if _true(job, "Failed") or _true(job, "FailureTarget"):
            why = self._failure_reason(job)
            if attempt < limit:
                nxt = attempt + 1
                message = f"attempt {attempt} of {limit} failed: {why}; starting attempt {nxt} (resumes from the latest checkpoint)"
                self.events.append(("Warning", "AttemptFailed", message))
                self.set("Running", False, "Restarting", message)
                self._apply_static(ftj, nxt)
                self._create_job(ftj, nxt)
                if self.st["attempts"] == nxt:
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
            self.kube.patch("Job", self.ns, jname, {"spec": {"suspend": want}})
            job = {**job, "spec": {**job.get("spec", {}), "suspend": want}}
            self.events.append(
                (
                    "Normal",
                    "Suspended" if want else "Resumed",
                    f"{'suspended' if want else 'resumed'} trainer Job {jname}",
                )
            )
        self._suspended_condition(ftj, job)
        if want:
            self.set("Running", False, "Suspended", "the run is suspended")
            return

        pods = [
            p
            for p in self.kube.list(
                "Pod", self.ns, {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}
            )
            if not p["metadata"].get("deletionTimestamp")
        ]
        nodes = ftj.spec.resources.nodes
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        reason, message = self._pod_problem(pods, ftj)
        if len(running) >= nodes:
            self.set(
                "Running",
                True,
                "Running",
                f"{len(running)}/{nodes} trainer pods running (run {rid}, generation {run_gen}, attempt {attempt} of {limit})",
            )
        else:
            self.set(
                "Running",
                False,
                reason or "Pending",
                message or f"{len(running)}/{nodes} trainer pods running (attempt {attempt} of {limit})",
            )
            if reason in ("ImagePullFailed", "ContainerConfigError"):
                self.result.problem = True
            suspended = self.conds.get("Suspended") or {}
            starts = [
                self.st["startTime"],
                job["metadata"].get("creationTimestamp"),
                suspended.get("lastTransitionTime") if suspended.get("status") == "False" else None,
            ]
            clock_start = max((s for s in starts if s), key=lambda s: parse_time(s), default=None)
            if self._pending_deadline(ftj, job, clock_start, message or "the trainer pods are pending"):
                return
        ads = ftj.spec.active_deadline_seconds
        elapsed = self.since(self.st["startTime"])
        if ads is not None and elapsed is not None:
            if elapsed >= ads:
                self._delete_job(job)
                self._fail(
                    "DeadlineExceeded", f"the run was active longer than activeDeadlineSeconds ({ads}s)"
                )
                return
            self.after(ads - elapsed)

    def _pending_deadline(
        self, ftj: FineTuneJob, job: dict | None, clock_start: str | None, why: str
    ) -> bool:
        pds = ftj.spec.pending_deadline_seconds
        waited = self.since(clock_start)
        if pds is None or waited is None:
            return False
        if waited >= pds:
            if job is not None:
                self._delete_job(job)
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
            self.result.run_seconds = max(0.0, (self.now - start).total_seconds())
        self._ttl_timer()

    def _failure_reason(self, job: dict[str, Any]) -> str:
        pods = self.kube.list("Pod", self.ns, {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]})
        for pod in pods:
            if (pod.get("status") or {}).get("phase") != "Failed":
                continue
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated")
                if term and term.get("exitCode", 0) != 0:
                    detail = f": {_tail(term.get('message'))}" if term.get("message") else ""
                    return (
                        f"pod {pod['metadata']['name']} container {cs.get('name')} exited with code "
                        f"{term.get('exitCode')} ({term.get('reason') or 'Error'}){detail}"
                    )
            status = pod.get("status") or {}
            if status.get("message") or status.get("reason"):
                return f"pod {pod['metadata']['name']} failed: {status.get('reason', '')} {status.get('message', '')}".strip()
        for type_ in ("Failed", "FailureTarget"):
            c = _cond(job, type_)
            if c and c.get("status") == "True":
                return f"Job {job['metadata']['name']} failed ({c.get('reason')}): {c.get('message', '')}".strip()
        return f"Job {job['metadata']['name']} failed"

    def _pod_problem(self, pods: list[dict[str, Any]], ftj: FineTuneJob) -> tuple[str | None, str | None]:
        """Why the pods do not run, in words a user can act on (the scheduler's message, image pulls)."""
        for pod in pods:
            status = pod.get("status") or {}
            for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in IMAGE_PULL_REASONS:
                    return (
                        "ImagePullFailed",
                        f"cannot pull image {cs.get('image')!r} ({waiting.get('reason')}: "
                        f"{_tail(waiting.get('message'), 200)}): fix spec.image or spec.imagePullSecrets",
                    )
                if waiting.get("reason") == "CreateContainerConfigError":
                    return (
                        "ContainerConfigError",
                        f"pod {pod['metadata']['name']}: {_tail(waiting.get('message'), 300)}: "
                        "fix the Secrets or spec.env the pod refers to",
                    )
        for pod in pods:
            for c in (pod.get("status") or {}).get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("status") == "False":
                    return (
                        "Unschedulable",
                        f"pod {pod['metadata']['name']} cannot be scheduled: {c.get('message') or c.get('reason')}",
                    )
        return None, None

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

    def _write_status(self) -> None:
        if getattr(self, "deleted", False):
            return
        for type_, reason in (
            ("Running", "NotStarted"),
            ("Succeeded", "NotStarted"),
            ("Failed", "NotFailed"),
            ("Suspended", "NotSuspended"),
        ):
            self._default(type_, reason, "")
        new = {
            "phase": self._phase(),
            "observedGeneration": self.gen,
            "conditions": [self.conds[t] for t in CONDITION_TYPES if t in self.conds],
            **self.st,
        }
        self.result.phase = new["phase"]
        self._transition_events()
        if new == {**self.old, "attempts": int(self.old.get("attempts") or 0)}:
            return
        self.kube.patch("FineTuneJob", self.ns, self.name, {"status": new}, subresource="status")
        self.old = dict(new)
        self.obj.setdefault("status", {}).update(new)

    def _transition_events(self) -> None:
        for type_ in CONDITION_TYPES:
            new, old = self.conds.get(type_), self.old_conds.get(type_)
            if not new or (old and (old["status"], old.get("reason")) == (new["status"], new.get("reason"))):
                continue
            reason = new.get("reason") or type_
            if new["status"] == "True" or reason in PROBLEM_REASONS or (type_ == "Suspended" and old):
                if reason in ("NewRun",) or (type_ == "Validated" and new["status"] == "True" and not old):
                    continue
                warn = reason in PROBLEM_REASONS or (type_ == "Failed" and new["status"] == "True")
                message = new.get("message") or f"{type_} is {new['status']}"
                self.events.append(("Warning" if warn else "Normal", reason, message))
        self.old_conds = {t: dict(c) for t, c in self.conds.items()}
        for type_, reason, message in self.events:
            self.kube.event(self.obj, type_, reason, message)
        self.events = []
