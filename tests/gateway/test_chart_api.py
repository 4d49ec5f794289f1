"""The chart's gateway (api.*): off by default, and what it renders when on."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from tests.gateway.helpers import CHART
from tests.support.controlplane import ensure_testbin


def render(*values: str, ok: bool = True) -> Any:
    helm = str(ensure_testbin().binary("helm"))
    sets = [arg for value in values for arg in ("--set", value)]
    proc = subprocess.run([helm, "template", "kt", str(CHART), "--namespace", "kubetune-system", *sets],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if not ok:
        assert proc.returncode != 0
        return proc.stderr
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def api_objects(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if "-api" in d["metadata"]["name"]}


def test_the_gateway_is_off_by_default():
    docs = render()
    assert api_objects(docs) == {}


def test_the_gateway_renders_a_deployment_service_claim_and_least_privilege_rbac():
    docs = render("api.enabled=true", "api.files.maxBytes=1048576", "api.baseModels.tiny=pvc://models/tiny")
    objs = api_objects(docs)
    assert set(objs) == {("Deployment", "kt-kubetune-api"), ("Service", "kt-kubetune-api"),
                         ("PersistentVolumeClaim", "kt-kubetune-api-files"), ("ServiceAccount", "kt-kubetune-api"),
                         ("ClusterRole", "kt-kubetune-api"), ("ClusterRoleBinding", "kt-kubetune-api")}  # fmt: skip
    pod = objs[("Deployment", "kt-kubetune-api")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["api", "--port=8000"] and pod["serviceAccountName"] == "kt-kubetune-api"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBETUNE_API_MAX_FILE_BYTES"] == "1048576"
    assert json.loads(env["KUBETUNE_API_BASE_MODELS"]) == {"tiny": "pvc://models/tiny"}
    assert env["KUBETUNE_API_FILES_URI"] == "pvc://kubetune-files/{namespace}"
    assert {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}[
        "files"
    ] == "kt-kubetune-api-files"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Its pods are not the operator's: the operator's selectors and Service do not match them.
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "kt-kubetune")
    labels = objs[("Deployment", "kt-kubetune-api")]["spec"]["template"]["metadata"]["labels"]
    assert not set(operator["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())
    rules = {(g, r, v) for rule in objs[("ClusterRole", "kt-kubetune-api")]["rules"]
             for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert rules == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
        *(("kubetune.io", "finetunejobs", v) for v in ("get", "list", "create", "patch")),
        ("kubetune.io", "modelserves", "list"),
        ("", "events", "list"),
    }


def test_an_existing_claim_and_several_replicas():
    objs = api_objects(
        render("api.enabled=true", "api.files.existingClaim=shared-files", "api.replicaCount=2")
    )
    assert ("PersistentVolumeClaim", "kt-kubetune-api-files") not in objs
    pod = objs[("Deployment", "kt-kubetune-api")]["spec"]["template"]["spec"]
    assert {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}[
        "files"
    ] == "shared-files"
    assert "ReadWriteMany" in render("api.enabled=true", "api.replicaCount=2", ok=False)


@pytest.mark.parametrize(
    "bad", ["api.outputUri=pvc://models/fixed", "api.files.jobUri=file:///x", "api.port=0"]
)
def test_the_schema_refuses_wrong_gateway_values(bad):
    assert "values don't meet the specifications of the schema" in render("api.enabled=true", bad, ok=False)
