"""Chains converge in any order of creation and never cry wolf (#28): the FineTuneJob decision, transition by
transition, as the jobs of a chain appear, fail, cycle and get fixed in every order."""

from __future__ import annotations

import copy
from typing import Any

from kubetune.api.fit import GpuMemory
from kubetune.reconcile.finetunejob_decision import Decision, Observed, decide
from tests.unit.test_finetunejob_decision import OPTS, T0, at, cond, events, ftj, kstatus, with_status


def chained(name: str, parent: str) -> dict[str, Any]:
    return ftj(name, model={"fineTuneJobRef": {"name": parent}})


def succeeded(doc: dict[str, Any], uri: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["status"] = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "result": {"uri": uri, "kind": "full", "configHash": "h"},
    }
    return doc


def phase(doc: dict[str, Any], value: str, reason: str | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["status"] = {"phase": value, "observedGeneration": 1}
    return doc


def decide_in(obj: dict[str, Any], now, world: dict[str, dict[str, Any] | None]) -> Decision:
    """Decide OBJ with the FineTuneJobs of WORLD as its chain (None: it does not exist)."""
    observed = Observed(
        obj=copy.deepcopy(obj),
        chain_jobs=world,
        secrets={},
        pvcs={},
        fit=(None, "not read here", GpuMemory()),
    )
    return decide(observed, OPTS, now)


def jobs_in(d: Decision) -> list[str]:
    return [o["metadata"]["name"] for o in d.apply if o["kind"] == "Job"]


def test_the_parent_appears_after_the_child():
    child = chained("dpo", "sft")
    # Applied first: it waits, naming the missing parent; in progress, not failed.
    d = decide_in(child, T0, {"sft": None})
    waiting = cond(d, "WaitingForModel")
    assert waiting["status"] == "True" and waiting["reason"] == "ReferenceNotFound"
    assert "'sft' not found" in waiting["message"]
    assert cond(d, "Failed")["status"] == "False" and d.status["phase"] == "Pending"
    assert kstatus(with_status(child, d)) == "InProgress" and not d.problem and jobs_in(d) == []
    assert ("Warning", "ReferenceNotFound") in events(d)  # said once, as a Warning
    child = with_status(child, d)
    # The parent appears (Pending, then Running): still waiting, now for it to succeed.
    sft = ftj("sft", method={"type": "full"})
    d = decide_in(child, at(5), {"sft": phase(sft, "Running")})
    assert (
        cond(d, "WaitingForModel")["reason"] == "WaitingForModel"
        and "phase Running" in cond(d, "WaitingForModel")["message"]
    )
    assert kstatus(with_status(child, d)) == "InProgress" and jobs_in(d) == []
    child = with_status(child, d)
    # It succeeds: the child starts from its result.
    d = decide_in(child, at(60), {"sft": succeeded(sft, "s3://bucket/sft")})
    assert jobs_in(d) == ["dpo-trainer"] and cond(d, "WaitingForModel")["status"] == "False"
    assert d.status["phase"] == "Pending" and cond(d, "Failed")["status"] == "False"


def test_the_cycles_second_job_appears_later():
    ping, pong = chained("ping", "pong"), chained("pong", "ping")
    # ping first: pong does not exist yet, so it waits (no cycle can be seen yet).
    d = decide_in(ping, T0, {"pong": None})
    assert (
        cond(d, "WaitingForModel")["reason"] == "ReferenceNotFound" and cond(d, "Failed")["status"] == "False"
    )
    ping = with_status(ping, d)
    # pong appears: ping's verdict is the cycle (its creation wakes ping), and pong says the same.
    d = decide_in(ping, at(2), {"pong": pong, "ping": ping})
    failed = cond(d, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ReferenceCycle", failed
    assert "ping -> pong -> ping" in failed["message"] and d.problem
    assert kstatus(with_status(ping, d)) == "Failed"
    d_pong = decide_in(pong, at(2), {"ping": ping, "pong": pong})
    assert cond(d_pong, "Failed")["reason"] == "ReferenceCycle"
    ping = with_status(ping, d)
    # The cycle is fixed (pong now starts from a Hub model): ping waits for pong, Failed clears.
    fixed = ftj("pong")
    d = decide_in(ping, at(9), {"pong": phase(fixed, "Running")})
    assert cond(d, "Failed")["status"] == "False" and cond(d, "WaitingForModel")["status"] == "True"
    assert d.status["phase"] == "Pending" and kstatus(with_status(ping, d)) == "InProgress" and not d.problem


def test_a_failed_reference_clears_when_the_parent_runs_again_and_succeeds():
    child, sft = chained("dpo", "sft"), ftj("sft", method={"type": "full"})
    d = decide_in(child, T0, {"sft": phase(sft, "Failed")})
    assert cond(d, "Failed")["reason"] == "ReferenceFailed" and d.status["phase"] == "Failed"
    child = with_status(child, d)
    d = decide_in(child, at(30), {"sft": phase(sft, "Running")})  # fixed and re-run
    assert cond(d, "Failed")["status"] == "False" and cond(d, "WaitingForModel")["status"] == "True"
    assert d.status["phase"] == "Pending" and jobs_in(d) == []
    child = with_status(child, d)
    d = decide_in(child, at(90), {"sft": succeeded(sft, "s3://bucket/sft")})
    assert jobs_in(d) == ["dpo-trainer"]


def test_dependents_are_woken_only_by_what_they_read_of_the_job():
    from kubetune.reconcile.references import Readings

    readings = Readings()
    sft = ftj("sft", method={"type": "full"})
    assert readings.changed("team", "sft", sft)  # it appeared
    progress = copy.deepcopy(sft)
    progress["status"] = {"progress": {"step": 3}, "conditions": [{"type": "Running", "status": "True"}]}
    assert not readings.changed("team", "sft", progress)  # the trainer's reports, the operator's conditions
    assert readings.changed("team", "sft", phase(sft, "Running"))
    assert readings.changed("team", "sft", succeeded(sft, "s3://bucket/sft"))
    edited = succeeded(sft, "s3://bucket/sft")
    edited["metadata"]["generation"] = 2
    assert readings.changed("team", "sft", edited)  # a new run is coming
    assert readings.changed("team", "sft", None) and not readings.changed("team", "sft", None)  # deleted


def test_the_dependents_index_wakes_referrers_only_for_relevant_changes():
    from kubetune.reconcile import chains

    index = chains.Dependents()
    sft = ftj("sft", method={"type": "full"})
    assert index.woken("team", "sft", sft) == []  # nobody refers to it yet
    index.note("team", "dpo", chained("dpo", "sft"))
    assert index.woken("team", "sft", phase(sft, "Running")) == ["dpo"]
    progress = phase(sft, "Running")
    progress["status"]["progress"] = {"step": 5}
    assert index.woken("team", "sft", progress) == []  # a progress report wakes nobody
    assert index.woken("team", "sft", succeeded(sft, "s3://b/sft")) == ["dpo"]
    index.note("team", "dpo", ftj("dpo"))  # dpo no longer refers to sft
    assert index.woken("team", "sft", None) == []


def test_a_reward_model_stored_without_a_task_is_not_a_base_model():
    """objective reward implies model.task sequence-classification (the job may leave it out): as a chain's
    base model it is a classifier, refused as such."""
    from kubetune.reconcile import chains

    rm = ftj(
        "rm",
        model={"uri": "hf://org/base"},
        dataset={"uri": "pvc://data/prefs.jsonl", "format": "preference"},
        objective={"type": "reward"},
    )
    assert "task" not in rm["spec"]["model"]
    verdict = chains.resolve(chains_model(chained("next", "rm")), {"rm": succeeded(rm, "s3://bucket/rm")})
    assert verdict.reason == "ReferenceIncompatible" and "classifier" in verdict.message, verdict


def chains_model(doc: dict[str, Any]):
    from kubetune.api.v1alpha1 import validate_document

    result = validate_document(doc)
    assert result.ok, result.problems
    return result.obj
