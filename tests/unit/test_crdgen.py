"""The generated CRDs are structural, described, and what crds/ holds."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from kubetune import crdgen
from kubetune.api.v1alpha1 import KubeModel

from .helpers import REPO

DOCS = {doc["spec"]["names"]["kind"]: doc for doc in crdgen.crd_documents()}
FORBIDDEN = {"$ref", "$defs", "definitions", "title", "const", "propertyNames", "$schema", "examples", "discriminator",
             "patternProperties", "dependencies", "additionalItems", "uniqueItems", "prefixItems", "oneOf", "allOf", "not"}  # fmt: skip


def schema(kind: str) -> dict[str, Any]:
    return DOCS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def all_nodes(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from all_nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from all_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from all_nodes(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelServe"])
def test_schema_is_structural(kind):
    for path, node in all_nodes(schema(kind)):
        assert not FORBIDDEN & node.keys(), f"{path}: {FORBIDDEN & node.keys()}"
        assert set(node) <= crdgen.ALLOWED_KEYS, f"{path}: {set(node) - crdgen.ALLOWED_KEYS}"
        if "anyOf" in node:  # only the int-or-string form is structural
            assert node.get("x-kubernetes-int-or-string") and node["anyOf"] == [
                {"type": "integer"},
                {"type": "string"},
            ], path
        special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean") or special, (
            f"{path}: type"
        )
        assert node.get("type") != "null"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), (
                f"{path}: {bound} must be a boolean in OpenAPI v3.0"
            )
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), f"{path}: arrays need items"


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelServe"])
def test_every_spec_field_has_a_description(kind):
    for path, node in all_nodes(schema(kind)["properties"]["spec"], ".spec"):
        if path.endswith(("[]", "{}")):
            continue  # items of lists/maps are described by their field
        assert node.get("description"), f"{path} has no description"


def test_root_metadata_and_required():
    for kind in DOCS:
        root = schema(kind)
        assert root["properties"]["metadata"] == {"type": "object"}
        assert root["required"] == ["spec"]
        assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}


def test_nullable_instead_of_null_types_and_no_null_defaults():
    spec = schema("FineTuneJob")["properties"]["spec"]["properties"]
    assert spec["model"]["properties"]["numLabels"] == {
        "description": spec["model"]["properties"]["numLabels"]["description"],
        "type": "integer",
        "nullable": True,
        "minimum": 1,
    }
    assert spec["model"]["properties"]["revision"]["default"] == "main"
    for path, node in all_nodes(schema("FineTuneJob")):
        assert node.get("default", "x") is not None, path


def test_object_fields_default_to_empty_so_the_server_fills_nested_defaults():
    spec = schema("FineTuneJob")["properties"]["spec"]["properties"]
    for name in ("method", "objective", "training", "resources", "distributed", "checkpoints", "output"):
        assert spec[name]["default"] == {}, name
        assert spec[name]["type"] == "object"
    assert spec["training"]["properties"]["metrics"]["default"] == []
    assert spec["resources"]["properties"]["gpusPerNode"]["default"] == 1
    assert spec["output"]["properties"]["mergeAdapter"]["default"] is False
    assert spec["method"]["properties"]["headOnly"]["properties"]["trainable"]["default"] == ["classifier"]
    assert "default" not in spec["model"] and "default" not in spec["dataset"]  # they have required fields
    serve = schema("ModelServe")["properties"]["spec"]["properties"]
    assert serve["rollout"]["default"] == {} and serve["rollout"]["properties"]["smokeTest"]["default"] == {}


def test_special_fields():
    spec = schema("FineTuneJob")["properties"]["spec"]["properties"]
    training, resources = spec["training"]["properties"], spec["resources"]["properties"]
    assert training["extraArgs"] == {"description": training["extraArgs"]["description"], "type": "object", "default": {},
                                     "x-kubernetes-preserve-unknown-fields": True}  # fmt: skip
    assert resources["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert resources["nodeSelector"]["additionalProperties"] == {"type": "string"}
    for quantity in ("cpu", "memory", "sharedMemory"):
        assert resources[quantity]["x-kubernetes-int-or-string"] is True and "type" not in resources[quantity]
        assert resources[quantity]["pattern"].startswith("^\\+?")  # quantity syntax, no minus sign
    every = training["evalEvery"]
    assert every["x-kubernetes-int-or-string"] is True and every["default"] == "epoch"
    assert "type(self) == int && self >= 1" in every["x-kubernetes-validations"][0]["rule"]
    lora = spec["method"]["properties"]["lora"]["properties"]
    assert lora["targetModules"]["x-kubernetes-preserve-unknown-fields"] is True
    assert lora["alpha"]["minimum"] == 0 and lora["alpha"]["exclusiveMinimum"] is True
    env_value_from = spec["env"]["items"]["properties"]["valueFrom"]
    assert (
        env_value_from["x-kubernetes-preserve-unknown-fields"] is True and env_value_from["type"] == "object"
    )
    columns = spec["dataset"]["properties"]["columns"]
    assert (
        columns["maxProperties"] == 17
        and "self.all(k, k in" in columns["x-kubernetes-validations"][0]["rule"]
    )
    assert spec["model"]["properties"]["uri"]["pattern"].startswith("^(hf://")
    assert spec["model"]["properties"]["task"]["enum"] == [
        "causal-lm",
        "seq2seq",
        "sequence-classification",
        "token-classification",
        "masked-lm",
        "question-answering",
    ]
    assert spec["method"]["properties"]["quantization"]["properties"]["bits"]["enum"] == [4, 8]


def test_cel_rules_sit_where_the_models_put_them():
    ftj_rules = schema("FineTuneJob")["properties"]["spec"]["x-kubernetes-validations"]
    from kubetune.api.v1alpha1.finetunejob import FINETUNEJOB_SPEC_CEL

    assert ftj_rules == FINETUNEJOB_SPEC_CEL
    serve = schema("ModelServe")["properties"]["spec"]
    assert {r["fieldPath"] for r in serve["x-kubernetes-validations"]} == {
        ".vllm.tensorParallelSize",
        ".tgi.numShard",
        ".adapters",
        ".tgi.dtype",
        ".tgi.maxInputTokens",
        ".vllm.maxCpuLoras",
        ".tgi.extraArgs",
        ".vllm.extraArgs",
    }
    one_of = "has(self.fineTuneJobRef) != has(self.uri)"
    assert serve["properties"]["model"]["x-kubernetes-validations"][0]["rule"] == one_of
    adapter_rules = serve["properties"]["adapters"]["items"]["x-kubernetes-validations"]
    assert adapter_rules[0]["rule"] == one_of and adapter_rules[-1]["fieldPath"] == ".uri"
    # An adapter named like the ModelServe (vLLM): a rule on the object, where metadata.name is visible.
    (root,) = schema("ModelServe")["x-kubernetes-validations"]
    assert "self.metadata.name" in root["rule"] and root["fieldPath"] == ".spec.adapters"
    assert serve["properties"]["adapters"]["maxItems"] == 64


def test_names_columns_and_subresources():
    ftj, ms = DOCS["FineTuneJob"], DOCS["ModelServe"]
    assert ftj["metadata"]["name"] == "finetunejobs.kubetune.io"
    assert ftj["spec"]["names"]["shortNames"] == ["ftj", "ftjs"] and ms["spec"]["names"]["shortNames"] == [
        "mserve"
    ]
    for doc in (ftj, ms):
        assert doc["spec"]["names"]["categories"] == ["kubetune"] and doc["spec"]["scope"] == "Namespaced"
        version = doc["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}} and version["served"] and version["storage"]
    columns = {c["name"]: c["jsonPath"] for c in ftj["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns == {"Phase": ".status.phase", "Progress": ".status.progress.percent", "Loss": ".status.progress.loss",
                       "Age": ".metadata.creationTimestamp"}  # fmt: skip
    columns = {c["name"]: c["jsonPath"] for c in ms["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Ready", "Desired", "Endpoint", "Age"]
    assert columns["Ready"] == ".status.readyReplicas"
    # every printer column points at a field the schema has
    for doc in (ftj, ms):
        root = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for column in doc["spec"]["versions"][0]["additionalPrinterColumns"]:
            if column["jsonPath"].startswith(".metadata"):
                continue
            node = root
            for part in column["jsonPath"].strip(".").split("."):
                node = node["properties"][part]


def test_missing_description_fails_generation():
    class Spec(KubeModel):
        documented: int = 1
        """Has words."""
        bare: int = 2

    class Thing(BaseModel):
        kind: str = "Thing"
        spec: Spec = Field(default_factory=Spec)
        status: Spec | None = None

    with pytest.raises(crdgen.CRDGenError, match=r"\.spec\.bare"):
        crdgen.openapi_schema(Thing)


def test_unmarked_union_fails_generation():
    class Spec(KubeModel):
        either: int | list[int] = 1
        """A union with no structural form."""

    class Thing(BaseModel):
        spec: Spec
        status: Spec | None = None

    with pytest.raises(crdgen.CRDGenError, match="either"):
        crdgen.openapi_schema(Thing)


def test_committed_crds_match_the_models():
    assert crdgen.check_crds(REPO / "crds") == []
    for kind in crdgen.KINDS:
        text = (REPO / "crds" / kind.filename).read_text()
        assert text.startswith("# Generated by `kubetune crds`")
        assert yaml.safe_load(text) == crdgen.crd_document(kind)


def test_committed_api_reference_matches_the_models():
    assert crdgen.check_crds(REPO / "docs", crdgen.reference_files()) == []


def test_api_reference_lists_every_field_with_its_rules():
    text = crdgen.api_reference()
    for kind in crdgen.KINDS:
        schema = crdgen.openapi_schema(kind.model)
        for part in ("spec", "status"):
            for path, _ in crdgen.walk(schema["properties"][part], part):
                if "[]" not in path and "{}" not in path:
                    assert f"| `{path}` |" in text, path
    assert '| `spec.model.task` | string | `"causal-lm"` |' in text
    assert "one of `causal-lm`, `seq2seq`" in text


def test_generation_is_deterministic():
    assert crdgen.rendered_files() == crdgen.rendered_files()


def test_drift_check_fails_after_an_edit(tmp_path: Path):
    shutil.copytree(REPO / "crds", tmp_path / "crds")
    assert crdgen.check_crds(tmp_path / "crds") == []
    target = tmp_path / "crds" / "kubetune.io_finetunejobs.yaml"
    target.write_text(target.read_text().replace("default: 512", "default: 1024"))
    problems = crdgen.check_crds(tmp_path / "crds")
    assert len(problems) == 1 and "kubetune.io_finetunejobs.yaml" in problems[0] and "differs" in problems[0]
    assert "1024" in problems[0] and "512" in problems[0]
    (tmp_path / "crds" / "kubetune.io_modelserves.yaml").unlink()
    assert any("missing" in p for p in crdgen.check_crds(tmp_path / "crds"))
    crdgen.write_crds(tmp_path / "crds")
    assert crdgen.check_crds(tmp_path / "crds") == []
