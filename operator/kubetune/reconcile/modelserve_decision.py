"""The ModelServe decision: a pure function from what was read to what should be.

    decide(Observed, ServeOptions, now) -> Decision

``Observed`` is the ModelServe as read, its children (Deployment, Service, PodDisruptionBudget), the
FineTuneJobs it references and, when an earlier decision asked for one, the smoke test's outcome.
``Decision`` is the children to apply (only those whose content changed), the children to delete, the
whole status, the Events, when to look again, and whether a smoke test must run before deciding again.
No client, no clock, no network: the shell in reconcile/modelserve.py reads, runs the smoke test and
writes; tests/unit/test_modelserve_decision.py walks every transition in milliseconds.

What must survive an operator restart is in the cluster:

- ``status.revision`` is what the pods serve (or are rolling out), ``status.previousRevision`` the last
  revision that passed before it; ``status.lastRollout.result`` is None while a rollout is in progress,
  then succeeded, rolled-back or failed.
- On the Deployment (not its pod template): ``kubetune.io/previous-template``, the pod template of the
  last revision that passed (what a rollback re-applies), and ``kubetune.io/failed-revision``, a
  revision that failed and is not retried until the spec or a referenced result changes.

A decision in order: Service (+ PDB) -> sources; when they cannot be served, say why and keep serving
what is served -> a new revision hash starts a rollout -> wait until the Deployment is Available with it
-> smoke test -> Ready, or roll back (Degraded) / fail (Failed).

Conditions: Ready, Progressing, Degraded (the rollout's story) and Reconciling, Stalled (kstatus, read by
Flux and Argo CD; see docs/operations.md): Reconciling=True while work is under way (rolling out,
smoke testing, waiting for a result), Stalled=True when nothing changes without a change by someone
(invalid spec, UnsupportedByEngine, a failed revision, a child the API server refuses); never both.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import ModelServe, validate_document
from kubetune.engines import ENGINES, engine_of
from kubetune.engines.smoke import DEFAULT_TIMEOUT_SECONDS, SmokeTestResult
from kubetune.render import modelserve as r
from kubetune.render.common import applied_hash, with_hash
from kubetune.settings import DEFAULT_VLLM_IMAGE

from .clock import fmt_time, parse_time
from .conditions import KStatus
from .draft import Draft
from .live_adapters import (
    AdapterChange,
    ChangeOutcome,
    PodState,
    desired_adapters,
    failed_digests,
    plan,
    served_adapters,
)
from .refusals import Refusal
from .sources import REASON_NOT_PROMOTED, REASON_UNSUPPORTED, REASON_WAITING, Resolution, resolve_sources
from .status import Event, strip_none

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Reconciling", "Stalled")
OWN_STATUS_FIELDS = (
    "phase", "observedGeneration", "conditions", "endpoint", "revision", "previousRevision", "replicas",
    "readyReplicas", "lastRollout", "servedAdapters",
)  # fmt: skip
REASON_CHILD_REFUSED = "ChildRefused"


@dataclass
class ServeOptions:
    """Operator settings the ModelServe controller uses."""

    tgi_image: str
    trainer_image: str
    vllm_image: str = DEFAULT_VLLM_IMAGE
    oci_plain_http: tuple[str, ...] = ()
    """oci:// registries the pull init containers speak to over plain HTTP."""
    endpoint_override: str | None = None
    pod_address_override: str | None = None
    """vLLM pods' addresses for live adapter updates: a template with {pod}, {namespace}, {ip}, {port}."""
    requeue_seconds: float = 30.0
    smoke_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    smoke_attempts: int = 3

    def image(self, engine: str) -> str:
        """The image of ENGINE's pods when the ModelServe names none: the operator's setting ``<engine>_image``
        where there is one, else the engine's own default."""
        configured: str | None = getattr(self, f"{engine}_image", None)
        return configured or ENGINES[engine].default_image


@dataclass(frozen=True)
class Check:
    """What every generate call of a smoke test sends and expects (spec.rollout.smokeTest)."""

    prompt: str
    max_new_tokens: int
    expect: str | None


@dataclass(frozen=True)
class SmokeRequest:
    """A smoke test the decision needs before it can say Ready or roll back."""

    revision: str
    endpoint: str
    prompt: str
    max_new_tokens: int
    expect: str | None
    adapters: tuple[str, ...]
    engine: str = "tgi"
    served_model: str = ""
    """vllm: the base model's served name (the ModelServe's name)."""


@dataclass(frozen=True)
class SmokeOutcome:
    """What the smoke test of REVISION gave: a result, or why it could not run from the operator."""

    revision: str
    result: SmokeTestResult | None = None
    unavailable: str | None = None


@dataclass(frozen=True)
class Observed:
    """Everything a decision reads."""

    obj: dict[str, Any]
    deployment: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    pdb: dict[str, Any] | None = None
    jobs: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    smoke: SmokeOutcome | None = None
    pods: tuple[PodState, ...] = ()
    """vllm: the ready pods of the current revision and what each has loaded."""
    adapter_outcomes: tuple[ChangeOutcome, ...] | None = None
    """vllm: what the adapter changes an earlier decision asked for gave (None: none were made)."""
    refusals: tuple[Refusal, ...] = ()
    """Child writes the API server refused in this reconcile (the decision then says so: ``refused``)."""


@dataclass
class Decision:
    """What the shell does: apply, delete, write status, record Events; and what the queue does next."""

    writes: list[dict[str, Any]] = field(default_factory=list)
    """Children to server-side apply (each carries its content hash; unchanged ones are left out)."""
    deletes: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, name, uid) of children to delete."""
    status: dict[str, Any] = field(default_factory=dict)
    """The ModelServe's whole status as this decision wants it."""
    old_status: dict[str, Any] = field(default_factory=dict)
    """The fields of the status this controller owns, as read (the write is a merge patch between the two)."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    problem: bool = False
    """Retry with the queue's backoff (the operator could not do its part)."""
    smoke_request: SmokeRequest | None = None
    """Run this smoke test, then decide again with its outcome."""
    adapter_changes: list[AdapterChange] = field(default_factory=list)
    """vllm: load/replace/unload these adapters on these pods, then decide again with the outcomes."""
    adapter_check: Check | None = None
    """vllm: the completion each loaded adapter version must answer."""
    phase: str | None = None
    rollout: str | None = None
    """succeeded, rolled-back or failed when a rollout finished in this decision."""
    result_to_ready_seconds: float | None = None
    smoke: SmokeTestResult | None = None


def decide(observed: Observed, opts: ServeOptions, now: dt.datetime) -> Decision:
    """The whole decision for one ModelServe (None of the inputs is changed)."""
    decision = _Decider(observed, opts, now).run()
    for refusal in observed.refusals[:1]:
        return refused(decision, observed.obj, refusal.kind, refusal.name, refusal.message, now)
    return decision


def refused(
    decision: Decision, obj: dict[str, Any], kind: str, name: str, message: str, now: dt.datetime
) -> Decision:
    """DECISION after the API server refused to write child KIND/NAME with MESSAGE (its Status message).

    The status keeps what is really served (the revision fields as read), the conditions say which
    child was refused, quoting the server, and what to change; one Event when the refusal is new; the
    queue retries with backoff (a quota or a policy may change without the ModelServe changing).
    """
    old = decision.old_status
    draft = Draft({"metadata": obj["metadata"], "status": old}, CONDITION_TYPES, now)
    words = (
        f"the API server refused {kind} {name}: {message}; change what it objects to (the ModelServe's "
        "spec, or the policy, quota or permissions named in the message); retrying with backoff"
    )
    serving = (old.get("revision") or {}).get("hash") and decision.status.get("readyReplicas")
    ready = f"still serving revision {old['revision']['hash']}; {words}" if serving else words
    draft.set("Ready", bool(serving), REASON_CHILD_REFUSED, ready)
    draft.set("Progressing", False, REASON_CHILD_REFUSED, words)
    draft.set("Degraded", True, REASON_CHILD_REFUSED, words)
    draft.finish_kstatus(KStatus(None, stalled=(REASON_CHILD_REFUSED, words)))
    draft.event_on_change("Warning", REASON_CHILD_REFUSED, words, "Stalled")
    status = {k: v for k, v in old.items() if k not in ("conditions", "phase")}
    for key in ("endpoint", "replicas", "readyReplicas"):
        if key in decision.status:
            status[key] = decision.status[key]
    phase = "Degraded" if serving else "Failed"
    status.update(
        phase=phase, observedGeneration=draft.gen, conditions=[draft.conds[t] for t in CONDITION_TYPES]
    )
    return Decision(
        status=strip_none(status), old_status=old, events=draft.events, problem=True, phase=phase,
    )  # fmt: skip


# ---- the decider ---------------------------------------------------------------------------------


def _deployment_complete(dep: dict[str, Any] | None, replicas: int, rev: str) -> tuple[bool, str]:
    """(complete, words): the Deployment runs REV, observed its latest spec, every pod updated and available."""
    if dep is None:
        return False, "the Deployment does not exist yet"
    if r.template_revision(dep["spec"].get("template")) != rev:
        return False, f"the Deployment is being updated to revision {rev}"
    st = dep.get("status") or {}
    if int(st.get("observedGeneration") or 0) < int(dep["metadata"].get("generation") or 1):
        return False, "the Deployment controller has not observed the new template yet"
    updated, total = int(st.get("updatedReplicas") or 0), int(st.get("replicas") or 0)
    available = int(st.get("availableReplicas") or 0)
    words = f"{updated}/{replicas} pods updated, {available} available"
    if total > updated:
        words += f", {total - updated} old pods terminating"
    return updated >= replicas and total <= replicas and available >= replicas, words


def _deadline_exceeded(dep: dict[str, Any] | None) -> str | None:
    for c in ((dep or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return c.get("message") or "the Deployment exceeded its progress deadline"
    return None


def _clean_template(template: dict[str, Any]) -> dict[str, Any]:
    """A live pod template, fit to be applied again (the API server's bookkeeping dropped)."""
    tpl = json.loads(json.dumps(template))
    meta = tpl.get("metadata") or {}
    meta.pop("creationTimestamp", None)
    (meta.get("labels") or {}).pop("pod-template-hash", None)
    return tpl


class _Decider(Draft):
    def __init__(self, observed: Observed, opts: ServeOptions, now: dt.datetime) -> None:
        super().__init__(observed.obj, CONDITION_TYPES, now)
        self.observed = observed
        self.opts = opts
        self.uid = self.meta.get("uid") or ""
        old = self.obj.get("status") or {}
        self.old = {k: old.get(k) for k in OWN_STATUS_FIELDS if old.get(k) is not None}
        self.st: dict[str, Any] = json.loads(
            json.dumps({k: v for k, v in self.old.items() if k not in ("conditions", "phase")})
        )
        self.out = Decision(old_status=self.old)
        self.phase: str = "Pending"
        self.kstatus: tuple[str | None, str, str] = (None, "", "")
        self.jobs = observed.jobs

    # ---- helpers ----------------------------------------------------------------------------

    def reconciling(self, reason: str, message: str) -> None:
        self.kstatus = ("Reconciling", reason, message)

    def stalled(self, reason: str, message: str) -> None:
        self.kstatus = ("Stalled", reason, message)

    def current(self) -> None:
        self.kstatus = (None, "", "")

    def apply(self, desired: dict[str, Any], live: dict[str, Any] | None) -> None:
        """Write DESIRED unless LIVE was applied with the same content."""
        desired = with_hash(desired)
        if live is None or applied_hash(live) != applied_hash(desired):
            self.out.writes.append(desired)

    # ---- the decision -----------------------------------------------------------------------

    def run(self) -> Decision:
        self.converge()
        self.finish()
        self.out.events = self.events
        self.out.requeue_after = self.requeue_after
        return self.out

    def converge(self) -> None:
        doc = {k: v for k, v in self.obj.items() if k != "status"}
        validated = validate_document(doc)
        if not validated.ok:
            message = "; ".join(str(p) for p in validated.problems)
            words = f"the spec is invalid, fix it: {message}"
            self.set("Ready", False, "InvalidSpec", words)
            self.set("Progressing", False, "InvalidSpec", "nothing rolls out until the spec is fixed")
            self.stalled("InvalidSpec", words)
            self.event_on_change("Warning", "InvalidSpec", words, "Ready")
            self.phase = "Failed"
            return
        ms: ModelServe = validated.obj  # type: ignore[assignment]
        self.ms = ms
        self.st["endpoint"] = r.endpoint(ms)
        self.service_and_pdb(ms)

        res = resolve_sources(ms, self.jobs)
        dep = self.observed.deployment
        self.observe_replicas(dep)
        if not res.ok:
            self.cannot_serve(res, dep)
            return

        self.res = res
        engine = engine_of(ms)
        image = ms.spec.image or self.opts.image(engine.name)
        desired = r.revision(ms, res, image)
        rev = desired.hash or ""
        current = (self.st.get("revision") or {}).get("hash")
        lora_modules = None
        if engine.live_adapters is not None and dep is not None and current == rev:
            # The revision's pods keep the adapters they started with; later versions load at run time.
            lora_modules = engine.started_adapters(dep["spec"].get("template"))
        template = r.render_pod_template(
            ms, res, image=image, trainer_image=self.opts.trainer_image, revision_hash_=rev,
            lora_modules=lora_modules, oci_plain_http=self.opts.oci_plain_http,
        )  # fmt: skip
        annotations = dict(((dep or {}).get("metadata") or {}).get("annotations") or {})
        failed = annotations.get(r.ANNOTATION_FAILED_REVISION)
        last = dict(self.st.get("lastRollout") or {})

        self.template = template
        if current != rev and not (rev == failed and dep is not None):
            self.start_rollout(ms, dep, template, desired.to_dict(), annotations, last)
            return
        if current == rev:
            # Keep the Deployment as rendered (replicas, placement, ...), our annotations included.
            self.apply(r.render_deployment(ms, self.uid, template, annotations=_ours(annotations)), dep)
        if rev == failed:
            self.stay_after_failure(ms, dep, rev)
        elif last.get("result") in ("succeeded", "rolled-back"):
            self.steady(ms, dep)
        else:
            self.progress(ms, dep, rev)

    # ---- pieces ----------------------------------------------------------------------------

    def service_and_pdb(self, ms: ModelServe) -> None:
        self.apply(r.render_service(ms, self.uid), self.observed.service)
        pdb = self.observed.pdb
        if r.wants_pdb(ms):
            self.apply(r.render_pdb(ms, self.uid), pdb)
        elif pdb is not None and any(
            o.get("uid") == self.uid for o in pdb["metadata"].get("ownerReferences") or []
        ):
            self.out.deletes.append(("PodDisruptionBudget", r.pdb_name(ms), pdb["metadata"]["uid"]))

    def observe_replicas(self, dep: dict[str, Any] | None) -> None:
        st = (dep or {}).get("status") or {}
        self.st["replicas"] = int(st.get("replicas") or 0)
        self.st["readyReplicas"] = int(st.get("readyReplicas") or 0)

    def cannot_serve(self, res: Resolution, dep: dict[str, Any] | None) -> None:
        serving = dep is not None and (self.st.get("revision") or {}).get("hash")
        reason, message = res.reason or REASON_WAITING, res.message
        self.set("Ready", False, reason, message)
        self.set("Progressing", False, reason, "no rollout until this is resolved")
        if serving:
            self.set("Degraded", True, reason, f"still serving revision {serving}; {message}")
            self.phase = "Degraded"
        else:
            self.set("Degraded", False, "NoRevision", "nothing is served yet")
            self.phase = "Failed" if reason == REASON_UNSUPPORTED else "Pending"
        if reason in (REASON_UNSUPPORTED, REASON_NOT_PROMOTED):
            # nothing changes until the spec does or the job brings a new (promoted) result
            self.stalled(reason, message)
            self.event_on_change("Warning", reason, message, "Ready")
        else:
            # A referenced job may still produce a result (or be created): work in progress.
            self.reconciling(reason, message)

    def start_rollout(
        self,
        ms: ModelServe,
        dep: dict[str, Any] | None,
        template: dict[str, Any],
        desired: dict[str, Any],
        annotations: dict[str, str],
        last: dict[str, Any],
    ) -> None:
        current = self.st.get("revision")
        ours = _ours(annotations)
        ours.pop(r.ANNOTATION_FAILED_REVISION, None)
        if (
            current
            and current.get("hash")
            and last.get("result") in ("succeeded", "rolled-back")
            and dep is not None
        ):
            # What is served now passed: it is what a failure of this rollout goes back to.
            self.st["previousRevision"] = current
            ours[r.ANNOTATION_PREVIOUS_TEMPLATE] = json.dumps(
                _clean_template(dep["spec"]["template"]), sort_keys=True, separators=(",", ":")
            )
        self.st["revision"] = desired
        self.st["lastRollout"] = {
            "startedAt": fmt_time(self.now),
            "message": f"rolling out revision {desired['hash']} ({_what(desired)})",
        }
        self.apply(r.render_deployment(ms, self.uid, template, annotations=ours), dep)
        self.event("Normal", "RollingOut", self.st["lastRollout"]["message"])
        self.progress(ms, dep, desired["hash"])

    def progress(self, ms: ModelServe, dep: dict[str, Any] | None, rev: str) -> None:
        """A rollout of REV is under way: wait for the Deployment, then smoke-test."""
        self.phase = "Progressing"
        self.set("Degraded", False, "RollingOut", "")
        if ms.spec.replicas == 0:
            self.set("Ready", False, "ScaledToZero", "spec.replicas is 0: nothing serves, nothing to test")
            self.set("Progressing", False, "ScaledToZero", f"revision {rev} is applied with 0 replicas")
            self.phase = "Pending"
            self.current()
            return
        complete, words = _deployment_complete(dep, ms.spec.replicas, rev)
        if not complete:
            exceeded = _deadline_exceeded(dep)
            if exceeded and r.template_revision((dep or {}).get("spec", {}).get("template")) == rev:
                self.fail(
                    ms,
                    dep,
                    rev,
                    "ProgressDeadlineExceeded",
                    f"the Deployment did not become available within "
                    f"{ms.spec.rollout.progress_deadline_seconds}s ({words}): {exceeded}",
                )
                return
            self.set("Ready", False, "RollingOut", f"revision {rev} is rolling out: {words}")
            self.set("Progressing", True, "RollingOut", f"revision {rev}: {words}")
            self.reconciling("RollingOut", f"revision {rev}: {words}")
            self.after(self.opts.requeue_seconds)
            return
        test = ms.spec.rollout.smoke_test
        if not test.enabled:
            self.succeed(ms, rev, "RolloutComplete", f"revision {rev} is available (smoke test disabled)")
            return
        smoke = self.observed.smoke
        if smoke is None or smoke.revision != rev:
            self.out.smoke_request = SmokeRequest(
                revision=rev,
                endpoint=r.endpoint(ms, self.opts.endpoint_override),
                prompt=test.prompt,
                max_new_tokens=test.max_new_tokens,
                expect=test.expect,
                adapters=engine_of(ms).adapter_ids(ms),
                engine=ms.spec.engine,
                served_model=engine_of(ms).served_model(ms),
            )
            words = f"revision {rev} is available; running the smoke test"
            self.set("Ready", False, "SmokeTesting", words)
            self.set("Progressing", True, "SmokeTesting", words)
            self.reconciling("SmokeTesting", words)
            return
        if smoke.result is None:
            error = smoke.unavailable or "the smoke test did not run"
            self.set("Ready", False, "SmokeTestUnavailable", error)
            words = f"revision {rev} is available but untested: {error}"
            self.set("Progressing", True, "SmokeTestUnavailable", words)
            self.reconciling("SmokeTestUnavailable", words)
            self.out.problem = True
            return
        self.out.smoke = smoke.result
        if smoke.result.ok:
            self.succeed(ms, rev, "SmokeTestPassed", f"revision {rev} answers: {smoke.result.message}")
        else:
            self.fail(ms, dep, rev, "SmokeTestFailed", smoke.result.message)

    def succeed(self, ms: ModelServe, rev: str, reason: str, message: str) -> None:
        self.set("Ready", True, reason, message)
        self.set("Progressing", False, "RolloutComplete", f"revision {rev} is rolled out")
        self.set("Degraded", False, "RolloutComplete", "")
        self.current()
        self.phase = "Ready"
        last = dict(self.st.get("lastRollout") or {})
        last.update(finishedAt=fmt_time(self.now), result="succeeded", message=message)
        self.st["lastRollout"] = last
        self.out.rollout = "succeeded"
        self.out.result_to_ready_seconds = self._since_result(last)
        self.event("Normal", reason, message)
        if engine_of(ms).live_adapters is not None and ms.spec.adapters:
            self.live_adapters(ms, degraded=False)

    def _since_result(self, last: dict[str, Any]) -> float | None:
        """From the newest referenced result (its job's completionTime), else the rollout's start, to now."""
        stamps = [
            parse_time(((j or {}).get("status") or {}).get("completionTime")) for j in self.jobs.values()
        ]
        found = [t for t in stamps if t is not None]
        start = max(found) if found else parse_time(last.get("startedAt"))
        return None if start is None else max(0.0, (self.now - start).total_seconds())

    def fail(self, ms: ModelServe, dep: dict[str, Any] | None, rev: str, reason: str, message: str) -> None:
        annotations = _ours(((dep or {}).get("metadata") or {}).get("annotations") or {})
        annotations[r.ANNOTATION_FAILED_REVISION] = rev
        previous = self.st.get("previousRevision")
        previous_template = annotations.get(r.ANNOTATION_PREVIOUS_TEMPLATE)
        last = dict(self.st.get("lastRollout") or {})
        last["finishedAt"] = fmt_time(self.now)
        if ms.spec.rollout.auto_rollback and previous and previous_template:
            template = json.loads(previous_template)
            self.apply(r.render_deployment(ms, self.uid, template, annotations=annotations), dep)
            failed_rev = self.st.get("revision")
            self.st["revision"], self.st["previousRevision"] = previous, failed_rev
            back = previous.get("hash")
            words = f"revision {rev} failed ({reason}): {message}; rolled back to revision {back}"
            self.set("Degraded", True, "RolledBack", words)
            self.set("Progressing", False, "RolledBack", f"rolled back to revision {back}")
            self.set("Ready", True, "RolledBack", f"serving the previous revision {back}")
            self.stalled("RolledBack", f"{words}; a new result or a spec change rolls out again")
            self.phase = "Degraded"
            last.update(result="rolled-back", message=words)
            self.out.rollout = "rolled-back"
            self.event("Warning", "RolledBack", words)
        else:
            why = ("autoRollback is off" if not ms.spec.rollout.auto_rollback
                   else "there is no previous revision to roll back to")  # fmt: skip
            words = (f"revision {rev} failed ({reason}): {message}; {why}; fix the model or the spec "
                     "(a new result or spec change rolls out again)")  # fmt: skip
            self.apply(r.render_deployment(ms, self.uid, self.template, annotations=annotations), dep)
            self.set("Ready", False, reason, words)
            self.set("Progressing", False, reason, f"revision {rev} failed")
            self.set("Degraded", True, reason, words)
            self.stalled(reason, words)
            self.phase = "Failed"
            last.update(result="failed", message=words)
            self.out.rollout = "failed"
            self.event("Warning", reason, words)
        self.st["lastRollout"] = last

    def stay_after_failure(self, ms: ModelServe, dep: dict[str, Any] | None, rev: str) -> None:
        """The wanted revision failed before: keep what is served and what status says about it."""
        last = self.st.get("lastRollout") or {}
        message = last.get("message") or f"revision {rev} failed"
        if last.get("result") == "rolled-back":
            self.steady(ms, dep, degraded=True)
            self.phase = "Degraded"
            self.stalled("RolledBack", f"{message}; a new result or a spec change rolls out again")
        else:
            self.phase = "Failed"
            failed = self.old_conds.get("Stalled") or {}
            self.stalled(str(failed.get("reason") or "FailedRevision"), message)
        for type_ in ("Ready", "Progressing", "Degraded"):
            if type_ not in self.conds:
                self.set(type_, False, "FailedRevision", message)
            self.conds[type_]["observedGeneration"] = self.gen

    def steady(self, ms: ModelServe, dep: dict[str, Any] | None, degraded: bool = False) -> None:
        """The current revision passed: Ready follows the pods' availability."""
        ready = int(((dep or {}).get("status") or {}).get("availableReplicas") or 0)
        rev = (self.st.get("revision") or {}).get("hash")
        was = self.conds.get("Ready") or {}
        if ms.spec.replicas and ready == 0:
            self.set(
                "Ready", False, "NoAvailableReplicas", f"revision {rev} passed, but no pod is available now"
            )
        elif was.get("status") != "True":
            self.set("Ready", True, "Available", f"revision {rev} is served by {ready} pods")
        else:
            self.conds["Ready"]["observedGeneration"] = self.gen
        for type_ in ("Progressing", "Degraded"):
            if type_ in self.conds:
                self.conds[type_]["observedGeneration"] = self.gen
        if not degraded:
            self.set("Progressing", False, "RolloutComplete", f"revision {rev} is rolled out")
            self.set("Degraded", False, "RolloutComplete", "")
        ready_now = self.conds["Ready"]["status"] == "True"
        self.phase = "Degraded" if degraded else ("Ready" if ready_now else "Progressing")
        if ready_now:
            self.current()
        else:
            # Kubernetes replaces lost pods by itself: in progress, not stuck.
            self.reconciling("NoAvailableReplicas", self.conds["Ready"]["message"])
        if engine_of(ms).live_adapters is not None and ms.spec.adapters:
            self.live_adapters(ms, degraded)

    def live_adapters(self, ms: ModelServe, degraded: bool) -> None:
        """vLLM: bring every ready pod of the current revision to the adapters wanted now, without
        touching the pod template (reconcile/live_adapters.py has the scheme)."""
        desired = desired_adapters(self.res)
        pods = self.observed.pods
        previous = list(self.st.get("servedAdapters") or [])
        outcomes = self.observed.adapter_outcomes
        test = ms.spec.rollout.smoke_test
        if outcomes is None:
            todo = plan(desired, pods, failed_digests(previous))
            if todo.changes:
                self.out.adapter_changes = todo.changes
                self.out.adapter_check = Check(test.prompt, test.max_new_tokens, test.expect)
            if todo.unreachable:
                words = "cannot ask vLLM what it has loaded: " + "; ".join(todo.unreachable)
                self.reconciling("AdapterUpdate", words)
                self.after(self.opts.requeue_seconds)
        served = served_adapters(desired, pods, previous, outcomes or ())
        self.st["servedAdapters"] = served
        for o in outcomes or ():
            if o.error is None and o.change.kind != "unload":
                self.event("Normal", "AdapterUpdated", f"adapter {o.change.name} version {o.change.digest} "
                           f"({o.change.path}) is served on pod {o.change.pod}")  # fmt: skip
        failures = [e for e in served if e.get("failedDigest")]
        if failures and not degraded:
            words = "; ".join(
                f"adapter {e['name']}: version {e['failedDigest']} failed ({e.get('message')}); still serving "
                f"{e['uri']} on {e['loadedOnPods']}/{e['desiredPods']} pods"
                for e in failures
            )
            self.set("Degraded", True, "AdapterLoadFailed", words)
            self.stalled("AdapterLoadFailed", f"{words}; a new result of the adapter's FineTuneJob is tried")
            self.event_on_change("Warning", "AdapterLoadFailed", words, "Degraded")
            self.phase = "Degraded"
            return
        behind = [e for e in served if e["loadedOnPods"] < e["desiredPods"] and not e.get("failedDigest")]
        if behind and self.kstatus[0] is None:
            words = ", ".join(f"{e['name']} on {e['loadedOnPods']}/{e['desiredPods']} pods" for e in behind)
            self.reconciling("AdapterUpdate", f"loading adapters: {words}")
            self.after(self.opts.requeue_seconds)

    # ---- status -----------------------------------------------------------------------------

    def finish(self) -> None:
        kind, reason, message = self.kstatus
        self.finish_kstatus(
            KStatus(
                None,  # Ready is the rollout's (set above)
                reconciling=(reason, message) if kind == "Reconciling" else None,
                stalled=(reason, message) if kind == "Stalled" else None,
            )
        )
        for type_ in CONDITION_TYPES:
            if type_ not in self.conds:
                self.set(type_, False, "Pending", "")
        new = {
            **self.st,
            "phase": self.phase,
            "observedGeneration": self.gen,
            "conditions": [self.conds[t] for t in CONDITION_TYPES],
        }
        self.out.status = strip_none(new)
        self.out.phase = self.phase


def _ours(annotations: Mapping[str, str]) -> dict[str, str]:
    """The Deployment annotations this controller owns (carried from apply to apply)."""
    keys = (r.ANNOTATION_PREVIOUS_TEMPLATE, r.ANNOTATION_FAILED_REVISION)
    return {k: v for k, v in annotations.items() if k in keys}


def _what(revision: dict[str, Any]) -> str:
    parts = [f"model {revision.get('model')}"]
    if revision.get("adapters"):
        parts.append("adapters " + ", ".join(revision["adapters"]))
    if revision.get("sources"):
        parts.append("from " + ", ".join(revision["sources"]))
    return "; ".join(parts)
