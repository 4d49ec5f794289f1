"""The ModelServe reconcile: resolve what to serve, roll it out to a TGI Deployment, prove it answers
(a real generate call through huggingface_hub's InferenceClient), and roll back when it does not.

Level-based: every pass reads the ModelServe, the FineTuneJobs it references and its Deployment, and
converges; it never asks what event woke it. What must survive an operator restart is in the cluster:

- ``status.revision`` is what the pods serve (or are rolling out), ``status.previousRevision`` the last
  revision that passed before it; ``status.lastRollout.result`` is None while a rollout is in progress,
  then succeeded, rolled-back or failed.
- On the Deployment (not its pod template): ``kubetune.io/previous-template``, the pod template of the
  last revision that passed (what a rollback re-applies), and ``kubetune.io/failed-revision``, a
  revision that failed and is not retried until the spec or a referenced result changes.

Pass, in order: Service (+ PDB) -> sources; when they cannot be served, say why and keep serving what is
served -> a new revision hash starts a rollout -> wait until the Deployment is Available with it ->
smoke test -> Ready, or roll back (Degraded) / fail (Failed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune.api.v1alpha1 import ModelServe, validate_document
from kubetune.render import modelserve as r
from kubetune.render.common import applied_hash, with_hash

from .client import ApiException, Kube, fmt_time, now, parse_time
from .conditions import load_conditions, set_condition
from .smoketest import DEFAULT_TIMEOUT_SECONDS, SmokeTestResult, SmokeTestUnavailable, run_smoke_test

log = logging.getLogger("kubetune.modelserve")

CONTROLLER = "modelserve"
CONDITION_TYPES = ("Ready", "Progressing", "Degraded")
OWN_STATUS_FIELDS = (
    "phase", "observedGeneration", "conditions", "endpoint", "revision", "previousRevision", "replicas",
    "readyReplicas", "lastRollout",
)  # fmt: skip

WARNING_REASONS = {"RolledBack", "SmokeTestFailed", "ProgressDeadlineExceeded", "InvalidSpec",
                   r.REASON_UNSUPPORTED, "SmokeTestUnavailable"}  # fmt: skip


@dataclass
class ServeOptions:
    """Operator settings the ModelServe controller uses."""

    tgi_image: str
    trainer_image: str
    endpoint_override: str | None = None
    requeue_seconds: float = 30.0
    smoke_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    smoke_attempts: int = 3


@dataclass
class ServeResult:
    """What the work queue does next, and what the metrics record."""

    requeue_after: float | None = None
    problem: bool = False
    phase: str | None = None
    rollout: str | None = None
    """succeeded, rolled-back or failed when a rollout finished in this pass."""
    result_to_ready_seconds: float | None = None
    smoke: SmokeTestResult | None = None


SmokeTest = Callable[..., SmokeTestResult]


class ModelServeReconciler:
    """One reconcile of one ModelServe; safe for different objects in parallel threads."""

    def __init__(self, kube: Kube, opts: ServeOptions, *, smoke_test: SmokeTest = run_smoke_test, clock=now):
        self.kube = kube
        self.opts = opts
        self.smoke_test = smoke_test
        self.clock = clock

    def reconcile(self, namespace: str, name: str) -> ServeResult:
        obj = self.kube.get("ModelServe", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return ServeResult()  # garbage collection removes the children
        return _Pass(self, obj).run()


def _deployment_complete(dep: dict[str, Any] | None, replicas: int) -> tuple[bool, str]:
    """(complete, words): the Deployment observed its latest spec and every pod is updated and available."""
    if dep is None:
        return False, "the Deployment does not exist yet"
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


class _Pass:
    def __init__(self, rec: ModelServeReconciler, obj: dict[str, Any]) -> None:
        self.rec = rec
        self.kube = rec.kube
        self.opts = rec.opts
        self.obj = obj
        self.meta = obj["metadata"]
        self.ns, self.name, self.uid = self.meta["namespace"], self.meta["name"], self.meta["uid"]
        self.gen = int(self.meta.get("generation") or 1)
        self.now = rec.clock()
        old = obj.get("status") or {}
        self.old = {k: old.get(k) for k in OWN_STATUS_FIELDS if old.get(k) is not None}
        self.st: dict[str, Any] = {k: v for k, v in self.old.items() if k not in ("conditions", "phase")}
        self.conds = load_conditions(old, CONDITION_TYPES)
        self.old_conds = {t: dict(c) for t, c in self.conds.items()}
        self.result = ServeResult()
        self.phase: str = "Pending"
        self.events: list[tuple[str, str, str]] = []

    # ---- helpers ----------------------------------------------------------------------------

    def set(self, type_: str, status: bool, reason: str, message: str) -> None:
        set_condition(self.conds, type_, status, reason, message, generation=self.gen, now=self.now)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def after(self, seconds: float) -> None:
        current = self.result.requeue_after
        self.result.requeue_after = seconds if current is None else min(current, seconds)

    def apply_if_changed(self, desired: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any] | None:
        """Server-side apply DESIRED unless LIVE was applied with the same content (no write then)."""
        desired = with_hash(desired)
        if live is not None and applied_hash(live) == applied_hash(desired):
            return live
        return self.kube.apply(desired)

    # ---- the pass ---------------------------------------------------------------------------

    def run(self) -> ServeResult:
        try:
            self.converge()
        finally:
            self.write_status()
        return self.result

    def converge(self) -> None:
        doc = {k: v for k, v in self.obj.items() if k != "status"}
        validated = validate_document(doc)
        if not validated.ok:
            message = "; ".join(str(p) for p in validated.problems)
            self.set("Ready", False, "InvalidSpec", f"the spec is invalid, fix it: {message}")
            self.set("Progressing", False, "InvalidSpec", "nothing rolls out until the spec is fixed")
            self.phase = "Failed"
            return
        ms: ModelServe = validated.obj  # type: ignore[assignment]
        self.ms = ms
        self.st["endpoint"] = r.endpoint(ms)
        self.ensure_service_and_pdb(ms)

        jobs = {ref: self.kube.get("FineTuneJob", self.ns, ref) for ref in r.referenced_jobs(ms)}
        self.jobs = jobs
        res = r.resolve_sources(ms, jobs)
        dep = self.kube.get("Deployment", self.ns, r.deployment_name(ms))
        self.observe_replicas(dep)
        if not res.ok:
            self.cannot_serve(res, dep)
            return

        image = ms.spec.image or self.opts.tgi_image
        desired = r.revision(ms, res, image)
        template = r.render_pod_template(
            ms, res, image=image, trainer_image=self.opts.trainer_image, revision_hash_=desired.hash or ""
        )
        annotations = dict(((dep or {}).get("metadata") or {}).get("annotations") or {})
        failed = annotations.get(r.ANNOTATION_FAILED_REVISION)
        current = (self.st.get("revision") or {}).get("hash")
        last = dict(self.st.get("lastRollout") or {})

        self.template = template
        if current != desired.hash and not (desired.hash == failed and dep is not None):
            self.start_rollout(ms, dep, template, desired.to_dict(), annotations, last)
            return
        if current == desired.hash:
            # Keep the Deployment as rendered (replicas, placement, ...), our annotations included.
            rendered = r.render_deployment(ms, self.uid, template, annotations=_ours(annotations))
            dep = self.apply_if_changed(rendered, dep)
            self.observe_replicas(dep)
        if desired.hash == failed:
            self.stay_after_failure(ms, dep, desired.hash or "")
        elif last.get("result") in ("succeeded", "rolled-back"):
            self.steady(ms, dep)
        else:
            self.progress(ms, dep, desired.hash or "")

    # ---- pieces ----------------------------------------------------------------------------

    def ensure_service_and_pdb(self, ms: ModelServe) -> None:
        svc = self.kube.get("Service", self.ns, r.service_name(ms))
        self.apply_if_changed(r.render_service(ms, self.uid), svc)
        pdb = self.kube.get("PodDisruptionBudget", self.ns, r.pdb_name(ms))
        if r.wants_pdb(ms):
            self.apply_if_changed(r.render_pdb(ms, self.uid), pdb)
        elif pdb is not None and any(
            o.get("uid") == self.uid for o in pdb["metadata"].get("ownerReferences") or []
        ):
            self.kube.delete("PodDisruptionBudget", self.ns, r.pdb_name(ms), uid=pdb["metadata"]["uid"])

    def observe_replicas(self, dep: dict[str, Any] | None) -> None:
        st = (dep or {}).get("status") or {}
        self.st["replicas"] = int(st.get("replicas") or 0)
        self.st["readyReplicas"] = int(st.get("readyReplicas") or 0)

    def cannot_serve(self, res: r.Resolution, dep: dict[str, Any] | None) -> None:
        serving = dep is not None and (self.st.get("revision") or {}).get("hash")
        reason, message = res.reason or "WaitingForResult", res.message
        self.set("Ready", False, reason, message)
        self.set("Progressing", False, reason, "no rollout until this is resolved")
        if serving:
            self.set("Degraded", True, reason, f"still serving revision {serving}; {message}")
            self.phase = "Degraded"
        else:
            self.set("Degraded", False, "NoRevision", "nothing is served yet")
            self.phase = "Failed" if reason == r.REASON_UNSUPPORTED else "Pending"
        if reason == r.REASON_UNSUPPORTED:
            self.event("Warning", reason, message)

    def start_rollout(
        self, ms, dep, template, desired: dict[str, Any], annotations: dict[str, str], last
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
        dep = self.apply_if_changed(r.render_deployment(ms, self.uid, template, annotations=ours), dep)
        self.observe_replicas(dep)
        self.event("Normal", "RollingOut", self.st["lastRollout"]["message"])
        self.progress(ms, dep, desired["hash"])

    def progress(self, ms: ModelServe, dep: dict[str, Any] | None, rev: str) -> None:
        """A rollout of REV is under way: wait for the Deployment, then smoke-test."""
        self.phase = "Progressing"
        self.set("Degraded", False, "RollingOut", "")
        exceeded = _deadline_exceeded(dep)
        if ms.spec.replicas == 0:
            self.set("Ready", False, "ScaledToZero", "spec.replicas is 0: nothing serves, nothing to test")
            self.set("Progressing", False, "ScaledToZero", f"revision {rev} is applied with 0 replicas")
            self.phase = "Pending"
            return
        complete, words = _deployment_complete(dep, ms.spec.replicas)
        if not complete:
            if exceeded:
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
            self.after(self.opts.requeue_seconds)
            return
        test = ms.spec.rollout.smoke_test
        if not test.enabled:
            self.succeed(ms, rev, "RolloutComplete", f"revision {rev} is available (smoke test disabled)")
            return
        self.set("Progressing", True, "SmokeTesting", f"revision {rev} is available; running the smoke test")
        adapters = [a.name for a in ms.spec.adapters]
        url = r.endpoint(ms, self.opts.endpoint_override)
        try:
            result = self.rec.smoke_test(
                url, prompt=test.prompt, max_new_tokens=test.max_new_tokens, expect=test.expect,
                adapters=adapters, timeout=self.opts.smoke_timeout_seconds, attempts=self.opts.smoke_attempts,
            )  # fmt: skip
        except SmokeTestUnavailable as error:
            self.set("Ready", False, "SmokeTestUnavailable", str(error))
            self.set(
                "Progressing",
                True,
                "SmokeTestUnavailable",
                f"revision {rev} is available but untested: {error}",
            )
            self.result.problem = True
            return
        self.result.smoke = result
        if result.ok:
            self.succeed(ms, rev, "SmokeTestPassed", f"revision {rev} answers: {result.message}")
        else:
            self.fail(ms, dep, rev, "SmokeTestFailed", result.message)

    def succeed(self, ms: ModelServe, rev: str, reason: str, message: str) -> None:
        self.set("Ready", True, reason, message)
        self.set("Progressing", False, "RolloutComplete", f"revision {rev} is rolled out")
        self.set("Degraded", False, "RolloutComplete", "")
        self.phase = "Ready"
        last = dict(self.st.get("lastRollout") or {})
        last.update(finishedAt=fmt_time(self.now), result="succeeded", message=message)
        self.st["lastRollout"] = last
        self.result.rollout = "succeeded"
        self.result.result_to_ready_seconds = self._since_result(last)
        self.event("Normal", reason, message)

    def _since_result(self, last: dict[str, Any]) -> float | None:
        """From the newest referenced result (its job's completionTime), else the rollout's start, to now."""
        stamps = [
            parse_time(((j or {}).get("status") or {}).get("completionTime")) for j in self.jobs.values()
        ]
        stamps = [t for t in stamps if t is not None]
        start = max(stamps) if stamps else parse_time(last.get("startedAt"))
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
            dep = self.apply_if_changed(
                r.render_deployment(ms, self.uid, template, annotations=annotations), dep
            )
            self.observe_replicas(dep)
            failed_rev = self.st.get("revision")
            self.st["revision"], self.st["previousRevision"] = previous, failed_rev
            words = (
                f"revision {rev} failed ({reason}): {message}; rolled back to revision {previous.get('hash')}"
            )
            self.set("Degraded", True, "RolledBack", words)
            self.set("Progressing", False, "RolledBack", f"rolled back to revision {previous.get('hash')}")
            self.set("Ready", True, "RolledBack", f"serving the previous revision {previous.get('hash')}")
            self.phase = "Degraded"
            last.update(result="rolled-back", message=words)
            self.result.rollout = "rolled-back"
            self.event("Warning", "RolledBack", words)
        else:
            why = ("autoRollback is off" if not ms.spec.rollout.auto_rollback
                   else "there is no previous revision to roll back to")  # fmt: skip
            words = (f"revision {rev} failed ({reason}): {message}; {why}; fix the model or the spec "
                     "(a new result or spec change rolls out again)")  # fmt: skip
            self.apply_if_changed(
                r.render_deployment(ms, self.uid, self.template, annotations=annotations), dep
            )
            self.set("Ready", False, reason, words)
            self.set("Progressing", False, reason, f"revision {rev} failed")
            self.set("Degraded", True, reason, words)
            self.phase = "Failed"
            last.update(result="failed", message=words)
            self.result.rollout = "failed"
            self.event("Warning", reason, words)
        self.st["lastRollout"] = last

    def stay_after_failure(self, ms: ModelServe, dep: dict[str, Any], rev: str) -> None:
        """The wanted revision failed before: keep what is served and what status says about it."""
        last = self.st.get("lastRollout") or {}
        if last.get("result") == "rolled-back":
            self.phase = "Degraded"
            self.steady(ms, dep, degraded=True)
        else:
            self.phase = "Failed"
        for type_ in CONDITION_TYPES:
            self.conds.setdefault(type_, {"type": type_, "status": "Unknown", "observedGeneration": self.gen,
                                          "reason": "FailedRevision", "message": f"revision {rev} failed",
                                          "lastTransitionTime": fmt_time(self.now)})  # fmt: skip
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

    # ---- status -----------------------------------------------------------------------------

    def write_status(self) -> None:
        for type_ in CONDITION_TYPES:
            if type_ not in self.conds:
                self.set(type_, False, "Pending", "")
        new = {
            **self.st,
            "phase": self.phase,
            "observedGeneration": self.gen,
            "conditions": [self.conds[t] for t in CONDITION_TYPES],
        }
        self.result.phase = self.phase
        for type_, reason, message in self.events:
            self.kube.event(self.obj, type_, reason, message)
        new = _strip_none(new)
        if new == self.old:
            return
        patch = _merge_patch(self.old, new)
        try:
            self.kube.patch("ModelServe", self.ns, self.name, {"status": patch}, subresource="status")
        except ApiException as exc:
            if exc.status != 404:
                raise


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    return value


def _merge_patch(old: Any, new: Any) -> Any:
    """A JSON merge patch (RFC 7396) from OLD to NEW: maps merge, so keys that went away become null."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: None for k in old if k not in new}
    for k, v in new.items():
        if old.get(k) != v:
            patch[k] = _merge_patch(old.get(k), v)
    return patch


def _ours(annotations: dict[str, str]) -> dict[str, str]:
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


__all__ = ["CONTROLLER", "ModelServeReconciler", "ServeOptions", "ServeResult"]
