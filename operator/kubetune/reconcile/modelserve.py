"""The ModelServe reconcile's shell: read, decide (reconcile/modelserve_decision.py), smoke-test, write.

Level-based: every pass reads the ModelServe, its children and the FineTuneJobs it references, asks the
pure decision what should be, and makes it so; it never asks what event woke it. When the decision
needs a smoke test (a rollout became available), the shell runs it (a real generate call through
huggingface_hub's InferenceClient) and decides again with its outcome. A child write the API server
refuses becomes a condition quoting the server (``modelserve_decision.refused``), never a silent retry.
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
from .client import ApiException, Kube
from .clock import now
from .live_adapters import PodState
from .modelserve_decision import (
    Decision,
    Observed,
    ServeOptions,
    SmokeOutcome,
    SmokeRequest,
    decide,
    refused,
    server_message,
)
from .openai_check import run_openai_smoke_test
from .smoketest import SmokeTestUnavailable, run_smoke_test
from .sources import referenced_jobs
from .status import merge_patch

log = logging.getLogger("kubetune.modelserve")

CONTROLLER = "modelserve"


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

    def __init__(
        self,
        kube: Kube,
        opts: ServeOptions,
        *,
        smoke_test: SmokeTest = run_smoke_test,
        openai_smoke_test: SmokeTest = run_openai_smoke_test,
        clock=now,
    ):
        self.kube = kube
        self.opts = opts
        self.smoke_test = smoke_test
        self.openai_smoke_test = openai_smoke_test
        self.clock = clock

    def reconcile(self, namespace: str, name: str) -> ServeResult:
        obj = self.kube.get("ModelServe", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return ServeResult()  # garbage collection removes the children
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
        decision = self.write_children(obj, decision)
        for type_, reason, message in decision.events:
            self.kube.event(obj, type_, reason, message)
        write_status(self.kube, obj, decision)
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
        jobs = {ref: self.kube.get("FineTuneJob", ns, ref) for ref in referenced_jobs({"spec": spec})}
        return Observed(
            obj=obj,
            deployment=self.kube.get("Deployment", ns, r.deployment_name_of(name)),
            service=self.kube.get("Service", ns, r.service_name_of(name)),
            pdb=self.kube.get("PodDisruptionBudget", ns, r.pdb_name_of(name)),
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

    def write_children(self, obj: dict[str, Any], decision: Decision) -> Decision:
        """Apply and delete what DECISION says; a refused write turns the decision into a refusal."""
        ns = obj["metadata"]["namespace"]
        try:
            for child in decision.writes:
                kind, name = child["kind"], child["metadata"]["name"]
                self.kube.apply(child)
            for kind, name, uid in decision.deletes:
                self.kube.delete(kind, ns, name, uid=uid)
        except ApiException as exc:
            if exc.status in (0, 404, 408, 429) or exc.status >= 500:
                raise  # the server or the network failed (or asks to wait), not the request: the queue retries
            message = server_message(exc.body, f"{exc.status} {exc.reason}")
            log.warning(
                "%s/%s: the API server refused %s %s: %s", ns, obj["metadata"]["name"], kind, name, message
            )
            return refused(decision, obj, kind, name, message, self.clock())
        return decision


def _engine(obj: dict[str, Any]) -> Engine:
    return ENGINES[(obj.get("spec") or {}).get("engine") or "tgi"]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def write_status(kube: Kube, obj: dict[str, Any], decision: Decision) -> None:
    """Patch the status subresource from what was read to what DECISION wants (nothing when equal)."""
    if decision.status == decision.old_status:
        return
    patch = merge_patch(decision.old_status, decision.status)
    meta = obj["metadata"]
    try:
        kube.patch("ModelServe", meta["namespace"], meta["name"], {"status": patch}, subresource="status")
    except ApiException as exc:
        if exc.status != 404:
            raise


__all__ = ["CONTROLLER", "ModelServeReconciler", "ServeOptions", "ServeResult"]
