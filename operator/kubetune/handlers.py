"""kopf glue: watch FineTuneJobs and their trainer Jobs and Pods, and put the owning FineTuneJob's key into
the work queue. The reconcile (kubetune.reconcile) does all the work; no handler here branches on what
happened, writes anything, or registers a deletion handler (so kopf adds no finalizer).

Why ``@kopf.on.event`` for the FineTuneJob rather than create/update/resume handlers: kopf's
change-detecting handlers store a diff base and progress on the object (a write per change, plus
bookkeeping that must stay out of status), while event handlers store nothing. Every event — the
initial listing after a (re)start, an edit, a status patch by the trainer, a deletion — only enqueues
the key; the reconcile reads the world and converges. Timers (deadlines, TTL) and retries with backoff
come from the work queue; a periodic resync re-enqueues every known object.

ModelServe: its controller registers its own handlers in ``kubetune.handlers_modelserve`` (imported at
the bottom when present) and its queue in ``Runtime.queues`` (see ``reconcile/runtime.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

if "kubernetes" not in sys.modules and os.environ.get("KUBETUNE_KOPF_CLIENT_LIBRARY") != "1":
    # kopf imports the official client library when it is installed (about 55 MiB of RSS) only to log in
    # through it and to accept its model classes; the operator uses neither (kubetune.reconcile.kube talks
    # to the API itself), so keep it out of the operator process. kopf then logs in with its own
    # kubeconfig / ServiceAccount handlers.
    sys.modules["kubernetes"] = None  # type: ignore[assignment]

import kopf  # noqa: E402

from kubetune import metrics  # noqa: E402
from kubetune.reconcile.chains import Dependents  # noqa: E402
from kubetune.reconcile.finetunejob import CONTROLLER as FTJ  # noqa: E402
from kubetune.reconcile.runtime import Runtime, build_runtime  # noqa: E402
from kubetune.render.common import FINETUNEJOB_LABEL  # noqa: E402
from kubetune.settings import Settings, load_settings  # noqa: E402

log = logging.getLogger("kubetune.handlers")

_settings: Settings | None = None
_runtime: Runtime | None = None
_dependents = Dependents()  # which FineTuneJobs refer to which (chains)


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the operator is not started")
    return _runtime


def _enqueue(kind: str, namespace: str | None, name: str | None) -> None:
    if _runtime is None or not namespace or not name:
        return
    queue = _runtime.queues[kind]
    queue.known.add((namespace, name))
    queue.add((namespace, name))


@kopf.on.startup(id="kubetune-startup")
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    cfg = _settings or load_settings()
    # kopf's own bookkeeping goes to annotations (never into the user's status), and it only logs.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.posting.enabled = False  # the reconcile writes its own Events
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 60
    _runtime = await asyncio.to_thread(build_runtime, cfg)
    await _runtime.start()
    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port)
    log.info("kubetune operator started (namespaces: %s)", ", ".join(cfg.namespaces) or "all")


@kopf.on.cleanup(id="kubetune-cleanup")
async def cleanup(**_: Any) -> None:
    if _runtime is not None:
        await _runtime.stop()


@kopf.on.event("kubetune.io", "v1alpha1", "finetunejobs", id="finetunejob-event")
async def finetunejob_event(
    namespace: str | None, name: str | None, body: kopf.Body, type: str | None = None, **_: Any
) -> None:
    _enqueue(FTJ, namespace, name)
    # chains (rlhf, issue 11): a change of this job (its result, its phase) may let the jobs that start
    # from it, or use it as a reward model, go on.
    if namespace and name:
        _dependents.note(namespace, name, None if type == "DELETED" else dict(body))
        for dependent in _dependents.of(namespace, name):
            _enqueue(FTJ, namespace, dependent)


@kopf.on.event("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="trainer-job-event")
async def trainer_job_event(namespace: str | None, meta: kopf.Meta, **_: Any) -> None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "FineTuneJob" and ref.get("controller"):
            _enqueue(FTJ, namespace, ref.get("name"))


@kopf.on.event("", "v1", "pods", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="trainer-pod-event")
async def trainer_pod_event(namespace: str | None, meta: kopf.Meta, **_: Any) -> None:
    owner = (meta.get("annotations") or {}).get(FINETUNEJOB_LABEL) or (meta.get("labels") or {}).get(
        FINETUNEJOB_LABEL
    )
    _enqueue(FTJ, namespace, owner)


@kopf.on.probe(id="queue")
def queue_probe(**_: Any) -> dict[str, Any]:
    return {name: q.stats() for name, q in (_runtime.queues.items() if _runtime else [])}


def run_operator(
    namespaces: list[str] | None = None,
    standalone: bool = True,
    *,
    liveness_endpoint: str | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> None:
    """Run the operator until interrupted (the `kubetune operator` command)."""
    global _settings
    cfg = settings or load_settings(**{k: v for k, v in overrides.items() if k in Settings.model_fields})
    if namespaces:
        cfg = cfg.model_copy(update={"namespaces": list(namespaces)})
    _settings = cfg
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kopf.activities.probe", "kopf._core.engines.peering"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if liveness_endpoint is None and cfg.health_port:
        liveness_endpoint = f"http://0.0.0.0:{cfg.health_port}/healthz"
    with contextlib.suppress(KeyboardInterrupt):
        kopf.run(
            standalone=standalone,
            namespaces=cfg.namespaces,
            clusterwide=not cfg.namespaces,
            liveness_endpoint=liveness_endpoint,
        )


# Registers the ModelServe controller (it imports this module, so it comes last).
from kubetune import handlers_modelserve  # noqa: E402, F401
