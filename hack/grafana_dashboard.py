"""Write the kubetune Grafana dashboard (charts/kubetune/dashboards/kubetune.json) from the panel list below.

    python hack/grafana_dashboard.py           write it
    python hack/grafana_dashboard.py --check   exit 1 when the committed file differs

Every PromQL expression here uses only metrics the operator (operator/kubetune/metrics*.py) and the
trainer (kubetune_trainer/reporting.py) export; tests/chart/test_observability.py checks that.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "charts" / "kubetune" / "dashboards" / "kubetune.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
FTJ = 'namespace=~"$namespace", finetunejob=~"$finetunejob"'

# (row title, [(panel title, unit, [(expr, legend)], description)])
ROWS = [
    ("Operator", [
        ("Reconciles per second", "ops", [
            ("sum by (controller, result) (rate(controller_runtime_reconcile_total[5m]))", "{{controller}} {{result}}")],
         "Reconciliations per controller and result."),
        ("Reconcile errors per second", "ops", [
            ("sum by (controller) (rate(controller_runtime_reconcile_errors_total[5m]))", "{{controller}}")],
         "Reconciliations that raised an error; the KubetuneReconcileErrors alert fires when they persist."),
        ("Reconcile duration (p50, p95)", "s", [
            ("histogram_quantile(0.5, sum by (le, controller) (rate(controller_runtime_reconcile_time_seconds_bucket[5m])))", "p50 {{controller}}"),
            ("histogram_quantile(0.95, sum by (le, controller) (rate(controller_runtime_reconcile_time_seconds_bucket[5m])))", "p95 {{controller}}")],
         "Duration of one reconciliation."),
        ("Work queue depth", "short", [("sum by (name) (workqueue_depth)", "{{name}}")],
         "Keys waiting in the operator's work queues."),
        ("FineTuneJobs by phase", "short", [("sum by (phase) (kubetune_finetunejobs)", "{{phase}}")],
         "FineTuneJobs the operator knows, by phase."),
        ("Apply to trainer Job (p50, p95)", "s", [
            ("histogram_quantile(0.5, sum by (le) (rate(kubetune_finetunejob_apply_to_job_seconds_bucket[15m])))", "p50"),
            ("histogram_quantile(0.95, sum by (le) (rate(kubetune_finetunejob_apply_to_job_seconds_bucket[15m])))", "p95")],
         "From a FineTuneJob's creation to its first trainer Job."),
        ("Finished runs", "short", [
            ("sum by (result) (increase(kubetune_finetunejob_run_duration_seconds_count[1h]))", "{{result}}")],
         "FineTuneJob runs that ended in the last hour, by result."),
        ("API writes per second", "ops", [
            ("sum by (verb, kind) (rate(kubetune_api_writes_total[5m]))", "{{verb}} {{kind}}")],
         "Write requests the operator sends to the API server."),
    ]),
    ("Training", [
        ("Progress", "percent", [
            (f"100 * max by (namespace, finetunejob) (kubetune_trainer_step{{{FTJ}}}) / max by (namespace, finetunejob) (kubetune_trainer_total_steps{{{FTJ}}})",
             "{{namespace}}/{{finetunejob}}")],
         "Optimizer steps done over steps planned, per FineTuneJob."),
        ("Training loss", "none", [
            (f"max by (namespace, finetunejob) (kubetune_trainer_loss{{{FTJ}}})", "{{namespace}}/{{finetunejob}} loss"),
            (f"max by (namespace, finetunejob) (kubetune_trainer_eval_loss{{{FTJ}}})", "{{namespace}}/{{finetunejob}} eval")],
         "Latest training and evaluation loss."),
        ("Tokens per second", "short", [
            (f"sum by (namespace, finetunejob) (kubetune_trainer_tokens_per_second{{{FTJ}}})", "{{namespace}}/{{finetunejob}}")],
         "Non-padding tokens trained on per second, over all processes."),
        ("ETA", "s", [
            (f"(max by (namespace, finetunejob) (kubetune_trainer_total_steps{{{FTJ}}}) - max by (namespace, finetunejob) (kubetune_trainer_step{{{FTJ}}}))"
             f" / max by (namespace, finetunejob) (deriv(kubetune_trainer_step{{{FTJ}}}[10m]) > 0)", "{{namespace}}/{{finetunejob}}")],
         "Remaining steps over the step rate of the last 10 minutes."),
        ("Learning rate", "none", [
            (f"max by (namespace, finetunejob) (kubetune_trainer_learning_rate{{{FTJ}}})", "{{namespace}}/{{finetunejob}}")],
         "Current learning rate."),
        ("Epoch", "none", [
            (f"max by (namespace, finetunejob) (kubetune_trainer_epoch{{{FTJ}}})", "{{namespace}}/{{finetunejob}}")],
         "Epochs done (fractional)."),
    ]),
    ("Serving", [
        ("Rollouts", "short", [
            ("sum by (result) (increase(kubetune_modelserve_rollouts_total[1h]))", "{{result}}")],
         "Finished ModelServe rollouts in the last hour, by result (succeeded, rolled-back, failed)."),
        ("Smoke-test latency (p50, p95)", "s", [
            ("histogram_quantile(0.5, sum by (le, result) (rate(kubetune_modelserve_smoke_test_seconds_bucket[1h])))", "p50 {{result}}"),
            ("histogram_quantile(0.95, sum by (le, result) (rate(kubetune_modelserve_smoke_test_seconds_bucket[1h])))", "p95 {{result}}")],
         "Duration of one smoke test against the serving endpoint."),
        ("New result to Ready (p50, p95)", "s", [
            ("histogram_quantile(0.5, sum by (le) (rate(kubetune_modelserve_result_to_ready_seconds_bucket[6h])))", "p50"),
            ("histogram_quantile(0.95, sum by (le) (rate(kubetune_modelserve_result_to_ready_seconds_bucket[6h])))", "p95")],
         "From a FineTuneJob's new result to the ModelServe serving it."),
    ]),
]  # fmt: skip


def variable(name: str, query: str, label: str) -> dict:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS, "query": {"query": query, "refId": name},
        "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"text": "All", "value": "$__all"}, "sort": 1,
    }  # fmt: skip


def dashboard() -> dict:
    panels, y, pid = [], 0, 1
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        pid, y = pid + 1, y + 1
        for i, (ptitle, unit, targets, description) in enumerate(row):
            panels.append({
                "id": pid, "type": "timeseries", "title": ptitle, "description": description, "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": expr, "legendFormat": legend}
                            for j, (expr, legend) in enumerate(targets)],
            })  # fmt: skip
            pid += 1
        y += ((len(row) + 2) // 3) * 8
    return {
        "uid": "kubetune", "title": "kubetune", "tags": ["kubetune"], "schemaVersion": 39, "version": 1,
        "editable": True, "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            variable("namespace", "label_values(kubetune_trainer_step, namespace)", "Namespace"),
            variable("finetunejob", 'label_values(kubetune_trainer_step{namespace=~"$namespace"}, finetunejob)',
                     "FineTuneJob"),
        ]},
        "panels": panels,
    }  # fmt: skip


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python hack/grafana_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
