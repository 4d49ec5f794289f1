"""Prometheus counters of the fit check and the evaluation gate (counted from the Events the FineTuneJob
decision emits, once per transition): runs refused because they cannot fit, results that passed or failed
their gate. Per-metric figures stay on the FineTuneJob (status.evaluation) and the trainer's endpoint."""

from __future__ import annotations

from prometheus_client import Counter

FIT_REFUSALS = Counter(
    "kubetune_finetunejob_fit_refusals_total",
    "Runs not started because the fit check estimated they need more GPU memory than the GPUs have.",
)
EVALUATIONS = Counter(
    "kubetune_finetunejob_evaluations_total",
    "Results judged by their evaluation gate, by verdict (passed: promoted; failed: kept, not promoted).",
    ["verdict"],
)
for _verdict in ("passed", "failed"):
    EVALUATIONS.labels(_verdict)

EVENT_COUNTERS = {
    "DoesNotFit": FIT_REFUSALS,
    "EvaluationPassed": EVALUATIONS.labels("passed"),
    "EvaluationGateFailed": EVALUATIONS.labels("failed"),
}


def count(reasons: list[str]) -> None:
    """Count the Events (by reason) one reconcile emitted."""
    for reason in reasons:
        counter = EVENT_COUNTERS.get(reason)
        if counter is not None:
            counter.inc()
