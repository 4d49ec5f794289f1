"""kopf glue of the operator and of FineTuneJobs: log in, start and stop the runtime (both controllers),
and turn watch events on FineTuneJobs and their trainer Jobs and Pods into the owning FineTuneJob's key
in its work queue. The reconcile (kubetune.reconcile) does all the work; no handler here branches on
what happened, writes anything, or registers a deletion handler (so kopf adds no finalizer).

Why ``@kopf.on.event`` for the FineTuneJob rather than create/update/resume handlers: kopf's
change-detecting handlers store a diff base and progress on the object (a write per change, plus
bookkeeping that must stay out of status), while event handlers store nothing. Every event — the
initial listing after a (re)start, an edit, a status patch by the trainer, a deletion — only enqueues
the key; the reconcile reads the world and converges. Timers (deadlines, TTL) and retries with backoff
come from the work queue; a periodic resync re-enqueues every known object.

The ModelServe watches are in kubetune.handlers_modelserve; both modules import kubetune.runtime and
neither imports the other. kubetune.manager loads both and runs kopf.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubetune import metrics, runtime
from kubetune.reconcile.chains import Dependents
from kubetune.reconcile.client import bearer_token, load_configuration, lower_throttled_retries
from kubetune.reconcile.queue import event_priority
from kubetune.render.common import FINETUNEJOB_LABEL
from kubetune.settings import load_settings

log = logging.getLogger("kubetune.handlers")

# Chains: which FineTuneJobs refer to which, from the watch events (used on the event loop only).
_dependents = Dependents()


@kopf.on.login(id="kubetune-login")
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf watches with the credentials the runtime's client uses (kubernetes.config: in-cluster, or the
    kubeconfig with exec plugins, auth-providers, tokens, certificates). kopf calls this again when the
    API server answers 401, which runs an exec plugin again for a fresh credential."""
    cfg = load_configuration()
    token = bearer_token(cfg)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme="Bearer" if token else None,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        proxy_url=cfg.proxy,
        trust_env=True,  # $HTTPS_PROXY / $NO_PROXY, as the client honours them
    )


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff-base storage that keeps nothing. kopf builds every event's "essence" (a deep copy of the whole
    body, managedFields included) to tell changes apart for create/update/resume handlers, of which kubetune
    has none (event handlers only: the reconcile reads the world; tests/unit/test_kopf_settings.py checks
    it). The copy was never read, and it was half of the event loop's work while a restart lists every
    object: 2.3 ms per event of the 3 ms kopf spent on detection (docs/benchmarks.md, "New work first")."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator (called by the startup handler)."""
    # kopf's own bookkeeping goes to annotations (never into the user's status), and it only logs.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.io")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.posting.enabled = False  # the reconcile writes its own Events
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    # kopf's per-object worker holds the last event it handled (the object's whole body) until no event came
    # for idle_timeout (kopf's default: 5 s). A (re)start lists every FineTuneJob and trainer Job within a
    # few seconds, so with the default all their bodies were alive at once (about 60 MiB of small objects at
    # 1,100 FineTuneJobs); Python's allocator cannot return an arena while any object in it lives, so RSS
    # stayed ~60 MiB higher after the restart than before it (docs/benchmarks.md, "Memory after a
    # restart"). The handlers only enqueue a key and kopf makes no patches, so a worker has nothing to wait
    # for; events of one object within half a second still share a worker.
    settings.queueing.idle_timeout = 0.5
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 1.0
    # kopf's initial LISTs come in pages it processes one at a time (it keeps one page in memory), so a
    # restart among thousands of objects does not hold every object's JSON at once.
    settings.watching.chunk_size = 100
    settings.networking.request_timeout = 60


@kopf.on.startup(id="kubetune-startup")
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # The settings `kubetune operator` was started with (kubetune.manager passes them as kopf's memo).
    cfg = memo.get("settings") or load_settings()
    configure_kopf(settings)
    # kopf retries a 429 (API Priority and Fairness) after Retry-After; it is a WARNING, not an ERROR.
    lower_throttled_retries()
    await runtime.start(cfg)
    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port)
    log.info("kubetune operator started (namespaces: %s)", ", ".join(cfg.namespaces) or "all")


@kopf.on.cleanup(id="kubetune-cleanup")
async def cleanup(**_: Any) -> None:
    await runtime.stop()


@kopf.on.probe(id="queue")
def queue_probe(**_: Any) -> dict[str, Any]:
    rt = runtime.current()
    return {name: q.stats() for name, q in (rt.queues.items() if rt else [])}


@kopf.on.event("kubetune.io", "v1alpha1", "finetunejobs", id="finetunejob-event")
async def finetunejob_event(
    namespace: str | None, name: str | None, body: kopf.Body, type: str | None = None, **_: Any
) -> None:
    # The event of the reconcile's own status write shows what that reconcile decided: nothing to do.
    version = body.get("metadata", {}).get("resourceVersion")
    # New work first: a listed job (a restart's listing, type None) whose spec was seen goes behind new work.
    priority = event_priority(type, body)
    if type == "DELETED" or not runtime.caused_by_us("FineTuneJob", namespace, name, version):
        runtime.enqueue(runtime.FINETUNEJOB, namespace, name, priority)
    # Chains: a change of this job (its result, its phase) may let the jobs that start from it, or use it as
    # a reward model, go on.
    if namespace and name:
        _dependents.note(namespace, name, None if type == "DELETED" else dict(body))
        for dependent in _dependents.of(namespace, name):
            runtime.enqueue(runtime.FINETUNEJOB, namespace, dependent, event_priority(type))


@kopf.on.event("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="trainer-job-event")
async def trainer_job_event(
    namespace: str | None, name: str | None, meta: kopf.Meta, type: str | None = None, **_: Any
) -> None:
    # A Job as the reconcile created or patched it: that reconcile already decided from it.
    if type != "DELETED" and runtime.caused_by_us("Job", namespace, name, meta.get("resourceVersion")):
        return
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "FineTuneJob" and ref.get("controller"):
            runtime.enqueue(runtime.FINETUNEJOB, namespace, ref.get("name"), event_priority(type))


@kopf.on.event("", "v1", "pods", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="trainer-pod-event")
async def trainer_pod_event(
    namespace: str | None, meta: kopf.Meta, type: str | None = None, **_: Any
) -> None:
    # The label value is cut for long names; the annotation keeps the whole name.
    owner = (meta.get("annotations") or {}).get(FINETUNEJOB_LABEL) or (meta.get("labels") or {}).get(
        FINETUNEJOB_LABEL
    )
    runtime.enqueue(runtime.FINETUNEJOB, namespace, owner, event_priority(type))
