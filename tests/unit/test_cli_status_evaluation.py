"""`kubetune status` shows the fit estimate and the evaluation (each metric against the base, the gates)."""

from __future__ import annotations

from kubetune.cli_status import render_status


def test_status_shows_the_estimate_and_a_failed_gate():
    obj = {
        "kind": "FineTuneJob",
        "metadata": {"name": "sft", "namespace": "ml", "generation": 1},
        "status": {
            "phase": "Failed",
            "observedGeneration": 1,
            "result": {"uri": "pvc://models/sft/rejected/abc", "kind": "adapter", "promoted": False},
            "estimate": {"perGpuGiB": 30.8, "availableGiB": 79.65, "fits": True},
            "evaluation": {
                "passed": False,
                "metrics": [{"name": "perplexity", "result": 25.0, "base": 20.0}],
                "gates": [{"metric": "perplexity", "passed": False,
                           "message": "perplexity 25 (base 20): worse than the base by 25.0%, beyond the allowed "
                                      "regression of 0.0%"}],
            },
        },
    }  # fmt: skip
    lines = render_status(obj).splitlines()
    assert (
        "  result: adapter at pvc://models/sft/rejected/abc (not promoted: it failed its evaluation gate)"
        in lines
    )
    assert "  fit: ~30.8 GiB per GPU of 79.65 GiB: fits" in lines
    assert "  evaluation: FAILED" in lines
    assert "    perplexity: 25 (base 20)" in lines
    assert (
        "    gate FAILED: perplexity 25 (base 20): worse than the base by 25.0%, beyond the allowed regression of 0.0%"
        in lines
    )


def test_status_without_an_evaluation_or_estimate_stays_as_it_was():
    obj = {"kind": "FineTuneJob", "metadata": {"name": "a", "namespace": "b"}, "status": {"phase": "Pending"}}
    assert render_status(obj) == "FineTuneJob b/a: Pending"
    unknown = {
        **obj,
        "status": {"estimate": {"message": "not estimated: pvc://models/x is read by the trainer"}},
    }
    assert (
        "  fit: not estimated: pvc://models/x is read by the trainer" in render_status(unknown).splitlines()
    )
