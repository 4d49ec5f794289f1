"""The built-in reward functions of grpo/rloo, called the way TRL calls them (plain and conversational
completions, token ids), and the checks made before a run starts."""

from __future__ import annotations

import pickle

import pytest

from kubetune_trainer import rewards
from kubetune_trainer.errors import ConfigError

from .toy import job_config

pytestmark = pytest.mark.trainer


def test_regex_match_on_plain_and_conversational_completions():
    fn = rewards.builtin("regex-match", {"pattern": r"\bParis\b"}, 64)
    assert fn(completions=[" Paris.", " Lyon", "paris"]) == [1.0, 0.0, 0.0]
    chat = [[{"role": "assistant", "content": "It is Paris"}], [{"role": "assistant", "content": "Rome"}]]
    assert fn(completions=chat) == [1.0, 0.0]
    strict = rewards.builtin("regex-match", {"pattern": "paris", "fullMatch": True, "ignoreCase": True}, 64)
    assert strict(completions=[" Paris ", "Paris!"]) == [1.0, 0.0]
    assert pickle.loads(pickle.dumps(strict))(completions=["PARIS"]) == [1.0]  # TRL may ship it to a worker
    assert fn.__name__ == "regex_match"


def test_length_target_peaks_at_the_target():
    fn = rewards.builtin("length-target", {"target": 4, "tolerance": 1}, 64)
    ids = [[1] * n for n in (0, 2, 3, 4, 5, 6, 8, 12)]
    assert fn(completion_ids=ids) == [
        0.25,
        0.75,
        1.0,
        1.0,
        1.0,
        0.75,
        0.25,
        0.0,
    ]  # 0 at target + tolerance away


def test_trl_functions_through_kubetune_names():
    think = rewards.builtin("think-format", {}, 64)
    assert think(completions=["<think>\nhmm\n</think>\n42", "42"]) == [1.0, 0.0]
    repetition = rewards.builtin("repetition-penalty", {"ngramSize": 2, "maxPenalty": -1.0}, 64)
    assert repetition(completion_ids=[[1, 2, 3, 4], [5, 5, 5, 5, 5]]) == [0.0, -0.75]
    overlong = rewards.builtin("soft-overlong-punishment", {"softPunishCache": 20}, 100)
    assert overlong(completion_ids=[[1] * 50, [1] * 90, [1] * 120]) == [0.0, -0.5, -1.0]
    accuracy = rewards.builtin("accuracy", {}, 64)
    assert accuracy(
        completions=[r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"], solution=[r"\frac{1}{3}"] * 2
    ) == [
        1.0,
        0.0,
    ]


def test_accuracy_without_a_solution_column_is_refused_before_training(assets, tmp_path):
    config = job_config(
        tmp_path,
        assets["llama"],
        tmp_path / "prompts.jsonl",
        dataset={"format": "prompt"},
        objective={"type": "grpo", "rl": {"rewards": [{"function": {"name": "accuracy"}}]}},
    )
    with pytest.raises(ConfigError, match="solution column"):
        rewards.build(config, ["prompt"])
    built = rewards.build(config, ["prompt", "solution"])
    assert built.names == ["accuracy"] and built.weights == [1.0] and built.processing_classes == [None]
