"""Every example is valid, round-trips through the models, and the set covers the workflows docs/architecture.md lists."""

from __future__ import annotations

import pytest
import yaml

from kubetune.api.v1alpha1 import FineTuneJob, ModelServe, validate_document

from .helpers import EXAMPLES, INVALID, header, load_all

DOCS = [(path, doc) for path in EXAMPLES for doc in load_all(path)]


@pytest.mark.parametrize(("path", "doc"), DOCS, ids=[p.stem for p, _ in DOCS])
def test_example_round_trip(path, doc):
    first = validate_document(doc)
    assert first.ok, first.problems
    text = yaml.safe_dump(first.obj.to_dict(), sort_keys=False)
    second = validate_document(yaml.safe_load(text))
    assert second.ok, second.problems
    assert second.obj == first.obj
    assert second.obj.to_dict() == first.obj.to_dict()
    # what the user wrote survives unchanged (defaults are only added)
    assert _subset(doc["spec"], first.obj.to_dict()["spec"]), path


def _subset(small, big) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(_subset, small, big))
    return small == big


def test_every_example_has_a_comment_header():
    for path in EXAMPLES:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 30, path


def test_examples_cover_the_workflows():
    jobs = [validate_document(d).obj for _, d in DOCS if d["kind"] == "FineTuneJob"]
    serves = [validate_document(d).obj for _, d in DOCS if d["kind"] == "ModelServe"]
    assert len(jobs) + len(serves) >= 12 and all(isinstance(j, FineTuneJob) for j in jobs)
    assert all(isinstance(s, ModelServe) for s in serves)
    specs = [j.spec for j in jobs]
    methods = {s.method.type for s in specs}
    assert {"full", "head-only", "lora", "qlora", "prefix-tuning", "prompt-tuning"} <= methods
    assert any(s.model.task == "sequence-classification" and s.method.type == "full" for s in specs)
    assert sum(s.model.task == "seq2seq" for s in specs) >= 2
    assert any(s.dataset.source_prefix == "summarize: " for s in specs)
    assert any(s.dataset.format == "text" and "gpt2" in s.model.uri for s in specs)
    assert any(s.objective.type == "dpo" and s.dataset.format == "preference" for s in specs)
    qlora = next(s for s in specs if s.method.type == "qlora")
    assert (qlora.method.lora.r, qlora.method.lora.alpha, qlora.method.quantization.type) == (64, 16, "nf4")
    assert qlora.method.quantization.double_quant and qlora.method.lora.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]
    assert any(
        s.resources.nodes == 2 and s.resources.gpus_per_node == 8 and s.distributed.strategy == "fsdp"
        for s in specs
    )
    assert any(s.method.prompt_tuning.init_text for s in specs if s.method.type == "prompt-tuning")
    assert any(s.spec.model.fine_tune_job_ref and not s.spec.adapters for s in serves)
    assert any(s.spec.model.uri and s.spec.adapters for s in serves)
    job_names = {j.metadata.name for j in jobs}
    for serve in serves:  # references point at example jobs
        refs = [serve.spec.model.fine_tune_job_ref] + [a.fine_tune_job_ref for a in serve.spec.adapters]
        assert all(r.name in job_names for r in refs if r), serve.metadata.name


def test_invalid_data_set_headers():
    assert len(INVALID) >= 30
    for path in INVALID:
        assert path.read_text().startswith("# expect: "), path
        assert "server" in header(path), path
