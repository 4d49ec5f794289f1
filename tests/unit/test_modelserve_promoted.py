"""A ModelServe serves only promoted results: when its FineTuneJob's latest result failed the evaluation gate
(status.result.promoted false), it keeps serving what it serves, rolls nothing out and says why; a later
promoted result rolls out as usual."""

from __future__ import annotations

from tests.unit.test_modelserve_decision import World, cond, job, kstatus, modelserve, ready_world, written

GATE = "failed perplexity 25 (base 20): worse than the base by 25.0%, beyond the allowed regression of 0.0%"


def rejected(config_hash: str) -> dict:
    obj = job(config_hash)
    obj["status"]["phase"] = "Failed"
    obj["status"]["result"].update(uri=f"pvc://models/sft/rejected/{config_hash}", promoted=False)
    obj["status"]["evaluation"] = {"passed": False, "message": GATE, "configHash": config_hash}
    return obj


def test_a_result_that_failed_its_gate_is_not_rolled_out_and_the_previous_keeps_serving():
    w, rev1 = ready_world()
    w.job = rejected("c2")
    d = w.decide()
    assert written(d, "Deployment") is None  # the Deployment of revision 1 stays as it is
    assert d.status["revision"]["hash"] == rev1 and d.status["revision"]["model"] == "pvc://models/sft/c1"
    ready, degraded = cond(d, "Ready"), cond(d, "Degraded")
    assert (ready["status"], ready["reason"]) == ("False", "ResultNotPromoted")
    assert degraded["status"] == "True" and degraded["message"].startswith(f"still serving revision {rev1}; ")
    assert (
        "pvc://models/sft/rejected/c2) failed its evaluation gate and is not served: " + GATE
        in degraded["message"]
    )
    assert d.status["phase"] == "Degraded" and kstatus(d) == "Failed"  # stalled until a new result
    assert [(e[0], e[1]) for e in d.events] == [("Warning", "ResultNotPromoted")]
    # a promoted result of the next run rolls out
    w.job = job("c3")
    nxt = w.decide()
    assert nxt.status["revision"]["model"] == "pvc://models/sft/c3" and written(nxt, "Deployment") is not None


def test_nothing_is_served_from_a_job_whose_only_result_failed():
    w = World(modelserve(), rejected("c1"))
    d = w.decide()
    assert written(d, "Deployment") is None
    assert cond(d, "Ready")["reason"] == "ResultNotPromoted" and d.status["phase"] == "Pending"


def test_adapters_follow_the_same_rule():
    spec = {"model": {"uri": "hf://org/tiny"}, "adapters": [{"name": "a", "fineTuneJobRef": {"name": "sft"}}]}
    adapter = job("c1", method="lora")
    adapter["status"]["result"]["promoted"] = False
    d = World(modelserve(spec), adapter).decide()
    assert cond(d, "Ready")["reason"] == "ResultNotPromoted"
    assert "adapters[0] (a): the latest result of FineTuneJob 'sft'" in cond(d, "Ready")["message"]
