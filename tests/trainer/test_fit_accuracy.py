"""The fit estimate against the tensors of a real training step on CPU (hack/bench_fit.py measures them):
parameters, gradients and optimizer state within 10% (they are counted exactly), on tiny Llamas and on the
real pretrained all-MiniLM-L6-v2's config.json; the saved activations of the Llama shapes within 25%."""

from __future__ import annotations

import json

import pytest

from hack import bench_fit

pytestmark = pytest.mark.trainer

CASES = [
    bench_fit.Case("tiny-llama full", "tiny-llama", "causal-lm", "full"),
    bench_fit.Case("tiny-llama lora", "tiny-llama", "causal-lm", "lora"),
    bench_fit.Case("tiny-llama ia3 adafactor", "tiny-llama", "causal-lm", "ia3", optimizer="adafactor"),
    bench_fit.Case("tiny-llama prefix", "tiny-llama", "causal-lm", "prefix-tuning"),
    bench_fit.Case("minilm seq-cls full", "minilm", "sequence-classification", "full", batch=2, seq=64),
    bench_fit.Case("minilm seq-cls lora", "minilm", "sequence-classification", "lora", batch=2, seq=64),
    bench_fit.Case("minilm head-only adafactor", "minilm", "sequence-classification", "head-only",
                   optimizer="adafactor", batch=2, seq=64),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_estimate_matches_the_measured_tensors(case, minilm_path):
    config = json.loads((minilm_path / "config.json").read_text()) if case.model == "minilm" else None
    measured = bench_fit.measure(case, config)
    estimate = bench_fit.estimated(case, config)
    for what in ("params", "gradients", "optimizer"):
        assert measured[what] > 0
        assert estimate[what] == pytest.approx(measured[what], rel=0.10), what
    if case.model != "minilm":
        assert estimate["activations"] == pytest.approx(measured["activations"], rel=0.25)
