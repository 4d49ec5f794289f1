"""A result that failed its evaluation gate (status.result.promoted: false) is followed by nothing: neither a
ModelServe (it waits, saying why) nor a FineTuneJob that starts from it; a promoted result is served."""

from __future__ import annotations

from kubetune.reconcile import sources
from kubetune.reconcile.results import readiness


def job(promoted: bool | None) -> dict:
    result = {"uri": "oci://registry.example.com/team/capitals:v2@sha256:" + "ab" * 32, "kind": "adapter"}
    if promoted is not None:
        result["promoted"] = promoted
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "capitals", "namespace": "team", "uid": "u", "generation": 1},
        "spec": {"model": {"uri": "hf://org/base"}, "dataset": {"uri": "hf://org/data"},
                 "output": {"uri": "pvc://models/capitals"}},
        "status": {"phase": "Succeeded", "observedGeneration": 1, "result": result},
    }  # fmt: skip


def test_an_unpromoted_result_is_not_followed():
    for follow in (True, False):
        assert readiness(job(False), follow=follow).state == "waiting"
        assert readiness(job(True), follow=follow).state == "ready"
        assert readiness(job(None), follow=follow).state == "ready"  # no gate: promoted


def test_a_modelserve_says_why_it_waits():
    # (status.result.promoted is the judge's API field; until it is in ResultStatus a job carrying it does not
    # parse, so the ModelServe-level check is on the message the resolution gives for such a job)
    message = sources._waiting_message("adapters[0] (c)", "capitals", "NotPromoted")
    assert "failed its evaluation gate" in message and "promoted: false" in message
