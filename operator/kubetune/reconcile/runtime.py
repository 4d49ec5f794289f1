"""The operator's runtime: one API client, one work queue per kind, metrics around each reconcile.
Built once at startup (handlers.py) and shared by the kopf handlers, which only enqueue keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kubetune import metrics
from kubetune.render.finetunejob import RenderOptions
from kubetune.settings import Settings

from .finetunejob import CONTROLLER as FTJ_CONTROLLER
from .finetunejob import AppliedCache, FineTuneJobReconciler
from .kube import Kube, RestClient
from .queue import Key, Outcome, WorkQueue

log = logging.getLogger("kubetune.runtime")
T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    kube: Kube
    queues: dict[str, WorkQueue] = field(default_factory=dict)

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


def outcome(controller: str, requeue_after: float | None, problem: bool) -> Outcome:
    """Count a finished reconcile the way controller-runtime does and tell the queue what is next."""
    result = "requeue" if problem else ("requeue_after" if requeue_after else "success")
    metrics.RECONCILE_TOTAL.labels(controller, result).inc()
    return Outcome(requeue_after=requeue_after, backoff=problem)


def finetunejob_controller(kube: Kube, settings: Settings) -> WorkQueue:
    opts = RenderOptions(
        trainer_image=settings.trainer_image,
        image_pull_policy=settings.trainer_image_pull_policy,
        termination_grace_seconds=settings.termination_grace_seconds,
    )
    reconciler = FineTuneJobReconciler(kube, opts, AppliedCache(max_age=settings.resync_seconds))
    phases = metrics.PhaseTracker()

    def reconcile(key: Key) -> Outcome:
        result = measured(FTJ_CONTROLLER, lambda: reconciler.reconcile(*key))
        phases.set(key, result.phase)
        if result.phase is None:
            queue.forget(key)
        if result.job_created_after is not None:
            metrics.APPLY_TO_JOB.observe(result.job_created_after)
        if result.run_seconds is not None:
            metrics.RUN_DURATION.labels("succeeded" if result.phase == "Succeeded" else "failed").observe(
                result.run_seconds
            )
        return outcome(FTJ_CONTROLLER, result.requeue_after, result.problem)

    queue = work_queue(FTJ_CONTROLLER, reconcile, settings)
    return queue


def build_runtime(settings: Settings) -> Runtime:
    kube = Kube(RestClient.from_environment(pool_size=max(16, settings.workers * 2)), settings.field_manager)
    kube.on_write = lambda verb, kind: metrics.API_WRITES.labels(verb, kind).inc()
    rt = Runtime(settings=settings, kube=kube)
    rt.queues[FTJ_CONTROLLER] = finetunejob_controller(kube, settings)
    return rt
