"""Prometheus metrics of the ModelServe controller (the reconcile counters are shared, see metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ROLLOUTS = Counter(
    "kubetune_modelserve_rollouts_total",
    "Finished ModelServe rollouts by result (succeeded, rolled-back, failed).",
    ["result"],
)
RESULT_TO_READY = Histogram(
    "kubetune_modelserve_result_to_ready_seconds",
    "From a referenced FineTuneJob's new result (its completionTime; else the rollout's start) to Ready.",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
SMOKE_TEST_SECONDS = Histogram(
    "kubetune_modelserve_smoke_test_seconds",
    "Duration of one smoke test (all generate calls against the TGI or vLLM endpoint), by result (passed, failed).",
    ["result"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
