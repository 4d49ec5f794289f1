"""kopf glue for ModelServe (imported by kubetune.handlers): watch ModelServes, the Deployments they own,
and the FineTuneJobs they reference, and put the ModelServe's key into its work queue. The reconcile
(kubetune.reconcile.modelserve) does all the work.

A FineTuneJob event wakes the ModelServes that reference it (an in-memory index kept from ModelServe
events) only when what a ModelServe reads of it changed: its result, phase, or existence. Trainer
progress updates do not wake anything.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import kopf

from kubetune import handlers
from kubetune import metrics_modelserve as serve_metrics
from kubetune.reconcile.modelserve import CONTROLLER, ModelServeReconciler, ServeOptions
from kubetune.reconcile.queue import Key, Outcome, WorkQueue
from kubetune.reconcile.runtime import measured, outcome, work_queue
from kubetune.render.common import MODELSERVE_LABEL
from kubetune.render.modelserve import referenced_jobs
from kubetune.settings import Settings

log = logging.getLogger("kubetune.handlers.modelserve")


class ReferenceIndex:
    """(namespace, FineTuneJob name) -> names of the ModelServes that reference it."""

    def __init__(self) -> None:
        self._by_ms: dict[Key, set[str]] = {}
        self._seen: dict[Key, str] = {}  # FineTuneJob key -> what ModelServes read of it, as JSON
        self._lock = threading.Lock()

    def update(self, namespace: str, name: str, jobs: list[str] | None) -> None:
        with self._lock:
            if jobs:
                self._by_ms[(namespace, name)] = set(jobs)
            else:
                self._by_ms.pop((namespace, name), None)

    def referencing(self, namespace: str, job: str) -> list[str]:
        with self._lock:
            return sorted(ms for (ns, ms), jobs in self._by_ms.items() if ns == namespace and job in jobs)

    def changed(self, namespace: str, job: str, body: dict[str, Any] | None) -> bool:
        """Whether what a ModelServe reads of the job (result, phase, existence, uid) changed."""
        status = (body or {}).get("status") or {}
        seen = json.dumps(
            None
            if body is None
            else [status.get("result"), status.get("phase"), (body.get("metadata") or {}).get("uid")],
            sort_keys=True,
            default=str,
        )
        with self._lock:
            before = self._seen.get((namespace, job))
            if body is None:
                self._seen.pop((namespace, job), None)
            else:
                self._seen[(namespace, job)] = seen
        return before != seen


INDEX = ReferenceIndex()


def modelserve_controller(rt: handlers.Runtime, settings: Settings) -> WorkQueue:
    opts = ServeOptions(
        tgi_image=settings.tgi_image,
        vllm_image=settings.vllm_image,
        trainer_image=settings.trainer_image,
        endpoint_override=settings.serve_endpoint_override,
        pod_address_override=settings.serve_pod_address_override,
        requeue_seconds=settings.requeue_seconds,
    )
    reconciler = ModelServeReconciler(rt.kube, opts)

    def reconcile(key: Key) -> Outcome:
        result = measured(CONTROLLER, lambda: reconciler.reconcile(*key))
        if result.phase is None:
            queue.forget(key)
        if result.smoke is not None:
            serve_metrics.SMOKE_TEST_SECONDS.labels("passed" if result.smoke.ok else "failed").observe(
                result.smoke.seconds
            )
        if result.rollout is not None:
            serve_metrics.ROLLOUTS.labels(result.rollout).inc()
        if result.result_to_ready_seconds is not None:
            serve_metrics.RESULT_TO_READY.observe(result.result_to_ready_seconds)
        return outcome(CONTROLLER, result.requeue_after, result.problem)

    queue = work_queue(CONTROLLER, reconcile, settings)
    return queue


def _enqueue(namespace: str | None, name: str | None) -> None:
    rt = handlers._runtime
    if rt is None or CONTROLLER not in rt.queues or not namespace or not name:
        return
    queue = rt.queues[CONTROLLER]
    queue.known.add((namespace, name))
    queue.add((namespace, name))


@kopf.on.startup(id="modelserve-startup")
async def modelserve_startup(**_: Any) -> None:
    rt = handlers._runtime
    if rt is None:
        raise kopf.TemporaryError("waiting for the operator runtime", delay=0.2)
    if CONTROLLER not in rt.queues:
        queue = modelserve_controller(rt, rt.settings)
        rt.queues[CONTROLLER] = queue
        await queue.start()


@kopf.on.event("kubetune.io", "v1alpha1", "modelserves", id="modelserve-event")
async def modelserve_event(
    type: str | None, namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> None:
    if namespace and name:
        INDEX.update(namespace, name, None if type == "DELETED" else referenced_jobs(dict(body)))
    _enqueue(namespace, name)


@kopf.on.event(
    "apps", "v1", "deployments", labels={MODELSERVE_LABEL: kopf.PRESENT}, id="modelserve-deployment-event"
)
async def modelserve_deployment_event(namespace: str | None, meta: kopf.Meta, **_: Any) -> None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "ModelServe" and ref.get("controller"):
            _enqueue(namespace, ref.get("name"))


@kopf.on.event("kubetune.io", "v1alpha1", "finetunejobs", id="modelserve-finetunejob-event")
async def modelserve_finetunejob_event(
    type: str | None, namespace: str | None, name: str | None, body: kopf.Body, **_: Any
) -> None:
    if not namespace or not name:
        return
    if INDEX.changed(namespace, name, None if type == "DELETED" else dict(body)):
        for ms in INDEX.referencing(namespace, name):
            _enqueue(namespace, ms)
