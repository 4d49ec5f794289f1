"""The API server (the generated CRDs, server-side dry run) and `kubetune validate` agree on every objective with
every model.task, or none, and the dataset formats: the task an objective implies where model.task is left out,
the formats it reads and the numLabels and qlora rules it relaxes come from one table (OBJECTIVES), as CEL for
the server and as Python for validate."""

from __future__ import annotations

import json
import re
from typing import get_args

import pytest
from kubernetes import client

from kubetune.api.v1alpha1 import CLASSIFICATION_TASKS, GROUP, OBJECTIVES, VERSION, validate_document
from kubetune.api.v1alpha1.finetunejob import Task
from tests.support.crds import apply_crds, wait_served
from tests.support.objects import Objects
from tests.unit.helpers import finetunejob

pytestmark = pytest.mark.cluster

FORMATS = ("auto", "text", "preference", "unpaired-preference", "prompt", "messages", "classification")
FIELD = re.compile(r"(spec\.[A-Za-z.]+): (?:Invalid|Required|Unsupported)")


@pytest.fixture(scope="module")
def dry_run(kube):
    apply_crds(kube.api)
    jobs = Objects(kube.api, kube.new_namespace("objectives"))
    wait_served(kube.api, jobs.ns)

    def run(doc: dict) -> tuple[dict | None, set[str] | None]:
        """(DOC as the server would store it, None) when it accepts DOC, else (None, the fields it names)."""
        try:
            return jobs.co.create_namespaced_custom_object(
                GROUP, VERSION, jobs.ns, jobs.plural, doc, dry_run="All"
            ), None
        except client.ApiException as exc:
            assert exc.status == 422, exc.body
            return None, set(FIELD.findall(json.loads(exc.body)["message"]))

    yield run
    kube.delete_namespace(jobs.ns)


def manifest(objective: str, task: str | None, fmt: str, method: str = "lora") -> dict:
    model: dict = {"uri": "hf://org/m"}
    if task is not None:
        model["task"] = task
    if task in CLASSIFICATION_TASKS:
        model["numLabels"] = 2
    rl = (
        {"rl": {"rewards": [{"function": {"name": "think-format"}}]}} if OBJECTIVES[objective].rewards else {}
    )
    return finetunejob(
        model=model,
        dataset={"uri": "hf://org/d", "format": fmt},
        method={"type": method},
        objective={"type": objective, **rl},
    )


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_server_and_validate_agree_on_each_task_and_format(dry_run, objective):
    disagreements, accepted = [], 0
    for task in (None, *get_args(Task)):
        for fmt in FORMATS:
            for method in ("lora", "qlora", "prefix-tuning"):
                doc = manifest(objective, task, fmt, method)
                problems = validate_document(doc).problems
                _, refused = dry_run(doc)
                accepted += refused is None
                python = {p.path for p in problems}
                if (refused is None) != (not problems) or (refused is not None and not python <= refused):
                    disagreements.append((task, fmt, method, sorted(python), sorted(refused or ())))
    assert not disagreements, disagreements
    assert accepted > 0  # the objective's own task and format pass both


def test_a_reward_model_without_model_task_is_stored_without_one_and_read_as_a_classifier(dry_run):
    stored, refused = dry_run(manifest("reward", None, "preference"))
    assert refused is None and stored is not None
    assert "task" not in stored["spec"]["model"]  # no server default: the rules and the models imply it
    assert validate_document(stored).obj.spec.model.task == "sequence-classification"
    _, refused = dry_run(manifest("reward", "causal-lm", "preference"))
    assert refused == {"spec.objective.type"}
    stored, _ = dry_run(manifest("sft", None, "auto"))
    assert stored is not None and validate_document(stored).obj.spec.model.task == "causal-lm"
