"""Dashboards and alerts the chart ships: the PrometheusRule passes `promtool check rules` and the rule unit
tests (tests/chart/prometheus_rules_test.yaml), the dashboard ConfigMap is what Grafana's sidecar loads, every
PromQL expression of both parses with Prometheus's own parser, and every metric either uses is exported by the
operator (a real `kubetune operator` process) or the trainer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.v1alpha1 import TrainerConfig
from kubetune_trainer.reporting import Metrics
from tests.support.controlplane import ensure_testbin
from tests.support.operator import Operator

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
DASHBOARD = CHART / "dashboards" / "kubetune.json"
METRIC = re.compile(r"\b((?:kubetune|controller_runtime|workqueue)_[a-zA-Z0-9_]+)")


@pytest.fixture(scope="module")
def helm() -> str:
    return str(ensure_testbin().binary("helm"))


@pytest.fixture(scope="module")
def promtool() -> str:
    proc = subprocess.run(["bash", str(REPO / "hack" / "gotools.sh"), "promtool"], capture_output=True,
                          text=True, timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(line.split("=", 1) for line in proc.stdout.split())["PROMTOOL"]


def render(helm: str, *values: str) -> list[dict]:
    sets = [arg for value in values for arg in ("--set", value)]
    proc = subprocess.run([helm, "template", "kubetune", str(CHART), "--namespace", "kubetune-system", *sets],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def rules(helm: str, *values: str) -> dict:
    (rule,) = [
        d for d in render(helm, "prometheusRule.enabled=true", *values) if d["kind"] == "PrometheusRule"
    ]
    return rule["spec"]


def promtool_test(promtool: str, spec: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "kubetune.rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(REPO / "tests" / "chart" / "prometheus_rules_test.yaml", tmp_path / "rules_test.yaml")
    return subprocess.run([promtool, "test", "rules", "rules_test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_rules_pass_promtool_check_and_unit_tests(helm, promtool, tmp_path):
    spec = rules(helm)
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    assert alerts == {"KubetuneTrainingStalled", "KubetuneFineTuneJobFailed", "KubetuneRolloutRolledBack",
                      "KubetuneRolloutFailed", "KubetuneReconcileErrors"}  # fmt: skip
    (tmp_path / "kubetune.rules.yaml").write_text(yaml.safe_dump(spec))
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "kubetune.rules.yaml")],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout
    proc = promtool_test(promtool, spec, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_catch_a_different_threshold(helm, promtool, tmp_path):
    """The unit tests pin the behaviour: with a 60-minute stall threshold the stalled run is not yet alerted."""
    proc = promtool_test(promtool, rules(helm, "prometheusRule.trainingStalledMinutes=60"), tmp_path)
    assert proc.returncode != 0
    assert "KubetuneTrainingStalled" in proc.stdout + proc.stderr


def test_rule_values_and_labels(helm):
    docs = render(helm, "prometheusRule.enabled=true", "prometheusRule.labels.release=prom",
                  "prometheusRule.alertLabels.team=ml", "prometheusRule.reconcileErrorsMinutes=3")  # fmt: skip
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prom"
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert all(r["labels"]["team"] == "ml" for r in by_name.values())
    assert by_name["KubetuneReconcileErrors"]["for"] == "3m"
    assert not [d for d in render(helm) if d["kind"] in ("PrometheusRule", "PodMonitor")]


def test_dashboard_configmap_for_the_grafana_sidecar(helm):
    assert not [d for d in render(helm) if d["kind"] == "ConfigMap"]  # opt-in
    (cm,) = [d for d in render(helm, "grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring")
             if d["kind"] == "ConfigMap"]  # fmt: skip
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "kubetune"
    dashboard = json.loads(cm["data"]["kubetune.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for needed in ("Reconciles per second", "Work queue depth", "FineTuneJobs by phase",
                   "Apply to trainer Job (p50, p95)", "Training loss", "Tokens per second", "ETA", "Progress",
                   "Rollouts", "Smoke-test latency (p50, p95)"):  # fmt: skip
        assert needed in titles


def test_dashboard_json_is_generated_and_current():
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "grafana_dashboard.py"), "--check"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


# What Grafana puts in place of the dashboard's variables before it sends a query: a multi-value variable
# becomes a regex alternation inside the label matcher's string.
GRAFANA_VALUES = {"$namespace": "(team-a|team-b)", "$finetunejob": "(llama-sft|bert-imdb)"}


def promql_of_the_dashboard() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # The variables' queries are Grafana's label_values(SELECTOR, LABEL): the selector is PromQL.
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict) and query.get("query", "").startswith("label_values("):
            exprs.append(query["query"].removeprefix("label_values(").rsplit(",", 1)[0])
    for name, value in GRAFANA_VALUES.items():
        exprs = [e.replace(name, value) for e in exprs]
    return exprs


def promql_parses(promtool: str, expr: str) -> subprocess.CompletedProcess:
    """Prometheus's own parser (promql/parser, through `promtool promql format`) on EXPR."""
    return subprocess.run([promtool, "--experimental", "promql", "format", expr], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_every_promql_expression_parses(helm, promtool):
    """Every expression of the dashboard (after Grafana's variable substitution) and of the alert rules, by
    Prometheus's parser; a broken one is refused by it."""
    exprs = promql_of_the_dashboard()
    assert len(exprs) >= 20 and not [e for e in exprs if "$" in e], exprs
    exprs += [r["expr"] for g in rules(helm)["groups"] for r in g["rules"]]
    failed = {e: p.stderr.strip() for e in exprs if (p := promql_parses(promtool, e)).returncode != 0}
    assert not failed, failed
    broken = promql_parses(promtool, "sum(rate(kubetune_trainer_step[5m]) by (namespace)")
    assert broken.returncode != 0 and "parse error" in broken.stderr + broken.stdout


def test_pod_monitor_selects_trainer_pods(helm):
    from kubetune.render.common import COMPONENT, PART_OF

    (pm,) = [d for d in render(helm, "metrics.podMonitor.enabled=true", "watchNamespaces={ml}")
             if d["kind"] == "PodMonitor"]  # fmt: skip
    assert pm["spec"]["selector"]["matchLabels"] == {PART_OF: "kubetune", COMPONENT: "trainer"}
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def exported(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, from its families (also those without samples yet)."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def test_every_metric_of_the_dashboard_and_rules_is_exported(helm, kube, tmp_path):
    from tests.support.crds import apply_crds

    used = set(METRIC.findall(DASHBOARD.read_text()))
    used |= set(METRIC.findall(json.dumps(rules(helm))))
    assert len(used) >= 15, used

    apply_crds(kube.api)
    operator = Operator(kube.kubeconfig, tmp_path / "operator")
    operator.start()
    try:
        names = exported(operator.metrics())
    finally:
        operator.stop()
    config = TrainerConfig.model_validate({
        "job": {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "m", "namespace": "n"},
                "spec": {"model": {"uri": "hf://o/m"}, "dataset": {"uri": "hf://o/d"}, "output": {"uri": "pvc://c/p"}}},
        "runtime": {"runId": "r", "outputDir": str(tmp_path / "out")},
    })  # fmt: skip
    trainer = Metrics(config)
    trainer.serve(0)
    try:
        names |= exported(scrape(f"http://127.0.0.1:{trainer.port}/metrics"))
    finally:
        trainer.close()
    missing = sorted(m for m in used if m not in names)
    assert not missing, f"used by the dashboard or alerts but exported by nobody: {missing}"
