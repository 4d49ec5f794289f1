"""The operator's runtime: builds both controllers (FineTuneJob and ModelServe) at once from one settings
object: one Kubernetes client, one work queue per kind, the metrics around each reconcile.

The kopf handlers (kubetune.handlers, kubetune.handlers_modelserve) start it, enqueue keys into it and
stop it; nothing here imports them. Import direction: api <- render <- reconcile <- runtime <- handlers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubetune import metrics
from kubetune import metrics_modelserve as serve_metrics
from kubetune.api.v1alpha1 import API_VERSION
from kubetune.reconcile.client import ApiException, Kube
from kubetune.reconcile.finetunejob import CONTROLLER as FINETUNEJOB
from kubetune.reconcile.finetunejob import FineTuneJobReconciler
from kubetune.reconcile.index import WatchIndex, is_glob, match_namespace
from kubetune.reconcile.modelserve import CONTROLLER as MODELSERVE
from kubetune.reconcile.modelserve import ModelServeReconciler, ServeOptions
from kubetune.reconcile.own_writes import OwnWrites
from kubetune.reconcile.queue import NORMAL, Key, Outcome, WorkQueue, event_priority
from kubetune.reconcile.writes import Children, Expiring, Writer
from kubetune.render.common import FINETUNEJOB_LABEL, MODELSERVE_LABEL
from kubetune.render.finetunejob import RenderOptions
from kubetune.settings import Settings

log = logging.getLogger("kubetune.runtime")
T = TypeVar("T")

__all__ = [
    "FINETUNEJOB",
    "IN_FLIGHT",
    "MODELSERVE",
    "WATCHED",
    "Runtime",
    "build_runtime",
    "caused_by_us",
    "child_event",
    "current",
    "enqueue",
    "object_event",
    "observed",
    "REMEMBERED",
    "prime_index",
    "start",
    "stop",
]


@dataclass
class Runtime:
    settings: Settings
    kube: Kube
    writer: Writer
    queues: dict[str, WorkQueue] = field(default_factory=dict)

    @property
    def index(self) -> WatchIndex:
        """The objects the watches delivered (both controllers read them from here)."""
        return self.writer.index

    @property
    def own_writes(self) -> OwnWrites:
        """Versions the reconciles' own writes made (their events queue nothing)."""
        return self.writer.own_writes

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


class InFlight:
    """The reconciles running now, in any thread: a leader that stops waits for them before it lets go of
    its lease (``drain``), so that it never writes next to its successor."""

    def __init__(self) -> None:
        self._running = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._running += 1

    def __exit__(self, *_: object) -> None:
        with self._idle:
            self._running -= 1
            if not self._running:
                self._idle.notify_all()

    @property
    def running(self) -> int:
        return self._running

    def drain(self, timeout: float) -> bool:
        """Wait up to TIMEOUT seconds until no reconcile runs; whether none does."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)


IN_FLIGHT = InFlight()


def measured(controller: str, reconcile_once: Callable[[], T]) -> T:
    """Run one reconcile, timing it and counting its errors the way controller-runtime does."""
    started = time.perf_counter()
    try:
        with IN_FLIGHT:
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
    kube: Kube, settings: Settings, writer: Writer, writers: Executor | None = None
) -> WorkQueue:
    opts = RenderOptions(
        trainer_image=settings.trainer_image,
        image_pull_policy=settings.trainer_image_pull_policy,
        termination_grace_seconds=settings.termination_grace_seconds,
        oci_plain_http=tuple(settings.oci_plain_http_registries),
    )
    reconciler = FineTuneJobReconciler(
        kube, opts, writer=writer, signatures=Expiring(settings.resync_seconds), writers=writers
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
        return outcome(FINETUNEJOB, result.requeue_after, result.problem, gone=result.gone)

    return work_queue(FINETUNEJOB, reconcile, settings)


def modelserve_controller(kube: Kube, settings: Settings, writer: Writer) -> WorkQueue:
    opts = ServeOptions(
        tgi_image=settings.tgi_image,
        vllm_image=settings.vllm_image,
        trainer_image=settings.trainer_image,
        oci_plain_http=tuple(settings.oci_plain_http_registries),
        endpoint_override=settings.serve_endpoint_override,
        pod_address_override=settings.serve_pod_address_override,
        requeue_seconds=settings.requeue_seconds,
    )
    reconciler = ModelServeReconciler(kube, opts, writer=writer)

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
        return outcome(MODELSERVE, result.requeue_after, result.problem, gone=result.gone)

    return work_queue(MODELSERVE, reconcile, settings)


def build_runtime(settings: Settings, kube: Kube | None = None) -> Runtime:
    """The client (credentials as kubectl finds them, unless KUBE is given) and both controllers."""
    if kube is None:
        kube = Kube.from_environment(settings.field_manager, pool_size=max(16, settings.workers * 4))
    kube.on_write = lambda verb, kind: metrics.API_WRITES.labels(verb, kind).inc()
    kube.on_read = lambda verb, kind: metrics.API_READS.labels(verb, kind).inc()
    # One write path for both controllers: one index of what the watches deliver, one record of the own
    # writes, one Event recorder, one memory of the unwatched children.
    writer = Writer(kube, children=Children(max_age=settings.resync_seconds, manager=settings.field_manager))
    rt = Runtime(settings=settings, kube=kube, writer=writer)
    # A first reconcile applies its static children in waves, each wave's at once (reconcile/finetunejob.py:
    # execute, static_waves): up to four requests per reconcile; with every worker busy (a burst) the API
    # server is the bottleneck anyway.
    # Not shut down on stop: reconciles still running then (manager.drain_reconciles waits for them) still
    # apply through it; its idle threads end with the process.
    writers = ThreadPoolExecutor(settings.workers * 2, thread_name_prefix="apply-finetunejob")
    rt.queues[FINETUNEJOB] = finetunejob_controller(kube, settings, writer, writers)
    rt.queues[MODELSERVE] = modelserve_controller(kube, settings, writer)
    return rt


# ---------------------------------------------------------------------------------------------------
# The process's runtime: started by the operator's startup handler, fed by the watch handlers.

_current: Runtime | None = None


def current() -> Runtime | None:
    """The running runtime (None before startup and after cleanup)."""
    return _current


# What kopf's handlers watch (kubetune.handlers, kubetune.handlers_modelserve): kind, API version, the label
# every watched object of the kind carries (None: all of them).
WATCHED = (
    ("FineTuneJob", API_VERSION, None),
    ("ModelServe", API_VERSION, None),
    ("Job", "batch/v1", FINETUNEJOB_LABEL),
    ("Pod", "v1", FINETUNEJOB_LABEL),
    ("Deployment", "apps/v1", MODELSERVE_LABEL),
)


def watched_namespaces(kube: Kube, patterns: list[str]) -> list[str | None]:
    """The namespaces kopf watches for PATTERNS (None: every namespace, one cluster-wide list)."""
    if not patterns:
        return [None]
    if not any(is_glob(p) for p in patterns):
        return list(dict.fromkeys(patterns))
    names = [ns["metadata"]["name"] for ns in kube.list("Namespace", None)]
    return [n for n in names if any(match_namespace(n, p) for p in patterns)]


# The children the reconciles write but kopf does not watch, by the label each carries: remembered
# (reconcile/writes.py: Children) from one list of each kind at startup, so that a restart's resync does not
# read them one by one (4 GETs per FineTuneJob: its ConfigMap, ServiceAccount, Role and RoleBinding).
REMEMBERED = (
    ("ConfigMap", FINETUNEJOB_LABEL),
    ("ServiceAccount", FINETUNEJOB_LABEL),
    ("Role", FINETUNEJOB_LABEL),
    ("RoleBinding", FINETUNEJOB_LABEL),
    ("Service", FINETUNEJOB_LABEL),
    ("Service", MODELSERVE_LABEL),
    ("PodDisruptionBudget", MODELSERVE_LABEL),
)


def prime_index(kube: Kube, index: WatchIndex, patterns: list[str], children: Children | None = None) -> int:
    """Fill the watch index with one list of every watched kind, before kopf starts watching (controller-
    runtime's cache sync): kopf lists them too, but delivers its kinds' objects in no particular order, so a
    restarted operator's first reconcile of a FineTuneJob could otherwise see no Job or pods yet and write a
    status as if there were none. With CHILDREN, also remember every unwatched child (REMEMBERED) from one
    list of each kind. Returns how many objects it put."""
    count = 0
    # Page by page, keeping only what the index keeps: the whole list of a kind (thousands of Jobs with their
    # managed fields) is never alive at once. A list started again (expired continue token) puts objects
    # again, which changes nothing.
    for namespace in watched_namespaces(kube, patterns):
        for kind, api_version, label in WATCHED:
            for page, _ in kube.pages(kind, namespace, label):
                for obj in page:
                    index.put({"apiVersion": api_version, "kind": kind, **obj}, kind)
                count += len(page)
        if children is None:
            continue
        for kind, label in REMEMBERED:
            for page, _ in kube.pages(kind, namespace, label):
                for obj in page:
                    children.remember(kind, obj)
                count += len(page)
    return count


async def start(settings: Settings) -> Runtime:
    """Build the runtime (loading credentials may run an exec plugin: off the event loop), fill its index,
    and start it."""
    global _current
    rt = await asyncio.to_thread(build_runtime, settings)
    try:
        count = await asyncio.to_thread(
            prime_index, rt.kube, rt.index, settings.namespaces, rt.writer.children
        )
        log.info("watch index primed with %d objects", count)
    except ApiException as exc:  # e.g. no permission to list namespaces: kopf's lists fill it
        log.warning(
            "could not list the watched objects before starting (%s); kopf's lists fill the index", exc
        )
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


def observed(kind: str, body: Mapping[str, Any], type_: str | None) -> bool:
    """A watch event's object: kept in the index the reconciles read (removed when it was deleted). False
    when the index held that very version already: nothing the reconciles have not seen."""
    rt = _current
    if rt is None:
        return True
    if type_ == "DELETED":
        meta = body.get("metadata") or {}
        rt.index.remove(kind, meta.get("namespace"), meta.get("name"))
        return True
    return rt.index.put(body, kind)


def object_event(controller: str, kind: str, body: Mapping[str, Any], type_: str | None) -> None:
    """A watch event of a controller's own object (KIND): into the index, and reconcile it, unless the event
    shows exactly what its reconcile's own write made (that reconcile already decided from it)."""
    observed(kind, body, type_)
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if type_ != "DELETED" and caused_by_us(kind, namespace, name, meta.get("resourceVersion")):
        return
    # New work first: a listed object (a restart's listing) whose spec was seen goes behind new work.
    enqueue(controller, namespace, name, event_priority(type_, body))


def child_event(
    controller: str, kind: str, owner_kind: str, body: Mapping[str, Any], type_: str | None
) -> None:
    """A watch event of a child (KIND) of a controller's object (OWNER_KIND, its controller reference): into
    the index, and reconcile the owner, unless the event shows exactly what the owner's reconcile wrote, or is
    a listing's (a restart's) copy of the very version the index held already: the owner's own listing queues
    it, and its reconcile reads the child from the index (a restart then reconciles each object once, not
    once more per child)."""
    fresh = observed(kind, body, type_)
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace")
    if type_ is None and not fresh:
        return
    if type_ != "DELETED" and caused_by_us(kind, namespace, meta.get("name"), meta.get("resourceVersion")):
        return
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == owner_kind and ref.get("controller"):
            enqueue(controller, namespace, ref.get("name"), event_priority(type_))


def enqueue(controller: str, namespace: str | None, name: str | None, priority: int = NORMAL) -> None:
    """Reconcile CONTROLLER's object NAMESPACE/NAME soon (and on every resync), before the keys of a lower
    PRIORITY (reconcile/queue.py: event_priority). Events that come before the runtime started are dropped:
    kopf's initial listing after startup enqueues everything again."""
    rt = _current
    if rt is None or not namespace or not name:
        return
    rt.queues[controller].add((namespace, name), track=True, priority=priority)
