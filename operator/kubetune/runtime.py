"""The operator's runtime: builds both controllers (FineTuneJob and ModelServe) at once from one settings
object: one Kubernetes client, one work queue per kind, the metrics around each reconcile.

The kopf handlers (kubetune.handlers, kubetune.handlers_modelserve) start it, enqueue keys into it and
stop it; nothing here imports them. Import direction: api <- render <- reconcile <- runtime <- handlers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from kubetune import metrics
from kubetune import metrics_modelserve as serve_metrics
from kubetune.reconcile.client import Kube
from kubetune.reconcile.finetunejob import CONTROLLER as FINETUNEJOB
from kubetune.reconcile.finetunejob import AppliedCache, FineTuneJobReconciler
from kubetune.reconcile.modelserve import CONTROLLER as MODELSERVE
from kubetune.reconcile.modelserve import ModelServeReconciler, ServeOptions
from kubetune.reconcile.own_writes import OwnWrites
from kubetune.reconcile.queue import NORMAL, Key, Outcome, WorkQueue
from kubetune.render.finetunejob import RenderOptions
from kubetune.settings import Settings

log = logging.getLogger("kubetune.runtime")
T = TypeVar("T")

__all__ = [
    "FINETUNEJOB",
    "MODELSERVE",
    "Runtime",
    "build_runtime",
    "caused_by_us",
    "current",
    "enqueue",
    "start",
    "stop",
]


@dataclass
class Runtime:
    settings: Settings
    kube: Kube
    queues: dict[str, WorkQueue] = field(default_factory=dict)
    own_writes: OwnWrites = field(default_factory=OwnWrites)
    """Versions the FineTuneJob reconcile's own writes made (their events queue nothing)."""

    async def start(self) -> None:
        for q in self.queues.values():
            await q.start()

    async def stop(self) -> None:
        for q in self.queues.values():
            await q.stop()


def work_queue(controller: str, reconcile: Callable[[Key], Outcome], settings: Settings) -> WorkQueue:
    """A controller's work queue, sized and paced by the settings."""
    return WorkQueue(
        controller,
        reconcile,
        workers=settings.workers,
        resync_seconds=settings.resync_seconds,
        backoff_base=settings.backoff_base_seconds,
        backoff_max=settings.backoff_max_seconds,
    )


def measured(controller: str, reconcile_once: Callable[[], T]) -> T:
    """Run one reconcile, timing it and counting its errors the way controller-runtime does."""
    started = time.perf_counter()
    try:
        return reconcile_once()
    except Exception:
        metrics.RECONCILE_ERRORS.labels(controller).inc()
        metrics.RECONCILE_TOTAL.labels(controller, "error").inc()
        raise
    finally:
        metrics.RECONCILE_TIME.labels(controller).observe(time.perf_counter() - started)


def outcome(controller: str, requeue_after: float | None, problem: bool, gone: bool) -> Outcome:
    """Count a finished reconcile the way controller-runtime does and tell the queue what is next."""
    result = "requeue" if problem else ("requeue_after" if requeue_after else "success")
    metrics.RECONCILE_TOTAL.labels(controller, result).inc()
    return Outcome(requeue_after=requeue_after, backoff=problem, forget=gone)


def finetunejob_controller(
    kube: Kube, settings: Settings, own_writes: OwnWrites, writers: Executor | None = None
) -> WorkQueue:
    opts = RenderOptions(
        trainer_image=settings.trainer_image,
        image_pull_policy=settings.trainer_image_pull_policy,
        termination_grace_seconds=settings.termination_grace_seconds,
    )
    reconciler = FineTuneJobReconciler(
        kube, opts, AppliedCache(max_age=settings.resync_seconds), own_writes=own_writes, writers=writers
    )
    phases = metrics.PhaseTracker()

    def reconcile(key: Key) -> Outcome:  # runs in a worker thread: touches no queue state
        result = measured(FINETUNEJOB, lambda: reconciler.reconcile(*key))
        log.debug(
            "FineTuneJob %s/%s reconciled: phase %s, again in %s s", *key, result.phase, result.requeue_after
        )
        phases.set(key, result.phase)
        if result.job_created_after is not None:
            metrics.APPLY_TO_JOB.observe(result.job_created_after)
        if result.run_seconds is not None:
            metrics.RUN_DURATION.labels("succeeded" if result.phase == "Succeeded" else "failed").observe(
                result.run_seconds
            )
        return outcome(FINETUNEJOB, result.requeue_after, result.problem, gone=result.phase is None)

    return work_queue(FINETUNEJOB, reconcile, settings)


def modelserve_controller(kube: Kube, settings: Settings) -> WorkQueue:
    opts = ServeOptions(
        tgi_image=settings.tgi_image,
        vllm_image=settings.vllm_image,
        trainer_image=settings.trainer_image,
        endpoint_override=settings.serve_endpoint_override,
        pod_address_override=settings.serve_pod_address_override,
        requeue_seconds=settings.requeue_seconds,
    )
    reconciler = ModelServeReconciler(kube, opts)

    def reconcile(key: Key) -> Outcome:  # runs in a worker thread: touches no queue state
        result = measured(MODELSERVE, lambda: reconciler.reconcile(*key))
        log.debug(
            "ModelServe %s/%s reconciled: phase %s, again in %s s", *key, result.phase, result.requeue_after
        )
        if result.smoke is not None:
            serve_metrics.SMOKE_TEST_SECONDS.labels("passed" if result.smoke.ok else "failed").observe(
                result.smoke.seconds
            )
        if result.rollout is not None:
            serve_metrics.ROLLOUTS.labels(result.rollout).inc()
        if result.result_to_ready_seconds is not None:
            serve_metrics.RESULT_TO_READY.observe(result.result_to_ready_seconds)
        return outcome(MODELSERVE, result.requeue_after, result.problem, gone=result.phase is None)

    return work_queue(MODELSERVE, reconcile, settings)


def build_runtime(settings: Settings, kube: Kube | None = None) -> Runtime:
    """The client (credentials as kubectl finds them, unless KUBE is given) and both controllers."""
    if kube is None:
        kube = Kube.from_environment(settings.field_manager, pool_size=max(16, settings.workers * 4))
    kube.on_write = lambda verb, kind: metrics.API_WRITES.labels(verb, kind).inc()
    rt = Runtime(settings=settings, kube=kube)
    # A first reconcile applies its static children in waves, each wave's at once (reconcile/finetunejob.py:
    # execute, static_waves): up to four requests per reconcile; with every worker busy (a burst) the API
    # server is the bottleneck anyway.
    # Not shut down on stop: reconciles still running then (manager.drain_reconciles waits for them) still
    # apply through it; its idle threads end with the process.
    writers = ThreadPoolExecutor(settings.workers * 2, thread_name_prefix="apply-finetunejob")
    rt.queues[FINETUNEJOB] = finetunejob_controller(kube, settings, rt.own_writes, writers)
    rt.queues[MODELSERVE] = modelserve_controller(kube, settings)
    return rt


# ---------------------------------------------------------------------------------------------------
# The process's runtime: started by the operator's startup handler, fed by the watch handlers.

_current: Runtime | None = None


def current() -> Runtime | None:
    """The running runtime (None before startup and after cleanup)."""
    return _current


async def start(settings: Settings) -> Runtime:
    """Build the runtime (loading credentials may run an exec plugin: off the event loop) and start it."""
    global _current
    rt = await asyncio.to_thread(build_runtime, settings)
    await rt.start()
    _current = rt
    return rt


async def stop() -> None:
    global _current
    rt, _current = _current, None
    if rt is not None:
        await rt.stop()


def caused_by_us(kind: str, namespace: str | None, name: str | None, resource_version: str | None) -> bool:
    """Whether a watch event shows exactly what the operator's own write made (reconcile/own_writes.py)."""
    rt = _current
    return rt is not None and rt.own_writes.caused_by_us(kind, namespace, name, resource_version)


def enqueue(controller: str, namespace: str | None, name: str | None, priority: int = NORMAL) -> None:
    """Reconcile CONTROLLER's object NAMESPACE/NAME soon (and on every resync), before the keys of a lower
    PRIORITY (reconcile/queue.py: event_priority). Events that come before the runtime started are dropped:
    kopf's initial listing after startup enqueues everything again."""
    rt = _current
    if rt is None or not namespace or not name:
        return
    rt.queues[controller].add((namespace, name), track=True, priority=priority)
