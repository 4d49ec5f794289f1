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
from kubetune.reconcile.client import LIST_PAGE_SIZE
from kubetune.reconcile.credentials import bearer_token, load_configuration
from kubetune.reconcile.queue import event_priority
from kubetune.render.common import FINETUNEJOB_LABEL
from kubetune.settings import load_settings

log = logging.getLogger("kubetune.handlers")

# Chains: which FineTuneJobs refer to which, and what they read of each other, from the watch events (used
# on the event loop only).
_dependents = Dependents()


# ------------------------------------------------------------------------------------------------
# kopf's logs


class ThrottledRetryLevel(logging.Filter):
    """kopf's log of a 429 it retries, as a WARNING rather than an ERROR (a handler filter: sees every logger).

    kopf (``kopf/_cogs/clients/api.py``) retries a 429 with its ``networking.error_backoffs``, waiting at
    least the server's Retry-After, and logs each retry at ERROR ("Request attempt #1/9 failed; will
    retry"). A throttled operator is doing what the cluster's administrator asked, so a burst would fill the
    log with ERROR lines that need nobody's attention. Only those records are lowered: kopf giving up
    ("escalating") and every other error stay ERRORs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.name.startswith("kopf."):
            message = record.getMessage()
            if "will retry" in message and "APITooManyRequestsError" in message:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def lower_throttled_retries(root: logging.Logger | None = None) -> None:
    """Install ThrottledRetryLevel on the handlers of ROOT (default: the root logger), once."""
    for handler in (root or logging.getLogger()).handlers:
        if not any(isinstance(f, ThrottledRetryLevel) for f in handler.filters):
            handler.addFilter(ThrottledRetryLevel())


# ------------------------------------------------------------------------------------------------
# kopf's activities


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
    """kopf's settings for this operator (called by the startup handler). Its progress storage is left
    alone and its diff base keeps nothing (NoDiffBase): both serve change-detecting handlers
    (create/update/resume), and this operator has only event handlers, which store nothing on the object."""
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
    # for. 0.5 s still left ~20 MiB more after a restart among 1,100 FineTuneJobs than 0.1 s (kopf lists a
    # page of 100 in well under half a second: about a thousand bodies were alive at once;
    # hack/bench_operator_rss.py, docs/benchmarks.md "Operator RSS"). Not 0: kopf's wait for the next event
    # would then time out before its queue could hand one over.
    settings.queueing.idle_timeout = 0.1
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 1.0
    # kopf's initial LISTs come in pages it processes one at a time (it keeps one page in memory), so a
    # restart among thousands of objects does not hold every object's JSON at once.
    settings.watching.chunk_size = LIST_PAGE_SIZE
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


# ------------------------------------------------------------------------------------------------
# Events -> the watch index (reconcile/index.py) and keys. Every handler keeps the event's object in the index
# before it queues a key, so a reconcile never sees less than what queued it (the runtime primed the index
# with a list of every watched kind before kopf started: see runtime.prime_index).


@kopf.on.event("kubetune.io", "v1alpha1", "finetunejobs", id="finetunejob-event")
async def finetunejob_event(
    namespace: str | None, name: str | None, body: kopf.Body, type: str | None = None, **_: Any
) -> None:
    runtime.object_event(runtime.FINETUNEJOB, "FineTuneJob", body, type)
    # Chains: a change of what the jobs that start from this one (or use it as a reward model) read of it (its
    # existence, spec, phase, result) may let them go on, or show a cycle.
    if namespace and name:
        current = None if type == "DELETED" else dict(body)
        _dependents.note(namespace, name, current)
        for dependent in _dependents.woken(namespace, name, current):
            runtime.enqueue(runtime.FINETUNEJOB, namespace, dependent, event_priority(type))


@kopf.on.event("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="trainer-job-event")
async def trainer_job_event(body: kopf.Body, type: str | None = None, **_: Any) -> None:
    runtime.child_event(runtime.FINETUNEJOB, "Job", "FineTuneJob", body, type)


@kopf.on.event("", "v1", "pods", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="trainer-pod-event")
async def trainer_pod_event(
    namespace: str | None, meta: kopf.Meta, body: kopf.Body, type: str | None = None, **_: Any
) -> None:
    if not runtime.observed("Pod", body, type) and type is None:
        return  # a listing's copy of what the index held already (runtime.child_event)
    # The label value is cut for long names; the annotation keeps the whole name.
    owner = (meta.get("annotations") or {}).get(FINETUNEJOB_LABEL) or (meta.get("labels") or {}).get(
        FINETUNEJOB_LABEL
    )
    runtime.enqueue(runtime.FINETUNEJOB, namespace, owner, event_priority(type))
