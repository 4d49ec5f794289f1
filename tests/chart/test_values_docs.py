"""The chart's values: README table generated from values.yaml (no drift), every value documented and
covered by values.schema.json, and `helm template` working with Helm's defaults."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support.controlplane import ensure_testbin

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"


def _hack(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chart_readme = _hack("chart_readme")
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


@pytest.fixture(scope="module")
def helm() -> str:
    return str(ensure_testbin().binary("helm"))


def test_readme_lists_every_value_and_is_current():
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "chart_readme.py"), "--check"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    readme = (CHART / "README.md").read_text()
    for key in chart_readme.leaves(VALUES, chart_readme.descriptions(VALUES_TEXT)):
        assert f"| `{key}` |" in readme


def test_an_undocumented_value_is_refused():
    text = VALUES_TEXT + "\nnewThing:\n  knob: 3\n"
    with pytest.raises(chart_readme.Undocumented, match=r"newThing\.knob"):
        chart_readme.leaves(yaml.safe_load(text), chart_readme.descriptions(text))


def schema_at(path: str) -> dict:
    node = SCHEMA
    for part in path.split("."):
        assert node.get("type") == "object", f"{path}: {part}'s parent is not an object in the schema"
        assert node.get("additionalProperties") is False, f"{path}: the schema lets unknown keys through"
        assert part in node.get("properties", {}), f"values.schema.json has no {path}"
        node = node["properties"][part]
    return node


def test_schema_covers_every_value_and_accepts_the_defaults():
    keys = chart_readme.leaves(VALUES, chart_readme.descriptions(VALUES_TEXT))
    assert len(keys) > 30
    for key in keys:
        node = schema_at(key)
        assert node.get("type") or node.get("enum"), f"values.schema.json: {key} has neither type nor enum"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


@pytest.mark.parametrize(
    "bad",
    ["grafanaDashboard.enabled=yes", "prometheusRule.trainingStalledMinutes=0", "metrics.podMonitor.interval=soon",
     "grafanaDashboard.namespace=Not_A_Namespace", "prometheusRule.unknown=1"],
)  # fmt: skip
def test_schema_rejects_wrong_values(helm, bad):
    proc = subprocess.run([helm, "template", "kt", str(CHART), "--set", bad], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert bad.split("=")[0].split(".")[-1] in proc.stderr


def test_helm_template_and_lint_with_helm_defaults(helm):
    """No --kube-version: the chart has no kubeVersion constraint that Helm's default version would fail."""
    proc = subprocess.run([helm, "template", "kt", str(CHART)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(proc.stdout) if d}
    assert {"Deployment", "CustomResourceDefinition", "ClusterRole"} <= kinds
    lint = subprocess.run([helm, "lint", str(CHART), "--strict"], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
