"""reconcile/chains.py: resolving model.fineTuneJobRef and reward-model references, per verdict."""

from __future__ import annotations

import copy

import pytest

from kubetune.api.v1alpha1 import FineTuneJob, validate_document
from kubetune.reconcile import chains
from kubetune.render.finetunejob import RenderOptions, render_configmap, render_job

from .helpers import finetunejob

PREF = {"uri": "pvc://data/prefs.jsonl", "format": "preference"}


def job(name: str, **spec) -> dict:
    doc = finetunejob(name, **spec)
    doc["metadata"].update(namespace="ns", generation=1)
    return doc


def succeeded(doc: dict, uri: str, kind: str = "full", merged: str | None = None, parents=None) -> dict:
    doc = copy.deepcopy(doc)
    result = {"uri": uri, "kind": kind, "configHash": f"hash-{doc['metadata']['name']}"}
    if merged:
        result["mergedUri"] = merged
    if parents:
        result["parents"] = parents
    doc["status"] = {"phase": "Succeeded", "observedGeneration": 1, "result": result}
    return doc


def phase(doc: dict, value: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["status"] = {"phase": value, "observedGeneration": 1}
    return doc


def model(doc: dict) -> FineTuneJob:
    validated = validate_document(doc)
    assert validated.ok, validated.problems
    return validated.obj  # type: ignore[return-value]


SFT = job("sft", method={"type": "full"}, output={"uri": "pvc://models/sft"})
DPO = job(
    "dpo", model={"fineTuneJobRef": {"name": "sft"}}, dataset=PREF, objective={"type": "dpo"},
    output={"uri": "pvc://models/dpo"},
)  # fmt: skip


def test_a_job_without_references_is_ready():
    verdict = chains.resolve(model(SFT), {})
    assert verdict.ready and verdict.chain.model is None and chains.references(model(SFT)) == []


def test_waits_for_the_referenced_job_naming_it_and_its_phase():
    for value in ("Pending", "Running"):
        verdict = chains.resolve(model(DPO), {"sft": phase(SFT, value)})
        assert verdict.state == "waiting" and verdict.reason == "WaitingForModel"
        assert "'sft'" in verdict.message and f"phase {value}" in verdict.message
        kinds = {c[0]: c for c in chains.conditions(verdict)}
        assert kinds["WaitingForModel"][1] is True and kinds["Running"][1] is False


def test_a_succeeded_job_whose_spec_changed_since_is_waited_for():
    parent = succeeded(SFT, "pvc://models/sft")
    parent["metadata"]["generation"] = 2  # edited: its new run has not started yet
    assert chains.resolve(model(DPO), {"sft": parent}).state == "waiting"


def test_full_model_result_is_the_base_and_a_parent():
    verdict = chains.resolve(model(DPO), {"sft": succeeded(SFT, "pvc://models/sft")})
    assert verdict.ready, verdict.message
    assert verdict.chain.model.uri == "pvc://models/sft" and verdict.chain.model.adapters == []
    assert [(p.name, p.uri, p.digest, p.role) for p in verdict.chain.parents] == [
        ("sft", "pvc://models/sft", "hash-sft", "model")
    ]


def test_merged_model_wins_over_the_adapter():
    lora = job("sft", output={"uri": "pvc://models/sft", "mergeAdapter": True})
    verdict = chains.resolve(
        model(DPO), {"sft": succeeded(lora, "pvc://models/sft", "adapter", "pvc://models/sft/merged")}
    )
    assert verdict.chain.model.uri == "pvc://models/sft/merged" and verdict.chain.model.adapters == []


def test_an_adapter_is_merged_into_its_base_following_the_chain():
    base = job("base", method={"type": "full"}, output={"uri": "pvc://models/base"})
    lora = job("sft", model={"fineTuneJobRef": {"name": "base"}}, output={"uri": "pvc://models/sft"})
    jobs = {
        "base": succeeded(base, "pvc://models/base"),
        "sft": succeeded(
            lora, "pvc://models/sft", "adapter", parents=[{"name": "base", "uri": "pvc://models/base"}]
        ),
    }
    verdict = chains.resolve(model(DPO), jobs)
    assert verdict.ready, verdict.message
    assert verdict.chain.model.uri == "pvc://models/base"
    assert verdict.chain.model.adapters == ["pvc://models/sft"]
    assert [p.name for p in verdict.chain.parents] == ["sft", "base"]  # the whole chain
    # an hf:// base keeps its revision
    hub = job("sft", model={"uri": "hf://org/llama", "revision": "v2"}, output={"uri": "pvc://models/sft"})
    verdict = chains.resolve(model(DPO), {"sft": succeeded(hub, "pvc://models/sft", "adapter")})
    assert (verdict.chain.model.uri, verdict.chain.model.revision) == ("hf://org/llama", "v2")


@pytest.mark.parametrize(
    ("jobs", "reason", "words"),
    [
        ({"sft": phase(SFT, "Failed")}, "ReferenceFailed", "failed"),
        (
            {"sft": succeeded(job("sft", method={"type": "prefix-tuning"}), "pvc://m/p", "prefix")},
            "ReferenceIncompatible",
            "prefix-tuning",
        ),
        (
            {
                "sft": succeeded(
                    job("sft", model={"uri": "hf://bert", "task": "sequence-classification", "numLabels": 2}),
                    "pvc://m/c",
                )
            },
            "ReferenceIncompatible",
            "classifier",
        ),
    ],
    ids=["failed", "prefix", "classifier-as-causal-lm-base"],
)
def test_broken_references_fail_with_a_reason(jobs, reason, words):
    verdict = chains.resolve(model(DPO), jobs)
    assert verdict.state == "failed" and verdict.reason == reason, verdict
    assert words in verdict.message and "spec.model.fineTuneJobRef" in verdict.message
    types = {c[0]: c[1] for c in chains.conditions(verdict)}
    assert types["Failed"] is True and types["Running"] is False


def test_a_missing_reference_waits_naming_it():
    """#28: a job applied before the job it refers to waits for it (GitOps applies in any order)."""
    verdict = chains.resolve(model(DPO), {"sft": None})
    assert verdict.state == "waiting" and verdict.reason == "ReferenceNotFound", verdict
    assert "'sft' not found" in verdict.message and "spec.model.fineTuneJobRef" in verdict.message
    types = {c[0]: c for c in chains.conditions(verdict)}
    assert types["WaitingForModel"][1:3] == (True, "ReferenceNotFound") and "Failed" not in types
    assert types["Running"][1:3] == (False, "ReferenceNotFound")


def test_cycles_fail():
    a = job("a", model={"fineTuneJobRef": {"name": "b"}})
    b = job("b", model={"fineTuneJobRef": {"name": "a"}})
    verdict = chains.resolve(model(a), {"b": b, "a": a})
    assert verdict.reason == "ReferenceCycle" and "a -> b -> a" in verdict.message
    itself = job("a", model={"fineTuneJobRef": {"name": "a"}})
    assert chains.resolve(model(itself), {"a": itself}).reason == "ReferenceCycle"
    # a cycle further up the chain also blocks this job for ever
    c = job("c", model={"fineTuneJobRef": {"name": "a"}})
    assert chains.resolve(model(c), {"a": a, "b": b}).reason == "ReferenceCycle"


def test_read_chain_follows_references_transitively():
    a = job("a", model={"fineTuneJobRef": {"name": "b"}})
    b = job("b", model={"fineTuneJobRef": {"name": "c"}})
    reads = []

    def get(name):
        reads.append(name)
        return {"b": b}.get(name)

    assert chains.read_chain(get, model(a)) == {"b": b, "c": None}
    assert reads == ["b", "c"]


RM = job(
    "rm", model={"uri": "pvc://models/sft", "task": "sequence-classification"}, dataset=PREF,
    objective={"type": "reward"}, output={"uri": "pvc://models/rm", "mergeAdapter": True},
)  # fmt: skip
GRPO = job(
    "grpo", model={"fineTuneJobRef": {"name": "sft"}}, dataset={"uri": "pvc://data/prompts", "format": "prompt"},
    objective={"type": "grpo", "rl": {"rewards": [
        {"model": {"fineTuneJobRef": {"name": "rm"}}},
        {"model": {"uri": "hf://org/other-rm"}, "weight": 0.5},
        {"function": {"name": "think-format"}},
    ]}},
    output={"uri": "pvc://models/grpo"},
)  # fmt: skip


def test_reward_models_are_resolved_too():
    jobs = {
        "sft": succeeded(SFT, "pvc://models/sft"),
        "rm": succeeded(RM, "pvc://models/rm", "reward-model", "pvc://models/rm/merged"),
    }
    assert [(r.name, r.role) for r in chains.references(model(GRPO))] == [
        ("sft", "model"),
        ("rm", "reward-model"),
    ]
    verdict = chains.resolve(model(GRPO), jobs)
    assert verdict.ready, verdict.message
    assert verdict.chain.reward_models["rm"].uri == "pvc://models/rm/merged"
    assert {p.name: p.role for p in verdict.chain.parents} == {"sft": "model", "rm": "reward-model"}
    # waiting on the reward model names it
    waiting = chains.resolve(model(GRPO), {**jobs, "rm": phase(RM, "Running")})
    assert waiting.state == "waiting" and "'rm'" in waiting.message and "reward model" in waiting.message
    # a reward reference to a job that trains no reward model
    wrong = chains.resolve(model(GRPO), {**jobs, "rm": succeeded(SFT, "pvc://models/x")})
    assert wrong.reason == "ReferenceIncompatible" and "objective.type reward" in wrong.message


def test_a_started_run_keeps_using_a_result_while_its_parent_runs_again():
    running_again = succeeded(SFT, "pvc://models/sft")
    running_again["status"]["phase"] = "Running"
    assert chains.resolve(model(DPO), {"sft": running_again}).state == "waiting"
    kept = chains.resolve(model(DPO), {"sft": running_again}, started=True)
    assert kept.ready and kept.chain.model.uri == "pvc://models/sft"


def test_the_trainer_config_and_the_job_carry_the_resolution():
    jobs = {
        "sft": succeeded(SFT, "pvc://models/sft"),
        "rm": succeeded(RM, "pvc://rms/rm", "reward-model"),
    }
    grpo = model(GRPO)
    verdict = chains.resolve(grpo, jobs)
    cm = render_configmap(grpo, RenderOptions(), verdict.chain)
    import yaml

    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["runtime"]["chain"]["model"]["uri"] == "pvc://models/sft"
    assert (
        config["runtime"]["chain"]["rewardModels"]["rm"]["uri"] == "pvc://models/sft"
    )  # rm is a LoRA adapter
    assert config["runtime"]["chain"]["rewardModels"]["rm"]["adapters"] == ["pvc://rms/rm"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in render_job(grpo, RenderOptions(), chain=verdict.chain)["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models", "data", "rms"}  # the resolved results are mounted


def test_dependents_index_wakes_the_jobs_that_refer_to_a_job():
    index = chains.Dependents()
    index.note("ns", "grpo", GRPO)
    index.note("ns", "dpo", DPO)
    index.note("other", "dpo", DPO)
    assert index.of("ns", "sft") == ["dpo", "grpo"] and index.of("ns", "rm") == ["grpo"]
    index.note("ns", "dpo", None)  # deleted
    assert index.of("ns", "sft") == ["grpo"] and index.of("other", "sft") == ["dpo"]


def test_a_reward_model_result_is_not_served():
    """ModelServe (owned by the serve controller) refuses a reward model: it is a classifier, not a generator."""
    from kubetune.api.v1alpha1 import ModelServe
    from kubetune.reconcile.sources import resolve_sources

    from .helpers import modelserve

    serve = ModelServe.model_validate(modelserve(model={"fineTuneJobRef": {"name": "rm"}}))
    rm = succeeded(RM, "pvc://models/rm", "reward-model", "pvc://models/rm/merged")
    resolution = resolve_sources(serve, {"rm": rm})
    assert resolution.model is None and any("'rm'" in u for u in resolution.unsupported), resolution
