"""The FineTuneJob decision's fit check and evaluation gate, transition by transition (no cluster): a run that
cannot fit gets no Job and says why with the numbers; skipFitCheck starts it; a run whose result failed its
gate ends Failed with reason EvaluationGateFailed quoting the trainer's numbers."""

from __future__ import annotations

from kubetune.api.fit import GpuMemory
from kubetune.api.v1alpha1 import validate_document
from kubetune.render.finetunejob import run_id
from tests.unit.test_finetunejob_decision import (
    at,
    cond,
    created_job,
    decide_all,
    events,
    fmt_time,
    ftj,
    job_cond,
    kstatus,
    started,
    with_status,
)
from tests.unit.test_fit import LLAMA_8B

BIG = {"model": {"uri": "hf://meta-llama/Llama-3.1-8B"},
       "dataset": {"uri": "hf://yahma/alpaca-cleaned", "maxLength": 2048}, "training": {"batchSize": 8}}  # fmt: skip
L4 = (LLAMA_8B, None, GpuMemory(23034 * 2**20, "node gpu-1's nvidia.com/gpu.memory"))
H200 = (LLAMA_8B, None, GpuMemory(143771 * 2**20, "node gpu-2's nvidia.com/gpu.memory"))


def test_a_run_that_cannot_fit_gets_no_job_and_says_why_with_the_numbers():
    obj = ftj(**BIG)
    d = decide_all(obj, at(0), fit=L4)
    assert all(o["kind"] != "Job" for o in d.apply)
    assert d.status["jobName"] is None and d.status["phase"] == "Pending"
    validated = cond(d, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "DoesNotFit")
    assert validated["message"].startswith("does not fit: needs ~")
    assert "22.49 GiB available (node gpu-1's nvidia.com/gpu.memory): use batchSize" in validated["message"]
    assert validated["message"].endswith("(or set spec.resources.skipFitCheck)")
    assert cond(d, "Running")["reason"] == "DoesNotFit"
    assert ("Warning", "DoesNotFit") in events(d)
    assert d.problem and kstatus(with_status(obj, d)) == "Failed"  # Stalled: a user must change the spec
    estimate = d.status["estimate"]
    assert estimate["fits"] is False and estimate["availableGiB"] == 22.49 and estimate["perGpuGiB"] > 100
    assert set(estimate["breakdown"]) == {"weights", "gradients", "optimizer", "activations", "overhead"}
    assert estimate["configHash"] == run_id(validate_document(obj).obj)
    # decided again: the estimate of this run is kept (no second read), still no Job
    again = decide_all(with_status(obj, d), at(5))
    assert again.status["estimate"] == estimate and all(o["kind"] != "Job" for o in again.apply)


def test_skip_fit_check_starts_it_and_keeps_the_estimate():
    obj = ftj(**{**BIG, "resources": {"skipFitCheck": True}})
    d = decide_all(obj, at(0), fit=L4)
    assert [o["metadata"]["name"] for o in d.apply if o["kind"] == "Job"] == ["t-trainer"]
    assert d.status["estimate"]["fits"] is False
    assert d.status["estimate"]["message"].endswith("(resources.skipFitCheck: started anyway)")
    assert cond(d, "Validated")["status"] == "True"


def test_a_run_that_fits_starts_with_its_estimate():
    d = decide_all(
        ftj(**{**BIG, "training": {"batchSize": 2, "gradientCheckpointing": True}}), at(0), fit=H200
    )
    assert any(o["kind"] == "Job" for o in d.apply)
    assert d.status["estimate"]["fits"] is True and d.status["estimate"]["availableGiB"] == 140.4


def test_unknown_config_or_cpu_runs_start():
    unknown = decide_all(
        ftj(**BIG), at(0), fit=(None, "hf://x: cannot read config.json from the Hub", GpuMemory())
    )
    assert any(o["kind"] == "Job" for o in unknown.apply)
    assert (
        unknown.status["estimate"]["message"] == "not estimated: hf://x: cannot read config.json from the Hub"
    )
    cpu = decide_all(ftj(**{**BIG, "resources": {"gpusPerNode": 0}}), at(0), fit=L4)
    assert any(o["kind"] == "Job" for o in cpu.apply) and cpu.status["estimate"] is None


def test_a_spec_change_that_fits_starts_a_run():
    obj = ftj(**BIG)
    refused = with_status(obj, decide_all(obj, at(0), fit=L4))
    advice = refused["status"]["estimate"]["message"]
    assert (
        "use batchSize 1 with gradient checkpointing (gradientAccumulationSteps x8 keeps the effective batch)"
        in advice
    )
    smaller = ftj(
        generation=2, **{**BIG, "training": {"batchSize": 1, "gradientCheckpointing": True}}
    )  # as advised
    smaller["status"] = refused["status"]
    d = decide_all(smaller, at(10), fit=L4)
    assert any(o["kind"] == "Job" for o in d.apply)
    assert cond(d, "Validated")["status"] == "True" and d.status["estimate"]["fits"] is True


EVAL = {"dataset": {"uri": "hf://Salesforce/wikitext", "evalSplit": "validation"},
        "evaluation": {"metrics": ["perplexity"], "compareWithBase": True,
                       "gates": [{"metric": "perplexity", "minImprovement": 0.05}]}}  # fmt: skip


def finished_with(verdict: dict | None, **spec):
    obj, _, first = started(ftj(**spec))
    done = created_job(first, completionTime=fmt_time(at(100)), conditions=[job_cond("Complete")])
    rid = done["metadata"]["labels"]["kubetune.io/run-id"]
    obj["status"]["result"] = {"uri": f"s3://bucket/out/rejected/{rid}", "promoted": False}
    if verdict is not None:
        obj["status"]["evaluation"] = {**verdict, "configHash": verdict.get("configHash", rid)}
    return obj, decide_all(obj, at(101), jobs=[done])


FAILED = {"passed": False, "message": "failed perplexity 25 (base 20): worse than the base by 25.0%, beyond the "
                                      "allowed regression of 0.0%"}  # fmt: skip


def test_a_result_that_failed_its_gate_ends_failed_quoting_the_numbers():
    obj, d = finished_with(FAILED, **EVAL)
    assert d.status["phase"] == "Failed"
    failed = cond(d, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "EvaluationGateFailed")
    assert "perplexity 25 (base 20): worse than the base by 25.0%" in failed["message"]
    assert "kept at s3://bucket/out/rejected/" in failed["message"] and "not promoted" in failed["message"]
    assert (
        cond(d, "Succeeded")["status"] == "False" and cond(d, "Stalled")["reason"] == "EvaluationGateFailed"
    )
    assert ("Warning", "EvaluationGateFailed") in events(d)
    assert not d.apply or all(o["kind"] != "Job" for o in d.apply)  # no retry: a new attempt would not help
    later = decide_all(with_status(obj, d), at(500))
    assert later.status["phase"] == "Failed" and all(o["kind"] != "Job" for o in later.apply)


def test_a_passed_gate_is_said_once():
    obj, d = finished_with(
        {"passed": True, "message": "passed every gate: perplexity 12 (base 20): better"}, **EVAL
    )
    assert d.status["phase"] == "Succeeded"
    assert ("Normal", "EvaluationPassed") in events(d)
    passed = next(e for e in d.events if e.reason == "EvaluationPassed")
    assert passed.message == (
        "the result passed its evaluation gate and is promoted: passed every gate: perplexity 12 (base 20): better"
    )
    later = decide_all(with_status(obj, d), at(500))
    assert ("Normal", "EvaluationPassed") not in events(later)


def test_the_events_are_counted_for_prometheus():
    from prometheus_client import REGISTRY

    from kubetune import metrics_judge

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (value("kubetune_finetunejob_fit_refusals_total"),
              value("kubetune_finetunejob_evaluations_total", verdict="failed"))  # fmt: skip
    metrics_judge.count(["JobCreated", "DoesNotFit", "EvaluationGateFailed", "EvaluationGateFailed"])
    assert value("kubetune_finetunejob_fit_refusals_total") == before[0] + 1
    assert value("kubetune_finetunejob_evaluations_total", verdict="failed") == before[1] + 2


def test_a_passed_gate_an_older_verdict_or_no_verdict_succeed():
    for evaluation in (
        {"passed": True, "message": "passed every gate"},
        {**FAILED, "configHash": "another-run"},
        None,
    ):
        _, d = finished_with(evaluation, **EVAL)
        assert d.status["phase"] == "Succeeded", evaluation


def test_a_job_without_evaluation_ignores_a_verdict():
    _, d = finished_with(FAILED)
    assert d.status["phase"] == "Succeeded"


def test_a_chain_does_not_start_from_a_result_that_was_not_promoted():
    from kubetune.reconcile import chains

    parent = ftj("sft", **EVAL)
    parent["status"] = {"phase": "Failed", "observedGeneration": 1,
                        "result": {"uri": "s3://bucket/out/rejected/abc", "kind": "full", "promoted": False}}  # fmt: skip
    child = ftj("dpo", model={"fineTuneJobRef": {"name": "sft"}})
    verdict = chains.resolve(validate_document(child).obj, {"sft": parent}, started=True)
    assert (verdict.state, verdict.reason) == ("failed", "ReferenceNotPromoted")
    assert "failed its evaluation gate and is not promoted" in verdict.message
