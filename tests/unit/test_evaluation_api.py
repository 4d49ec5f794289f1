"""spec.evaluation's rules (validate: one problem at the right path, or none) and the gate's judgement
(kubetune_trainer.gate, pure): absolute and relative bounds, directions, the numbers in the messages."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1 import TARGET_LOCAL, Gate, validate_document
from kubetune_trainer.gate import judge

from .helpers import finetunejob

EVAL = {"uri": "hf://Salesforce/wikitext", "evalSplit": "validation"}
BERT = {"uri": "hf://google-bert/bert-base-uncased", "task": "sequence-classification", "numLabels": 2}
PPL = {"metrics": ["perplexity"], "gates": [{"metric": "perplexity", "max": 30}]}

RULES = [
    ("needs something to measure", finetunejob(dataset=EVAL, evaluation={}), "spec.evaluation.metrics"),
    ("metric of the task", finetunejob(dataset=EVAL, evaluation={"metrics": ["accuracy"]}), "spec.evaluation.metrics"),
    ("held-out data", finetunejob(evaluation=PPL), "spec.evaluation.datasets"),
    ("relative gate needs the base",
     finetunejob(dataset=EVAL, evaluation={"metrics": ["perplexity"], "gates": [{"metric": "perplexity", "maxRegression": 0.1}]}),
     "spec.evaluation.gates"),
    ("gate on an unmeasured metric",
     finetunejob(dataset=EVAL, evaluation={"metrics": ["perplexity"], "gates": [{"metric": "bleu", "min": 1}]}),
     "spec.evaluation.gates[0].metric"),
    ("gate without a bound",
     finetunejob(dataset=EVAL, evaluation={"metrics": ["perplexity"], "gates": [{"metric": "perplexity"}]}),
     "spec.evaluation.gates[0]"),
    ("min above max",
     finetunejob(dataset=EVAL, evaluation={"metrics": ["perplexity"], "gates": [{"metric": "perplexity", "min": 5, "max": 2}]}),
     "spec.evaluation.gates[0].min"),
    ("lm-eval on a classifier",
     finetunejob(model=BERT, dataset={"uri": "hf://stanfordnlp/imdb", "evalSplit": "test"}, evaluation={"lmEval": {"tasks": ["arc_easy"]}}),
     "spec.evaluation.lmEval"),
    ("lm-eval with prompt tuning",
     finetunejob(method={"type": "prompt-tuning"}, evaluation={"lmEval": {"tasks": ["arc_easy"]}}), "spec.evaluation.lmEval"),
    ("dpo data is not text to measure",
     finetunejob(dataset={"uri": "hf://trl-lib/ultrafeedback_binarized", "format": "preference", "evalSplit": "test"},
                 objective={"type": "dpo"}, evaluation=PPL), "spec.evaluation.datasets"),
    ("file task folder in a cluster",
     finetunejob(evaluation={"lmEval": {"tasks": ["mine"], "taskDir": "file:///tasks"}}), "spec.evaluation.lmEval.taskDir"),
    ("dataset names unique",
     finetunejob(evaluation={"metrics": ["perplexity"], "datasets": [{"name": "a", "uri": "hf://x/y"}, {"name": "a", "uri": "hf://x/z"}]}),
     "spec.evaluation.datasets"),
    ("dataset format", finetunejob(evaluation={"metrics": ["perplexity"], "datasets": [{"name": "a", "uri": "hf://x/y", "format": "poems"}]}),
     "spec.evaluation.datasets[0].format"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "doc", "path"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_names_its_field(name, doc, path):
    result = validate_document(doc)
    assert path in [p.path for p in result.problems], [str(p) for p in result.problems]


@pytest.mark.parametrize(
    "evaluation",
    [
        {**PPL},
        {"metrics": ["perplexity", "rouge"], "compareWithBase": True,
         "gates": [{"metric": "perplexity", "minImprovement": 0.05}, {"metric": "rougeL", "maxRegression": 0.02}]},
        {"lmEval": {"tasks": ["arc_easy", "mine"], "taskDir": "pvc://evals/tasks", "limit": 100},
         "gates": [{"metric": "arc_easy/acc_norm", "min": 0.5}, {"metric": "mine/exact_match", "min": 0.2}]},
    ],
)  # fmt: skip
def test_valid_evaluations(evaluation):
    result = validate_document(finetunejob(dataset=EVAL, evaluation=evaluation))
    assert result.ok, [str(p) for p in result.problems]


def test_named_datasets_name_their_metrics_and_file_uris_work_locally():
    evaluation = {"metrics": ["accuracy", "f1"], "datasets": [{"name": "support", "uri": "file:///data/support.jsonl"}],
                  "gates": [{"metric": "support/accuracy", "min": 0.8}, {"metric": "accuracy", "min": 0.8}]}  # fmt: skip
    doc = finetunejob(model=BERT, evaluation=evaluation)
    assert [p.path for p in validate_document(doc, TARGET_LOCAL).problems] == [
        "spec.evaluation.gates[1].metric"
    ]
    assert "spec.evaluation.datasets[0].uri" in [p.path for p in validate_document(doc).problems]


def gates(*items: dict) -> list[Gate]:
    return [Gate.model_validate(g) for g in items]


def test_absolute_bounds():
    verdict = judge(gates({"metric": "perplexity", "max": 20}, {"metric": "accuracy", "min": 0.9}),
                    {"perplexity": 12.5, "accuracy": 0.85})  # fmt: skip
    assert [v.passed for v in verdict.verdicts] == [True, False]
    assert verdict.verdicts[0].message == "perplexity 12.5: at most 20"
    assert verdict.verdicts[1].message == "accuracy 0.85: below the minimum 0.9"
    assert not verdict.passed and verdict.message() == "failed accuracy 0.85: below the minimum 0.9"


def test_relative_bounds_follow_the_metric_direction():
    base = {"perplexity": 20.0, "accuracy": 0.80}
    better = judge(gates({"metric": "perplexity", "minImprovement": 0.1}, {"metric": "accuracy", "maxRegression": 0.05}),
                   {"perplexity": 17.0, "accuracy": 0.78}, base)  # fmt: skip
    assert better.passed
    assert better.verdicts[0].message == (
        "perplexity 17 (base 20): better than the base by 15.0%, meeting the required improvement of 10.0%"
    )
    assert better.verdicts[1].message == (
        "accuracy 0.78 (base 0.8): worse than the base by 2.5%, within the allowed regression of 5.0%"
    )
    worse = judge(gates({"metric": "perplexity", "maxRegression": 0.0}), {"perplexity": 25.0}, base)
    assert not worse.passed
    assert worse.verdicts[0].message == (
        "perplexity 25 (base 20): worse than the base by 25.0%, beyond the allowed regression of 0.0%"
    )


def test_lm_eval_directions_and_missing_metrics():
    # a task metric lm-eval says is lower-better, and one that was not measured at all
    verdict = judge(gates({"metric": "t/brier", "minImprovement": 0.1}, {"metric": "t/acc", "min": 0.1}),
                    {"t/brier": 0.2}, {"t/brier": 0.3}, {"t/brier": False})  # fmt: skip
    assert verdict.verdicts[0].passed
    assert not verdict.verdicts[1].passed and verdict.verdicts[1].message == "t/acc was not measured (None)"


def test_a_relative_bound_without_the_base_fails():
    verdict = judge(gates({"metric": "perplexity", "maxRegression": 0.1}), {"perplexity": 10.0}, {})
    assert not verdict.passed and "needs the base model's perplexity" in verdict.verdicts[0].message
