"""The ModelServe reconcile's shell: observe once, decide (reconcile/modelserve_decision.py), act once
through the one write path (writes.py).

Level-based: every reconcile reads the ModelServe, its children and the FineTuneJobs it references, asks
the pure decision what should be, and makes it so; it never asks what event woke it. The ModelServe, its
Deployment and the FineTuneJobs come from the watch index; its Service and PodDisruptionBudget from what
this process last applied (a GET only when it does not know); the pods of an engine with live adapters
are listed, and asked what they have loaded. Two things a decision asks for are actions whose outcome is
an observation: a smoke test (once a rollout is available) and live adapter changes; the shell carries them
out and decides again with the outcome. A child write the API server refuses is one too: the decision says
it in its conditions, quoting the server (``modelserve_decision.refused``), never a silent retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from kubetune.engines import ENGINES, Engine
from kubetune.engines.smoke import SmokeTestResult
from kubetune.render import modelserve as r
from kubetune.render.common import MODELSERVE_LABEL

from .adapter_admin import apply_change, observe_pod
from .client import Kube
from .clock import now
from .live_adapters import PodState
from .modelserve_decision import (
    OWN_STATUS_FIELDS,
    Decision,
    Observed,
    ServeOptions,
    SmokeOutcome,
    SmokeRequest,
    decide,
)
from .openai_check import run_openai_smoke_test
from .refusals import Refusal
from .smoketest import SmokeTestUnavailable, run_smoke_test
from .sources import referenced_jobs
from .writes import Conflict, NamespaceTerminating, Writer

log = logging.getLogger("kubetune.modelserve")

CONTROLLER = "modelserve"


@dataclass
class ServeResult:
    """What the work queue does next, and what the metrics record."""

    requeue_after: float | None = None
    problem: bool = False
    gone: bool = False
    """The object no longer exists: forget its key."""
    phase: str | None = None
    rollout: str | None = None
    """succeeded, rolled-back or failed when a rollout finished in this pass."""
    result_to_ready_seconds: float | None = None
    smoke: SmokeTestResult | None = None


SmokeTest = Callable[..., SmokeTestResult]


class ModelServeReconciler:
    """One reconcile of one ModelServe; safe for different objects in parallel threads."""

    def __init__(
        self,
        kube: Kube,
        opts: ServeOptions,
        *,
        writer: Writer | None = None,
        smoke_test: SmokeTest = run_smoke_test,
        openai_smoke_test: SmokeTest = run_openai_smoke_test,
        clock=now,
    ):
        self.kube = kube
        self.opts = opts
        self.writer = writer or Writer(kube)
        self.index = self.writer.index
        self.smoke_test = smoke_test
        self.openai_smoke_test = openai_smoke_test
        self.clock = clock

    def reconcile(self, namespace: str, name: str) -> ServeResult:
        result = self._reconcile(namespace, name)
        if result.gone:  # what was remembered of its children is of no use any more
            self.writer.children.forget_owned("ModelServe", namespace, name)
        return result

    def _reconcile(self, namespace: str, name: str) -> ServeResult:
        obj = self.index.get("ModelServe", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return ServeResult(gone=True)  # garbage collection removes the children
        try:
            return self.converge(obj)
        except NamespaceTerminating:
            return ServeResult(gone=True)
        except Conflict as conflict:
            # Decided from a version that is not the latest: read it again and reconcile once more.
            log.debug("%s/%s: %s; reconciling the latest version", namespace, name, conflict)
            gone = self.writer.refresh("ModelServe", namespace, name) is None
            return ServeResult(requeue_after=None if gone else 0.0, gone=gone)

    def converge(self, obj: dict[str, Any]) -> ServeResult:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        observed = self.observe(obj)
        decision = decide(observed, self.opts, self.clock())
        if decision.smoke_request is not None:
            observed = replace(observed, smoke=self.run_smoke_test(decision.smoke_request))
            decision = decide(observed, self.opts, self.clock())
        ops = _engine(obj).live_adapters
        if decision.adapter_changes and decision.adapter_check is not None and ops is not None:
            check = decision.adapter_check
            outcomes = tuple(
                apply_change(change, ops=ops, prompt=check.prompt, max_tokens=check.max_new_tokens,
                             expect=check.expect, timeout=self.opts.smoke_timeout_seconds)
                for change in decision.adapter_changes
            )  # fmt: skip
            for outcome in outcomes:
                if outcome.error:
                    log.warning("%s/%s: %s", namespace, name, outcome.error)
            observed = replace(observed, pods=self.observe_pods(obj), adapter_outcomes=outcomes)
            decision = decide(observed, self.opts, self.clock())
        refusal = self.act(obj, decision)
        if refusal is not None:
            log.warning("%s/%s: the API server refused %s %s: %s", namespace, name, refusal.kind, refusal.name,
                        refusal.message)  # fmt: skip
            decision = decide(replace(observed, refusals=(refusal,)), self.opts, self.clock())
        self.writer.emit(obj, decision.events)
        self.writer.status(obj, decision.status, OWN_STATUS_FIELDS)
        return ServeResult(
            requeue_after=decision.requeue_after,
            problem=decision.problem,
            phase=decision.phase,
            rollout=decision.rollout,
            result_to_ready_seconds=decision.result_to_ready_seconds,
            smoke=decision.smoke,
        )

    def observe(self, obj: dict[str, Any]) -> Observed:
        """Everything the decision reads. Children are read by the names the spec gives them."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        jobs = {ref: self.index.get("FineTuneJob", ns, ref) for ref in referenced_jobs({"spec": spec})}
        may_exist = _reconciled_before(obj)
        return Observed(
            obj=obj,
            deployment=self.index.get("Deployment", ns, r.deployment_name_of(name)),
            service=self.writer.live("Service", ns, r.service_name_of(name), may_exist=may_exist),
            pdb=self.writer.live("PodDisruptionBudget", ns, r.pdb_name_of(name), may_exist=may_exist),
            jobs=jobs,
            pods=self.observe_pods(obj),
        )

    def observe_pods(self, obj: dict[str, Any]) -> tuple[PodState, ...]:
        """Engines with live adapters: the ready pods of the revision status names, and what each has loaded."""
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        rev = (status.get("revision") or {}).get("hash")
        engine = _engine(obj)
        ops = engine.live_adapters
        if ops is None or not spec.get("adapters") or not rev:
            return ()
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        labels = {MODELSERVE_LABEL: r.deployment_name_of(name), r.LABEL_REVISION: rev}
        pods = []
        for pod in sorted(self.kube.list("Pod", ns, labels), key=lambda p: p["metadata"]["name"]):
            if pod["metadata"].get("deletionTimestamp") or not _ready(pod):
                continue
            address = self.pod_address(pod, engine.port)
            pods.append(
                observe_pod(pod["metadata"]["name"], address, self.opts.smoke_timeout_seconds, ops=ops)
            )
        return tuple(pods)

    def pod_address(self, pod: dict[str, Any], port: int) -> str:
        ip = (pod.get("status") or {}).get("podIP") or ""
        template = self.opts.pod_address_override or "http://{ip}:{port}"
        meta = pod["metadata"]
        return template.format(pod=meta["name"], namespace=meta["namespace"], ip=ip, port=port).rstrip("/")

    def run_smoke_test(self, request: SmokeRequest) -> SmokeOutcome:
        """The smoke test in the protocol the engine speaks: OpenAI's (a model list, then completions) or
        TGI's generate API."""
        if ENGINES[request.engine].smoke_protocol == "openai":
            result = self.openai_smoke_test(
                request.endpoint, served_model=request.served_model, prompt=request.prompt,
                max_new_tokens=request.max_new_tokens, expect=request.expect, adapters=list(request.adapters),
                timeout=self.opts.smoke_timeout_seconds, attempts=self.opts.smoke_attempts,
            )  # fmt: skip
            return SmokeOutcome(request.revision, result=result)
        try:
            result = self.smoke_test(
                request.endpoint, prompt=request.prompt, max_new_tokens=request.max_new_tokens,
                expect=request.expect, adapters=list(request.adapters),
                timeout=self.opts.smoke_timeout_seconds, attempts=self.opts.smoke_attempts,
            )  # fmt: skip
        except SmokeTestUnavailable as error:
            return SmokeOutcome(request.revision, unavailable=str(error))
        return SmokeOutcome(request.revision, result=result)

    def act(self, obj: dict[str, Any], decision: Decision) -> Refusal | None:
        """Apply and delete what DECISION says; the first write the API server refuses is returned."""
        ns, uid = obj["metadata"]["namespace"], obj["metadata"].get("uid") or ""
        may_exist = _reconciled_before(obj)
        for child in decision.writes:
            refusal = self.writer.apply(child, owner_uid=uid, may_exist=may_exist)
            if refusal is not None:
                return refusal
        for kind, name, child_uid in decision.deletes:
            refusal = self.writer.delete(kind, ns, name, uid=child_uid)
            if refusal is not None:
                return refusal
        return None


def _reconciled_before(obj: dict[str, Any]) -> bool:
    """Never reconciled: its Service and PDB cannot exist yet (no GET before applying them)."""
    return bool((obj.get("status") or {}).get("observedGeneration"))


def _engine(obj: dict[str, Any]) -> Engine:
    return ENGINES[(obj.get("spec") or {}).get("engine") or "tgi"]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


__all__ = ["CONTROLLER", "ModelServeReconciler", "ServeOptions", "ServeResult"]
