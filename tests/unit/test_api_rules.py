"""Every cross-field rule of the API, broken (one problem at the right path) and kept (no problem)."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1 import TARGET_LOCAL, validate_document

from .helpers import finetunejob, modelserve

BERT = {"uri": "hf://google-bert/bert-base-uncased", "task": "sequence-classification", "numLabels": 2}
T5 = {"uri": "hf://google-t5/t5-base", "task": "seq2seq"}
PREF = {"uri": "hf://trl-lib/ultrafeedback_binarized", "format": "preference"}
WIKI_EVAL = {"uri": "hf://Salesforce/wikitext", "evalSplit": "validation"}
MLM = {"uri": "hf://google-bert/bert-base-uncased", "task": "masked-lm"}
QA = {"uri": "hf://FacebookAI/roberta-base", "task": "question-answering"}
SQUAD = {"uri": "hf://rajpurkar/squad", "format": "question-answering"}

# (id, broken manifest, the path that must be named, the same manifest with the rule kept)
OCI = "oci://registry.example.com/team/gpt2"
RULES = [
    ("numLabels for classification",
     finetunejob(model={**BERT, "numLabels": None}), "spec.model.numLabels", finetunejob(model=BERT)),
    ("numLabels for token classification",
     finetunejob(model={"uri": "hf://google-bert/bert-base-cased", "task": "token-classification"}), "spec.model.numLabels",
     finetunejob(model={"uri": "hf://google-bert/bert-base-cased", "task": "token-classification", "numLabels": 9})),
    ("labels length equals numLabels",
     finetunejob(model={**BERT, "labels": ["a", "b", "c"]}), "spec.model.labels", finetunejob(model={**BERT, "labels": ["neg", "pos"]})),
    ("revision only for hf",
     finetunejob(model={"uri": "pvc://models/gpt2", "revision": "v1"}), "spec.model.revision", finetunejob(model={"uri": "pvc://models/gpt2"})),
    ("qlora only causal-lm or seq2seq",
     finetunejob(model=BERT, method={"type": "qlora"}), "spec.method.type", finetunejob(model=T5, method={"type": "qlora"})),
    ("qlora needs a GPU",
     finetunejob(method={"type": "qlora"}, resources={"gpusPerNode": 0}), "spec.resources.gpusPerNode",
     finetunejob(method={"type": "qlora"}, resources={"gpusPerNode": 1})),
    ("dpo needs preference data",
     finetunejob(objective={"type": "dpo"}), "spec.objective.type", finetunejob(dataset=PREF, objective={"type": "dpo"})),
    ("dpo needs causal-lm",
     finetunejob(model=T5, dataset=PREF, objective={"type": "dpo"}), "spec.objective.type", finetunejob(dataset=PREF, objective={"type": "dpo"})),
    ("prefix tuning only sft",
     finetunejob(dataset=PREF, method={"type": "prefix-tuning"}, objective={"type": "dpo"}), "spec.objective.type",
     finetunejob(method={"type": "prefix-tuning"})),
    ("packing only causal-lm",
     finetunejob(model=T5, dataset={"uri": "hf://abisee/cnn_dailymail", "packing": True}), "spec.dataset.packing",
     finetunejob(dataset={"uri": "hf://Salesforce/wikitext", "packing": True})),
    ("prefix tuning cannot merge",
     finetunejob(method={"type": "prefix-tuning"}, output={"uri": "pvc://m/o", "mergeAdapter": True}), "spec.output.mergeAdapter",
     finetunejob(method={"type": "lora"}, output={"uri": "pvc://m/o", "mergeAdapter": True})),
    ("prompt tuning cannot merge",
     finetunejob(method={"type": "prompt-tuning"}, output={"uri": "pvc://m/o", "mergeAdapter": True}), "spec.output.mergeAdapter",
     finetunejob(method={"type": "ia3"}, output={"uri": "pvc://m/o", "mergeAdapter": True})),
    ("full fine-tune cannot merge",
     finetunejob(method={"type": "full"}, output={"uri": "pvc://m/o", "mergeAdapter": True}), "spec.output.mergeAdapter",
     finetunejob(method={"type": "qlora"}, output={"uri": "pvc://m/o", "mergeAdapter": True})),
    ("evalSplit and evalFraction exclusive",
     finetunejob(dataset={**WIKI_EVAL, "evalFraction": 0.1}), "spec.dataset.evalFraction", finetunejob(dataset={**WIKI_EVAL, "evalFraction": 0.0})),
    ("several CPU nodes train with DDP over gloo",
     finetunejob(resources={"nodes": 2, "gpusPerNode": 0}, distributed={"strategy": "fsdp"}), "spec.resources.nodes",
     finetunejob(resources={"nodes": 2, "gpusPerNode": 0})),
    ("classification data needs sequence-classification",
     finetunejob(dataset={"uri": "hf://stanfordnlp/imdb", "format": "classification"}), "spec.dataset.format",
     finetunejob(model=BERT, dataset={"uri": "hf://stanfordnlp/imdb", "format": "classification"})),
    ("token-tags need token-classification",
     finetunejob(model=BERT, dataset={"uri": "hf://eriktks/conll2003", "format": "token-tags"}), "spec.dataset.format",
     finetunejob(model={**BERT, "task": "token-classification"}, dataset={"uri": "hf://eriktks/conll2003", "format": "token-tags"})),
    ("held-out metrics need an evaluation set",
     finetunejob(training={"metrics": ["perplexity", "rouge"]}), "spec.training.metrics",
     finetunejob(dataset={"uri": "hf://Salesforce/wikitext", "evalFraction": 0.05}, training={"metrics": ["perplexity", "rouge"]})),
    ("question-answering metrics need an evaluation set",
     finetunejob(model=QA, dataset=SQUAD, training={"metrics": ["exact-match", "f1"]}), "spec.training.metrics",
     finetunejob(model=QA, dataset={**SQUAD, "evalSplit": "validation"}, training={"metrics": ["exact-match", "f1"]})),
    ("masked-lm: perplexity only",
     finetunejob(model=MLM, dataset=WIKI_EVAL, training={"metrics": ["accuracy"]}), "spec.training.metrics",
     finetunejob(model=MLM, dataset=WIKI_EVAL, training={"metrics": ["perplexity"]})),
    ("question-answering: exact-match and f1 only",
     finetunejob(model=QA, dataset={**SQUAD, "evalSplit": "validation"}, training={"metrics": ["rouge"]}), "spec.training.metrics",
     finetunejob(model=QA, dataset={**SQUAD, "evalSplit": "validation"}, training={"metrics": ["f1"]})),
    ("masked-lm needs text",
     finetunejob(model=MLM, dataset={"uri": "hf://stanfordnlp/imdb", "format": "classification"}), "spec.dataset.format",
     finetunejob(model=MLM, dataset={"uri": "hf://stanfordnlp/imdb", "format": "text"})),
    ("question-answering needs question-answering data",
     finetunejob(model=QA, dataset={**SQUAD, "format": "text"}), "spec.dataset.format", finetunejob(model=QA, dataset={**SQUAD, "format": "auto"})),
    ("question-answering data needs question-answering",
     finetunejob(model=BERT, dataset=SQUAD), "spec.dataset.format", finetunejob(model=QA, dataset=SQUAD)),
    ("docStride below maxLength",
     finetunejob(model=QA, dataset={**SQUAD, "maxLength": 128}), "spec.dataset.docStride",
     finetunejob(model=QA, dataset={**SQUAD, "maxLength": 128, "docStride": 32})),
    ("no prefix tuning for masked-lm",
     finetunejob(model=MLM, method={"type": "prefix-tuning"}), "spec.method.type", finetunejob(model=MLM, method={"type": "lora"})),
    ("no prompt tuning for question-answering",
     finetunejob(model=QA, dataset=SQUAD, method={"type": "prompt-tuning"}), "spec.method.type",
     finetunejob(model=QA, dataset=SQUAD, method={"type": "head-only"})),
    ("packing not with masked-lm",
     finetunejob(model=MLM, dataset={"uri": "hf://Salesforce/wikitext", "packing": True}), "spec.dataset.packing", finetunejob(model=MLM)),
    ("packing not with question-answering",
     finetunejob(model=QA, dataset={**SQUAD, "packing": True}), "spec.dataset.packing", finetunejob(model=QA, dataset=SQUAD)),
    ("early stopping needs an evaluation set",
     finetunejob(training={"earlyStopping": {"patience": 2}}), "spec.dataset.evalSplit",
     finetunejob(dataset=WIKI_EVAL, training={"earlyStopping": {"patience": 2}})),
    ("classification metrics for classification",
     finetunejob(model=BERT, dataset={"uri": "hf://stanfordnlp/imdb", "evalSplit": "test"}, training={"metrics": ["rouge"]}), "spec.training.metrics",
     finetunejob(model=BERT, dataset={"uri": "hf://stanfordnlp/imdb", "evalSplit": "test"}, training={"metrics": ["accuracy", "f1"]})),
    ("generation metrics for generation",
     finetunejob(dataset=WIKI_EVAL, training={"metrics": ["accuracy"]}), "spec.training.metrics",
     finetunejob(dataset=WIKI_EVAL, training={"metrics": ["perplexity", "bleu"]})),
    ("warmupRatio and warmupSteps exclusive",
     finetunejob(training={"warmupRatio": 0.1, "warmupSteps": 10}), "spec.training.warmupSteps", finetunejob(training={"warmupSteps": 10})),
    ("output required in a cluster",
     finetunejob(output={}), "spec.output.uri", finetunejob(output={"uri": "s3://bucket-1/prefix"})),
    ("output not file:// in a cluster",
     finetunejob(output={"uri": "file:///tmp/out"}), "spec.output.uri", finetunejob(output={"uri": "pvc://models/out"})),
    ("model not file:// in a cluster",
     finetunejob(model={"uri": "file:///models/gpt2"}), "spec.model.uri", finetunejob(model={"uri": "s3://models-bucket/gpt2"})),
    ("dataset not file:// in a cluster",
     finetunejob(dataset={"uri": "file:///data/train.jsonl"}), "spec.dataset.uri", finetunejob(dataset={"uri": "pvc://data/train.jsonl"})),
    ("env names unique",
     finetunejob(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]), "spec.env",
     finetunejob(env=[{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])),
    ("serve: exactly one model source (both)",
     modelserve(model={"uri": "hf://gpt2", "fineTuneJobRef": {"name": "j"}}), "spec.model", modelserve(model={"fineTuneJobRef": {"name": "j"}})),
    ("serve: exactly one model source (neither)", modelserve(model={}), "spec.model", modelserve(model={"uri": "pvc://models/merged"})),
    ("serve: adapter needs exactly one source",
     modelserve(adapters=[{"name": "a"}]), "spec.adapters[0]", modelserve(adapters=[{"name": "a", "uri": "s3://adapters/a"}])),
    ("serve: adapter names unique",
     modelserve(adapters=[{"name": "a", "uri": "pvc://x/a"}, {"name": "a", "fineTuneJobRef": {"name": "j"}}]), "spec.adapters",
     modelserve(adapters=[{"name": "a", "uri": "pvc://x/a"}, {"name": "b", "fineTuneJobRef": {"name": "j"}}])),
    ("serve: vllm tensorParallelSize within gpus",
     modelserve(engine="vllm", resources={"gpus": 2}, vllm={"tensorParallelSize": 4}), "spec.vllm.tensorParallelSize",
     modelserve(engine="vllm", resources={"gpus": 4}, vllm={"tensorParallelSize": 4})),
    ("serve: numShard within gpus",
     modelserve(resources={"gpus": 2}, tgi={"numShard": 4}), "spec.tgi.numShard", modelserve(resources={"gpus": 4}, tgi={"numShard": 4})),
    ("serve: expect is a regex",
     modelserve(rollout={"smokeTest": {"expect": "(unclosed"}}), "spec.rollout.smokeTest.expect",
     modelserve(rollout={"smokeTest": {"expect": "^(Hello|Hi)\\b"}})),
    ("wandb online needs the API key",
     finetunejob(tracking={"wandb": {"project": "p"}}), "spec.tracking.wandb.secretRef",
     finetunejob(tracking={"wandb": {"project": "p", "secretRef": {"name": "wandb"}}})),
    ("oci output names a tag, not a digest",
     finetunejob(output={"uri": OCI + "@sha256:" + "0" * 64, "checkpointUri": "pvc://m/c"}), "spec.output.uri",
     finetunejob(output={"uri": OCI + ":v1", "checkpointUri": "pvc://m/c"})),
    ("oci output needs checkpointUri",
     finetunejob(output={"uri": OCI + ":v1"}), "spec.output.checkpointUri",
     finetunejob(output={"uri": OCI + ":v1", "checkpointUri": "s3://bucket/c"})),
    ("checkpointUri only with an oci output",
     finetunejob(output={"uri": "pvc://m/o", "checkpointUri": "pvc://m/c"}), "spec.output.checkpointUri",
     finetunejob(output={"uri": "pvc://m/o"})),
    ("checkpointUri not file:// in a cluster",
     finetunejob(output={"uri": OCI + ":v1", "checkpointUri": "file:///tmp/c"}), "spec.output.checkpointUri",
     finetunejob(output={"uri": OCI + ":v1", "checkpointUri": "pvc://m/c"})),
    ("checkpointSecretRef goes with an s3 checkpointUri",
     finetunejob(output={"uri": OCI + ":v1", "checkpointUri": "pvc://m/c", "checkpointSecretRef": {"name": "s3"}}),
     "spec.output.checkpointSecretRef",
     finetunejob(output={"uri": OCI + ":v1", "checkpointUri": "s3://bucket/c", "checkpointSecretRef": {"name": "s3"}})),
    ("overwriteTag only with an oci output",
     finetunejob(output={"uri": "pvc://m/o", "overwriteTag": True}), "spec.output.overwriteTag",
     finetunejob(output={"uri": OCI + ":v1", "checkpointUri": "pvc://m/c", "overwriteTag": True})),
    ("register.mlflow needs a server",
     finetunejob(output={"uri": "pvc://m/o", "register": {"mlflow": {"model": "gpt2"}}}), "spec.output.register.mlflow.trackingUri",
     finetunejob(output={"uri": "pvc://m/o", "register": {"mlflow": {"model": "gpt2"}}},
                 tracking={"mlflow": {"trackingUri": "http://mlflow.example.com"}})),
    # spec.evaluation (the evaluation gate)
    ("relative gates need the base model",
     finetunejob(dataset=WIKI_EVAL, evaluation={"metrics": ["perplexity"], "gates": [{"metric": "perplexity", "maxRegression": 0.1}]}),
     "spec.evaluation.gates",
     finetunejob(dataset=WIKI_EVAL, evaluation={"metrics": ["perplexity"], "compareWithBase": True,
                                                "gates": [{"metric": "perplexity", "maxRegression": 0.1}]})),
    ("evaluation measures something",
     finetunejob(dataset=WIKI_EVAL, evaluation={"compareWithBase": True}), "spec.evaluation.metrics",
     finetunejob(dataset=WIKI_EVAL, evaluation={"metrics": ["perplexity"]})),
    ("evaluation metrics need held-out data",
     finetunejob(evaluation={"metrics": ["perplexity"]}), "spec.evaluation.datasets",
     finetunejob(dataset=WIKI_EVAL, evaluation={"metrics": ["perplexity"]})),
    ("lm-eval only for text generators",
     finetunejob(model=BERT, evaluation={"lmEval": {"tasks": ["arc_easy"]}}), "spec.evaluation.lmEval",
     finetunejob(evaluation={"lmEval": {"tasks": ["arc_easy"]}})),
    ("lm-eval task folder not file:// in a cluster",
     finetunejob(evaluation={"lmEval": {"tasks": ["mine"], "taskDir": "file:///tasks"}}), "spec.evaluation.lmEval.taskDir",
     finetunejob(evaluation={"lmEval": {"tasks": ["mine"], "taskDir": "pvc://evals/tasks"}})),
]  # fmt: skip


@pytest.mark.parametrize(("broken", "path", "kept"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule(broken, path, kept):
    result = validate_document(broken)
    paths = [p.path for p in result.problems]
    assert path in paths, result.problems
    assert all(p.message for p in result.problems)
    fixed = validate_document(kept)
    assert fixed.ok, fixed.problems


def test_each_broken_manifest_breaks_only_its_rule():
    for name, broken, path, _ in RULES:
        paths = {p.path for p in validate_document(broken).problems}
        assert paths == {path}, f"{name}: {paths}"


def test_local_target_allows_file_uris_and_no_output():
    doc = finetunejob(
        model={"uri": "file:///models/gpt2"}, dataset={"uri": "file:///data/train.jsonl"}, output={}
    )
    assert not validate_document(doc).ok
    assert validate_document(doc, TARGET_LOCAL).ok


def test_problems_are_all_reported_at_once():
    doc = finetunejob(
        model=BERT | {"numLabels": None}, method={"type": "qlora"}, resources={"gpusPerNode": 0}, output={}
    )
    paths = {p.path for p in validate_document(doc).problems}
    assert {
        "spec.model.numLabels",
        "spec.method.type",
        "spec.resources.gpusPerNode",
        "spec.output.uri",
    } <= paths


def test_python_rules_and_crd_rules_name_the_same_fields():
    """Each CEL rule's fieldPath is a path some Python rule reports (the two copies stay in step)."""
    from kubetune.api.v1alpha1.finetunejob import FINETUNEJOB_SPEC_CEL

    python_paths = {path.removeprefix("spec") for _, _, path, _ in RULES}
    for rule in FINETUNEJOB_SPEC_CEL:
        assert rule["fieldPath"] in python_paths, rule


def test_perplexity_without_evaluation_set_is_a_warning_not_a_problem():
    result = validate_document(finetunejob(model=MLM, training={"metrics": ["perplexity"]}))
    assert result.ok, result.problems
    [warning] = result.warnings
    assert warning.path == "spec.training.metrics" and "training perplexity" in warning.message
    with_eval = validate_document(
        finetunejob(model=MLM, dataset=WIKI_EVAL, training={"metrics": ["perplexity"]})
    )
    assert with_eval.ok and not with_eval.warnings


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5])
def test_mlm_probability_is_a_fraction(value):
    result = validate_document(finetunejob(model=MLM, dataset={"uri": "hf://x/y", "mlmProbability": value}))
    assert [p.path for p in result.problems] == ["spec.dataset.mlmProbability"], result.problems


def test_encoder_task_defaults():
    job = validate_document(finetunejob(model=QA, dataset=SQUAD)).obj
    assert (job.spec.dataset.mlm_probability, job.spec.dataset.doc_stride) == (0.15, 128)


def test_task_specific_dataset_fields_on_another_task_are_warned_about():
    result = validate_document(
        finetunejob(dataset={"uri": "hf://x/y", "mlmProbability": 0.2, "docStride": 64})
    )
    assert result.ok
    assert {(w.path, w.message) for w in result.warnings} == {
        ("spec.dataset.mlmProbability", "applies only to model.task masked-lm; causal-lm ignores it"),
        ("spec.dataset.docStride", "applies only to model.task question-answering; causal-lm ignores it"),
    }
    assert not validate_document(finetunejob(model=QA, dataset={**SQUAD, "docStride": 64})).warnings
