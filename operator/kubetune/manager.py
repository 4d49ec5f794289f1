"""The operator process (``kubetune operator``): load the kopf handlers of both kinds and run kopf.

Like controller-runtime's manager: it owns logging, the liveness endpoint, the watched namespaces and leader
election; the handlers start the runtime (kubetune.runtime) with the settings passed here as kopf's memo.

With leader election (``--leader-elect``, kubetune.leader_election) the process first stands by: it answers
/healthz and serves its metrics, and waits for the Lease. Only the leader runs kopf (watches, handlers,
reconciles). A leader that cannot renew its lease exits at once (exit code 1, like controller-runtime) so
that it never writes next to its successor; on SIGTERM it finishes the reconciles in progress, then
releases the lease so that a standby takes over at its next retry.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import kopf

from kubetune import handlers, handlers_modelserve, metrics, runtime
from kubetune.leader_election import (
    ElectionConfig,
    LeaderElector,
    LeaseLock,
    default_namespace,
    new_identity,
)
from kubetune.reconcile.client import ApiException, api_client
from kubetune.reconcile.credentials import load_configuration
from kubetune.reconcile.throttling import throttled_retries
from kubetune.settings import Settings, load_settings

# The handler modules register themselves with kopf when imported; these names only say so.
HANDLER_MODULES = (handlers, handlers_modelserve)
# How long a leader that got SIGTERM waits for reconciles in progress before it releases the lease.
RECONCILE_DRAIN_SECONDS = 20.0

log = logging.getLogger("kubetune.manager")


def run_operator(
    namespaces: list[str] | None = None,
    standalone: bool = True,
    *,
    liveness_endpoint: str | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> None:
    """Run the operator until interrupted."""
    cfg = settings or load_settings(**{k: v for k, v in overrides.items() if k in Settings.model_fields})
    if namespaces:
        cfg = cfg.model_copy(update={"namespaces": list(namespaces)})
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kopf.activities.probe", "kopf._core.engines.peering"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # urllib3 warns on each of its connection retries (three per request while the API server restarts:
    # thousands of lines); a request that still fails is reported by the reconcile (ApiOutageFilter below).
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    outage = ApiOutageFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(outage)
    if liveness_endpoint is None and cfg.health_port:
        liveness_endpoint = f"http://0.0.0.0:{cfg.health_port}/healthz"
    log.debug("%d objects of the imports frozen for the garbage collector", freeze_imported_objects())
    if cfg.leader_elect:
        run_elected(cfg, standalone, liveness_endpoint)
    else:
        run_kopf(cfg, standalone, liveness_endpoint)


def freeze_imported_objects() -> int:
    """Move every object alive now out of the garbage collector's sight; returns how many. Called once the
    modules are imported and before kopf's event loop exists, so what it freezes lives as long as the
    process: the modules of the kubernetes client (its hundreds of model classes), kopf, pydantic and
    kubetune, about 170,000 objects. Python's full (generation 2) collection walks them all, about 95 ms on
    a 2-core machine, and holds the GIL while it does: those pauses, landing in a reconcile, were the
    slowest apply -> Job figures of the benchmark (docs/benchmarks.md, "The tail of apply -> Job"). Frozen,
    a full collection walks only the objects made since (a few ms). Not later, in kopf's startup handler:
    there it also froze kopf's own runtime objects, and a serving test's operator then sometimes never
    reconciled at all (three runs of four; cause not found). The collection first frees what is garbage
    already, so no garbage is frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run_kopf(cfg: Settings, standalone: bool, liveness_endpoint: str | None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        kopf.run(
            standalone=standalone,
            namespaces=cfg.namespaces,
            clusterwide=not cfg.namespaces,
            liveness_endpoint=liveness_endpoint,
            memo=kopf.Memo(settings=cfg),
        )


def election_config(cfg: Settings) -> ElectionConfig:
    return ElectionConfig(
        name=cfg.leader_election_id,
        namespace=default_namespace(cfg.leader_election_namespace),
        identity=new_identity(),
        lease_duration=cfg.lease_duration_seconds,
        renew_deadline=cfg.renew_deadline_seconds,
        retry_period=cfg.retry_period_seconds,
    )


def run_elected(cfg: Settings, standalone: bool, liveness_endpoint: str | None) -> None:
    """Stand by until this process holds the Lease, then run kopf while renewing it."""
    election = election_config(cfg)
    # One quick retry on a 429: a renew that waits out eight Retry-Afters would run past the renew deadline
    # (the elector's own retry period is the retry).
    lease_client = api_client(
        load_configuration(), pool_size=2, retries=throttled_retries().new(total=1, status=1)
    )
    elector = LeaderElector(LeaseLock(lease_client, election.name, election.namespace), election)
    # Metrics from the start, so a standby reports leader_election_master_status 0; the startup handler then
    # must not bind the port a second time.
    metrics.serve(cfg.metrics_port)
    cfg = cfg.model_copy(update={"metrics_port": 0})

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    standby = StandbyHealth(liveness_endpoint, elector) if liveness_endpoint else None
    try:
        leading = elector.acquire(stop)
    finally:
        if standby is not None:
            standby.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not leading:
        log.info("stopped while standing by")
        return

    def renew() -> None:
        if not elector.keep_leading(renewing):
            # Step down now: reconciles in flight are cut off like a kill -9 (every reconcile is idempotent and
            # level-based), which is safe; writing next to the new leader is not.
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(1)

    renewing = threading.Event()
    renewer = threading.Thread(target=renew, name="leader-election-renew", daemon=True)
    renewer.start()
    try:
        run_kopf(cfg, standalone, liveness_endpoint)
        # kopf stopped its watches and the work queues; reconciles already running finish in their threads.
        drain_reconciles(RECONCILE_DRAIN_SECONDS)
    finally:
        renewing.set()
        renewer.join()
        elector.release()


def drain_reconciles(timeout: float) -> None:
    """Wait (up to TIMEOUT) for the reconciles still running (kubetune.runtime counts them). The work queues
    were stopped with kopf: nothing new starts, a reconcile in progress finishes."""
    running = runtime.IN_FLIGHT.running
    if running:
        log.info("waiting for %d reconciles in progress before releasing the lease", running)
    if not runtime.IN_FLIGHT.drain(timeout):
        log.warning(
            "%d reconciles still running after %.0f s; releasing the lease",
            runtime.IN_FLIGHT.running,
            timeout,
        )


# Answers that mean "the API server is away or overloaded", not "this reconcile is wrong": no answer at all
# (connection refused during a restart), 429 (APF, or storage re-initializing after an etcd restart) and 5xx.
UNAVAILABLE = {0, 429, 500, 502, 503, 504}


def api_unavailable(exc: BaseException | None) -> ApiException | None:
    """The ApiException saying the API server is unavailable, if that is what EXC is."""
    if isinstance(exc, ApiException) and exc.status in UNAVAILABLE:
        return exc
    return None


class ApiOutageFilter(logging.Filter):
    """While the API server is away (a restart, an etcd restart), every queued object's reconcile fails the
    same way and the work queue logs each with a traceback: hundreds of ERROR records for one outage. This
    keeps one WARNING line per WINDOW seconds that says how many failed (each is still counted in
    controller_runtime_reconcile_errors_total and retried with backoff); other errors pass unchanged."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.last: float | None = None
        self.suppressed = 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = api_unavailable(record.exc_info[1] if record.exc_info else None)
        if exc is None:
            return True
        now = self.clock()
        with self.lock:
            if self.last is not None and now - self.last < self.window:
                self.suppressed += 1
                return False
            more, self.suppressed, self.last = self.suppressed, 0, now
        detail = f"{exc.status} {exc.message}" if exc.status else f"no connection: {exc.reason}"
        tail = f"; {more} more like it in the last {self.window:g} s" if more else ""
        original = record.getMessage()
        record.msg = "%s: the API server is unavailable (%s)%s; retrying with backoff"
        record.args = (original, detail, tail)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class StandbyHealth:
    """/healthz of a standby (kopf serves it only once it runs): alive, not leading, who leads."""

    def __init__(self, endpoint: str, elector: LeaderElector) -> None:
        url = urlsplit(endpoint)
        path = url.path or "/healthz"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != path:
                    self.send_error(404)
                    return
                body = json.dumps({"leader": False, "holder": elector.holder}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: quiet
                pass

        self.server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="standby-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
