"""The generated CRDs on a real API server: accepted (structural, CEL within the cost budget),
every example accepted, every invalid manifest whose rule lives in the CRD rejected naming its field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from kubetune import crdgen
from kubetune.api.v1alpha1 import GROUP, VERSION
from tests.support.crds import apply_crds, wait_served
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "data" / "invalid").glob("*.yaml"))
PLURALS = {kind.kind: kind.plural for kind in crdgen.KINDS}


def server_header(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# server:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path} has no '# server:' line")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def crds(kube):
    apply_crds(kube.api)
    return kube


@pytest.fixture(scope="module")
def ns(crds):
    name = crds.new_namespace("crds")
    wait_served(crds.api, name)
    yield name
    crds.delete_namespace(name)


def dry_run_create(kube, namespace: str, doc: dict) -> dict:
    return client.CustomObjectsApi(kube.api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[doc["kind"]], doc, dry_run="All", field_validation="Strict"
    )


def test_crds_are_established_with_names_and_columns(crds):
    ext = client.ApiextensionsV1Api(crds.api)
    ftj = ext.read_custom_resource_definition(f"finetunejobs.{GROUP}")
    assert ftj.spec.names.short_names == ["ftj", "ftjs"] and ftj.spec.names.categories == ["kubetune"]
    assert [c.name for c in ftj.spec.versions[0].additional_printer_columns] == [
        "Phase",
        "Progress",
        "Loss",
        "Age",
    ]
    serve = ext.read_custom_resource_definition(f"modelserves.{GROUP}")
    assert serve.spec.names.short_names == ["mserve"]
    for crd in (ftj, serve):  # a non-structural schema would show up as a condition
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("NonStructuralSchema") is None, crd.status.conditions


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_accepted(crds, ns, path):
    for doc in docs(path):
        created = dry_run_create(crds, ns, doc)
        assert created["metadata"]["name"] == doc["metadata"]["name"]
        if doc["kind"] == "FineTuneJob":  # the server filled the nested defaults (default: {} on objects)
            spec = created["spec"]
            assert spec["checkpoints"]["everySteps"] == doc["spec"].get("checkpoints", {}).get(
                "everySteps", 500
            )
            assert spec["objective"]["dpo"]["beta"] > 0 and "mergeAdapter" in spec["output"]
            assert spec["resources"]["gpusPerNode"] == doc["spec"].get("resources", {}).get("gpusPerNode", 1)


SERVER_CASES = [p for p in INVALID if server_header(p) not in ("-", "n/a")]
PYTHON_ONLY = [p for p in INVALID if server_header(p) == "-"]


@pytest.mark.parametrize("path", SERVER_CASES, ids=[p.stem for p in SERVER_CASES])
def test_invalid_manifest_is_rejected_naming_the_field(crds, ns, path):
    field = server_header(path)
    (doc,) = docs(path)
    with pytest.raises(client.ApiException) as info:
        dry_run_create(crds, ns, doc)
    assert info.value.status in (400, 422), info.value.body
    message = json.loads(info.value.body)["message"]
    # the path as a whole token: "spec.model: Invalid value..." or 'unknown field "spec.gpus"'
    assert re.search(re.escape(field) + r'[:"]', message), f"expected the server to name {field}: {message}"


@pytest.mark.parametrize("path", PYTHON_ONLY, ids=[p.stem for p in PYTHON_ONLY])
def test_python_only_rule_passes_the_server(crds, ns, path):
    """These rules are only in kubetune validate and the operator's Validated condition (the header says so)."""
    (doc,) = docs(path)
    dry_run_create(crds, ns, doc)


def test_explicit_nulls_count_as_unset_in_cel(crds, ns):
    doc = docs(REPO / "examples" / "gpt2-wikitext-causal-lm.yaml")[0]
    doc["spec"]["dataset"].update({"evalSplit": None, "evalFraction": 0.1})
    doc["spec"]["training"]["earlyStopping"] = None
    doc["spec"]["model"]["numLabels"] = None
    dry_run_create(crds, ns, doc)


def test_status_subresource_and_printer_columns(crds, ns):
    custom = client.CustomObjectsApi(crds.api)
    doc = docs(REPO / "examples" / "gpt2-wikitext-causal-lm.yaml")[0]
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", doc)
    name = doc["metadata"]["name"]
    # status is ignored on the main resource and written through /status
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, "finetunejobs", name, {"status": {"phase": "Failed"}}
    )
    assert "status" not in custom.get_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", name)
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "finetunejobs", name,
        {"status": {"phase": "Running", "progress": {"step": 50, "totalSteps": 200, "percent": 25.0, "loss": 2.5}}},
    )  # fmt: skip
    table = crds.api.call_api(
        f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/finetunejobs/{name}", "GET",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        response_types_map={200: "object"}, auth_settings=["BearerToken"], _return_http_data_only=True,
    )  # fmt: skip
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:5] == ["Name", "Phase", "Progress", "Loss", "Age"]
    cells = table["rows"][0]["cells"]
    assert cells[:4] == [name, "Running", 25, 2.5]
    stored = custom.get_namespaced_custom_object_status(GROUP, VERSION, ns, "finetunejobs", name)
    assert stored["status"]["progress"]["epoch"] == 0.0  # status defaults filled in too
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", name)


def test_published_openapi_describes_spec_fields(crds):
    """What `kubectl explain finetunejob.spec.method` prints comes from here."""
    path = f"/openapi/v3/apis/{GROUP}/{VERSION}"

    def published() -> tuple[dict, str] | None:
        document = crds.api.call_api(path, "GET", response_types_map={200: "object"}, auth_settings=["BearerToken"],
                                     _return_http_data_only=True)  # fmt: skip
        schemas = document.get("components", {}).get("schemas", {})
        key = next((k for k in schemas if k.endswith(f"{VERSION}.FineTuneJob")), None)
        return (schemas, key) if key else None

    schemas, key = wait_for(published, 30, 0.5, f"the FineTuneJob schema published at {path}")
    assert key
    spec = schemas[key]["properties"]["spec"]
    method = spec["properties"]["method"]
    if "allOf" in method:  # the published document may wrap defaults around a $ref
        method = {**method, **schemas[method["allOf"][0]["$ref"].rsplit("/", 1)[-1]]}
    assert "How the model is adapted" in method["description"]
