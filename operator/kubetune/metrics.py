"""Prometheus metrics of the operator (names of the reconcile metrics follow controller-runtime's)."""

from __future__ import annotations

import threading
from collections import Counter as _Counter

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_TOTAL = Counter(
    "controller_runtime_reconcile_total",
    "Reconciliations per controller and result (success, error, requeue, requeue_after).",
    ["controller", "result"],
)
RECONCILE_ERRORS = Counter(
    "controller_runtime_reconcile_errors_total", "Reconciliations that raised an error.", ["controller"]
)
RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds",
    "Duration of one reconciliation.",
    ["controller"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2, 5, 10, 30, 60),
)
FINETUNEJOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs known to the operator, by phase.", ["phase"])
APPLY_TO_JOB = Histogram(
    "kubetune_finetunejob_apply_to_job_seconds",
    "From a FineTuneJob's creationTimestamp to its first trainer Job being created.",
    buckets=(0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
RUN_DURATION = Histogram(
    "kubetune_finetunejob_run_duration_seconds",
    "From a run's start to its end, by result (succeeded, failed).",
    ["result"],
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200),
)
API_WRITES = Counter(
    "kubetune_api_writes_total", "Write requests the operator sent to the API server.", ["verb", "kind"]
)
API_READS = Counter(
    "kubetune_api_reads_total",
    "Read requests (get, list) the reconciles sent to the API server (kopf's watches not counted).",
    ["verb", "kind"],
)
QUEUE_DEPTH = Gauge("workqueue_depth", "Keys waiting in a work queue.", ["name"])

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


class PhaseTracker:
    """The phase of every known object, for the by-phase gauge."""

    def __init__(self, gauge: Gauge = FINETUNEJOBS) -> None:
        self.gauge = gauge
        self.phases: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()
        for phase in PHASES:
            gauge.labels(phase=phase).set(0)

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        with self.lock:
            if phase is None:
                self.phases.pop(key, None)
            else:
                self.phases[key] = phase
            counts = _Counter(self.phases.values())
        for p in set(PHASES) | set(counts):
            self.gauge.labels(phase=p).set(counts.get(p, 0))


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on PORT (0: off)."""
    if port:
        start_http_server(port, addr=addr)
