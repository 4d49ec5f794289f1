"""One table of objectives (kubetune.api.v1alpha1.OBJECTIVES) and one trainer module per entry: the API's enum,
its rules and the trainer read the same facts, and an objective implies the model.task it trains."""

from __future__ import annotations

import importlib
import pkgutil
from typing import get_args

import pytest

from kubetune import crdgen
from kubetune.api.v1alpha1 import OBJECTIVES, TASK_FORMATS, validate_document
from kubetune.api.v1alpha1.finetunejob import FINETUNEJOB_SPEC_CEL, DatasetFormat, ResultKind, Task
from kubetune.api.v1alpha1.objective import TASK_CEL, ObjectiveType

from .helpers import finetunejob

PREF = {"uri": "hf://trl-lib/ultrafeedback_binarized", "format": "preference"}
# A dataset each objective accepts, and what else its spec needs.
READS = {
    "sft": {},
    "dpo": {"dataset": PREF},
    "kto": {"dataset": {"uri": "hf://trl-lib/kto-mix-14k", "format": "unpaired-preference"}},
    "reward": {"dataset": PREF},
    "grpo": {"dataset": {"uri": "hf://trl-lib/tldr", "format": "prompt"}},
    "rloo": {"dataset": {"uri": "hf://trl-lib/tldr", "format": "prompt"}},
}


def job(objective: str, **model) -> dict:
    spec = READS[objective]
    rl = (
        {"rl": {"rewards": [{"function": {"name": "think-format"}}]}} if OBJECTIVES[objective].rewards else {}
    )
    return finetunejob(model={"uri": "hf://org/m", **model}, objective={"type": objective, **rl}, **spec)


def test_every_api_objective_has_exactly_one_trainer_module_and_every_module_an_objective():
    from kubetune_trainer import objectives

    modules = {info.name for info in pkgutil.iter_modules(objectives.__path__)} - {"base"}
    registered = objectives.registry()
    assert modules == set(OBJECTIVES) == set(registered)
    for name, objective in registered.items():
        assert importlib.import_module(f"kubetune_trainer.objectives.{name}").OBJECTIVE is objective
        assert objective.name == name and objective.facts is OBJECTIVES[name]


def test_the_table_names_only_what_the_api_knows():
    assert get_args(ObjectiveType) == tuple(OBJECTIVES)
    crd_enum = crdgen.openapi_schema(crdgen.KINDS[0].model)["properties"]["spec"]["properties"]["objective"]
    assert crd_enum["properties"]["type"]["enum"] == list(OBJECTIVES)
    formats, tasks = set(get_args(DatasetFormat)), set(get_args(Task))
    assert set(TASK_FORMATS) == tasks and all(set(f) <= formats for f in TASK_FORMATS.values())
    for facts in OBJECTIVES.values():
        assert facts.task is None or facts.task in tasks, facts
        assert set(facts.formats or ()) <= formats - {"auto"}, facts
        assert facts.result_kind is None or facts.result_kind in get_args(ResultKind), facts
    # every format is read by some task or objective
    read = {f for fs in TASK_FORMATS.values() for f in fs} | {
        f for o in OBJECTIVES.values() for f in o.formats or ()
    }
    assert read == formats - {"auto"}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_an_objective_implies_the_task_it_trains_where_model_task_is_left_out(objective):
    result = validate_document(job(objective))
    assert result.ok, result.problems
    model = result.obj.spec.model
    assert model.task == (OBJECTIVES[objective].task or "causal-lm")
    assert result.obj.to_dict()["spec"]["model"]["task"] == model.task  # what the trainer's ConfigMap carries
    assert model.num_labels is None  # left out: the trainer's model has the objective's outputs


def test_a_reward_model_needs_no_model_task():
    """The issue's case: objective reward on a model whose task the user did not set."""
    result = validate_document(job("reward"))
    assert result.ok, result.problems
    assert result.obj.spec.model.task == "sequence-classification"


@pytest.mark.parametrize("objective", [n for n, f in OBJECTIVES.items() if f.task is not None])
def test_an_incompatible_task_the_user_set_is_refused_naming_the_field(objective):
    want = OBJECTIVES[objective].task
    other = "seq2seq" if want != "seq2seq" else "causal-lm"
    problems = validate_document(job(objective, task=other, numLabels=1)).problems
    [problem] = [p for p in problems if p.path == "spec.objective.type"]
    assert (
        f"model.task {other}" in problem.message
        and f"leave model.task out: {objective} implies {want}" in (problem.message)
    )


def test_a_task_the_user_set_stays():
    for task in ("causal-lm", "seq2seq"):
        assert (
            validate_document(finetunejob(model={"uri": "hf://org/m", "task": task})).obj.spec.model.task
            == task
        )


def test_the_crd_leaves_model_task_unset_and_its_rules_read_the_implied_task():
    model = crdgen.openapi_schema(crdgen.KINDS[0].model)["properties"]["spec"]["properties"]["model"]
    assert "default" not in model["properties"]["task"]
    reference = crdgen.openapi_schema(crdgen.KINDS[0].model, reference=True)
    assert (
        reference["properties"]["spec"]["properties"]["model"]["properties"]["task"]["default"] == "causal-lm"
    )
    reads_task = [r for r in FINETUNEJOB_SPEC_CEL if "self.model.task" in r["rule"]]
    assert len(reads_task) >= 10
    for rule in reads_task:  # never self.model.task alone: absent, the API server could not evaluate it
        assert "self.model.task" not in rule["rule"].replace(TASK_CEL, ""), rule
    assert "'sequence-classification'" in TASK_CEL and "'reward'" in TASK_CEL


def test_rules_that_name_objectives_come_from_the_table():
    """No FineTuneJob rule spells an objective that the table does not give it (they are generated)."""
    from kubetune.api.v1alpha1.objective import OBJECTIVE_SPEC_CEL

    generated = {r["rule"] for r in OBJECTIVE_SPEC_CEL}
    for rule in FINETUNEJOB_SPEC_CEL:
        text = rule["rule"].replace(TASK_CEL, "self.model.task")
        if "self.objective.type" in text:
            assert text in generated, rule
