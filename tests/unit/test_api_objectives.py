"""The objectives of the second wave in the API: what is accepted, what is refused and how it is said."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1 import TARGET_LOCAL, validate_document

from .helpers import finetunejob

RM_MODEL = {"uri": "hf://org/sft", "task": "sequence-classification"}
PREF = {"uri": "hf://trl-lib/ultrafeedback_binarized", "format": "preference"}
PROMPTS = {"uri": "hf://trl-lib/tldr", "format": "prompt"}
FUNCTION = {"function": {"name": "think-format"}}

VALID = {
    "reward model, numLabels left out": finetunejob(model=RM_MODEL, dataset=PREF, objective={"type": "reward"}),
    "reward model, numLabels 1, qlora": finetunejob(
        model={**RM_MODEL, "numLabels": 1}, dataset=PREF, objective={"type": "reward"}, method={"type": "qlora"}
    ),
    "kto": finetunejob(dataset={"uri": "hf://trl-lib/kto-mix-14k", "format": "unpaired-preference"}, objective={"type": "kto"}),
    "grpo on prompts": finetunejob(dataset=PROMPTS, objective={"type": "grpo", "rl": {"rewards": [FUNCTION]}}),
    "rloo on messages": finetunejob(
        dataset={"uri": "hf://trl-lib/Capybara", "format": "messages"},
        objective={"type": "rloo", "rl": {"rewards": [{"model": {"uri": "s3://rms/rm"}, "weight": 2}]}},
    ),
    "grpo, auto format, every function": finetunejob(
        dataset={"uri": "hf://trl-lib/tldr"},
        objective={"type": "grpo", "rl": {"rewards": [
            {"function": {"name": "accuracy"}},
            {"function": {"name": "repetition-penalty", "args": {"ngramSize": 2, "maxPenalty": -0.5}}},
            {"function": {"name": "soft-overlong-punishment", "args": {"softPunishCache": 16}}},
            {"function": {"name": "length-target", "args": {"target": 40, "tolerance": 5}}},
            {"function": {"name": "regex-match", "args": {"pattern": "^\\\\d+$", "fullMatch": True}}},
            {"model": {"fineTuneJobRef": {"name": "rm"}}},
        ]}},
    ),
    "chained base": finetunejob(model={"fineTuneJobRef": {"name": "sft"}}, dataset=PREF, objective={"type": "dpo"}),
}  # fmt: skip

INVALID = [
    ("ppo", finetunejob(dataset=PROMPTS, objective={"type": "ppo"}), "spec.objective.type", "grpo or rloo"),
    ("model without a source", finetunejob(model={"task": "causal-lm"}), "spec.model.uri", "fineTuneJobRef"),
    ("reward model numLabels 2", finetunejob(model={**RM_MODEL, "numLabels": 2}, dataset=PREF, objective={"type": "reward"}),
     "spec.model.numLabels", "one output"),
    ("grpo on preference pairs", finetunejob(dataset=PREF, objective={"type": "grpo", "rl": {"rewards": [FUNCTION]}}),
     "spec.objective.type", "prompt"),
    ("prompts for sft", finetunejob(dataset=PROMPTS), "spec.dataset.format", "grpo or rloo"),
    ("grpo needs causal-lm", finetunejob(model=RM_MODEL | {"numLabels": 2}, dataset=PROMPTS,
     objective={"type": "grpo", "rl": {"rewards": [FUNCTION]}}), "spec.objective.type", "causal-lm"),
    ("a bad regex", finetunejob(dataset=PROMPTS, objective={"type": "grpo", "rl": {"rewards": [
        {"function": {"name": "regex-match", "args": {"pattern": "(unclosed"}}}]}}),
     "spec.objective.rl.rewards[0].function.args.pattern", "regular expression"),
    ("a positive repetition penalty", finetunejob(dataset=PROMPTS, objective={"type": "grpo", "rl": {"rewards": [
        {"function": {"name": "repetition-penalty", "args": {"maxPenalty": 1}}}]}}),
     "spec.objective.rl.rewards[0].function.args.maxPenalty", "less than or equal to 0"),
    ("an argument of another function", finetunejob(dataset=PROMPTS, objective={"type": "grpo", "rl": {"rewards": [
        {"function": {"name": "think-format", "args": {"target": 3}}}]}}),
     "spec.objective.rl.rewards[0].function.args.target", "takes no argument"),
    ("one generation", finetunejob(dataset=PROMPTS, objective={"type": "grpo", "rl": {"rewards": [FUNCTION], "numGenerations": 1}}),
     "spec.objective.rl.numGenerations", "greater than or equal to 2"),
    ("reward model file:// in a cluster", finetunejob(dataset=PROMPTS, objective={"type": "grpo", "rl": {"rewards": [
        {"model": {"uri": "file:///models/rm"}}]}}), "spec.objective.rl.rewards[0].model.uri", "kubetune train --local"),
]  # fmt: skip


@pytest.mark.parametrize("doc", list(VALID.values()), ids=list(VALID))
def test_valid(doc):
    result = validate_document(doc)
    assert result.ok, result.problems


@pytest.mark.parametrize(("doc", "path", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_names_the_field_and_what_to_do(doc, path, words):
    problems = validate_document(doc).problems
    assert any(p.path == path and words in p.message for p in problems), problems


def test_a_local_run_may_use_a_file_reward_model():
    doc = finetunejob(
        dataset={"uri": "file:///data/prompts.jsonl", "format": "prompt"},
        objective={"type": "grpo", "rl": {"rewards": [{"model": {"uri": "file:///models/rm"}}]}},
        output={},
    )
    assert validate_document(doc, TARGET_LOCAL).ok


def test_chained_references_are_listed_for_the_operator():
    from kubetune.reconcile import chains

    job = validate_document(VALID["grpo, auto format, every function"]).obj
    assert [r.name for r in chains.references(job) if r.role == "reward-model"] == ["rm"]
