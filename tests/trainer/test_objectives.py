"""Each objective module behind the one interface, without training: the config class and arguments it builds,
the rows its trainer reads, the model it implies, its result kind."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1 import OBJECTIVES, TARGET_LOCAL, DatasetSpec, FineTuneJob, ModelSpec
from kubetune_trainer import data as data_mod
from kubetune_trainer import objectives
from kubetune_trainer.errors import ConfigError, DataError

from .toy import write_jsonl

pytestmark = pytest.mark.trainer

COLUMNS = {"prompt", "completion", "chosen", "rejected", "label", "solution", "messages"}
DATA = {  # a dataset format each objective reads, and the columns its trainer gets
    "sft": ({"format": "prompt-completion"}, {"input_ids", "labels"}),
    "dpo": ({"format": "preference"}, {"prompt", "chosen", "rejected"}),
    "kto": ({"format": "unpaired-preference"}, {"prompt", "completion", "label"}),
    "reward": ({"format": "preference"}, {"prompt", "chosen", "rejected"}),
    "grpo": (
        {"format": "prompt-completion"},
        COLUMNS - {"completion"},
    ),  # the rest goes to the reward functions
    "rloo": ({"format": "messages"}, COLUMNS - {"messages"}),
}
CONFIGS = {"sft": "SFTConfig", "dpo": "DPOConfig", "kto": "KTOConfig", "reward": "RewardConfig",
           "grpo": "GRPOConfig", "rloo": "RLOOConfig"}  # fmt: skip


def missing_metrics(trainer, name: str) -> set[str]:
    """The metrics the API's table says objective NAME reports that its trainer did not log (training tests)."""
    logged = {key for entry in trainer.state.log_history for key in entry}
    return {m for m in OBJECTIVES[name].metrics if m not in logged and f"eval_{m}" not in logged}


def spec(objective: str, **dataset):
    rl = {"rl": {"rewards": [{"function": {"name": "think-format"}}], "numGenerations": 4}}
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "x"},
        "spec": {
            "model": {"uri": "hf://org/m"},
            "dataset": {"uri": "hf://org/d", **DATA[objective][0], **dataset},
            "objective": {"type": objective, **(rl if OBJECTIVES[objective].rewards else {})},
            "training": {"batchSize": 4},
            "output": {"uri": "pvc://models/x"},
        },
    }
    return FineTuneJob.model_validate(doc, context={"target": TARGET_LOCAL}).spec


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_builds_its_trl_config(name):
    s = spec(name)
    kwargs = objectives.training_arguments(s, "/tmp/kt-objectives", "fp32", has_eval=False, use_cpu=True)
    args = objectives.build_args(s, kwargs)
    assert type(args).__name__ == CONFIGS[name]
    assert args.per_device_train_batch_size == 4
    if OBJECTIVES[name].rewards:  # objective.rl's settings
        assert (args.num_generations, args.max_completion_length, args.reward_weights) == (4, 256, [1.0])
    else:
        assert args.max_length == 512  # dataset.maxLength
    if name == "kto":
        assert (args.beta, args.desirable_weight) == (0.1, 1.0)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_gives_its_trainer_its_rows(name, tmp_path, assets):
    from transformers import AutoTokenizer

    rows = [
        {"prompt": "The capital of France is", "completion": " Paris", "chosen": " Paris", "rejected": " Rome",
         "label": i % 2 == 0, "solution": "Paris",
         "messages": [{"role": "user", "content": "capital of France?"}, {"role": "assistant", "content": "Paris"}]}
        for i in range(4)
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    s = spec(name, uri=f"file://{path}")
    dataset = DatasetSpec.model_validate({**s.dataset.to_dict(), "maxLength": 32})
    tokenizer = AutoTokenizer.from_pretrained(assets["tokenizer"])
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    prepared = data_mod.prepare(dataset, s.model, tokenizer, 0, objectives.get(name))
    assert set(prepared.train.column_names) == DATA[name][1]
    if name == "rloo":  # messages: the conversation up to the assistant's turn is the prompt
        assert prepared.train[0]["prompt"] == [{"role": "user", "content": "capital of France?"}]


def test_an_objective_refuses_data_it_does_not_read(tmp_path, assets):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets["tokenizer"])
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": "a b c"}] * 3)
    model = ModelSpec(uri="file:///m")
    for name, fmt, words in (("dpo", "text", "does not fit objective dpo; use preference"),
                             ("sft", "prompt", "objective.type grpo or rloo reads")):  # fmt: skip
        dataset = DatasetSpec.model_validate({"uri": f"file://{path}", "format": fmt})
        with pytest.raises(DataError, match=words):
            data_mod.prepare(dataset, model, tokenizer, 0, objectives.get(name))


def test_the_model_and_result_an_objective_implies():
    reward = objectives.get("reward")
    model = spec("reward").model
    assert (model.task, model.num_labels) == ("sequence-classification", None)
    assert reward.model_spec(model).num_labels == 1  # one output: the reward
    assert reward.model_spec(model.model_copy(update={"num_labels": 1, "labels": ["score"]})).labels == [
        "score"
    ]
    assert reward.result_kind("adapter") == "reward-model"
    sft = objectives.get("sft")
    assert sft.model_spec(spec("sft").model) == spec("sft").model and sft.result_kind("prefix") == "prefix"
    assert objectives.get("dpo").needs_reference_model("full") and not objectives.get(
        "dpo"
    ).needs_reference_model("adapter")
    assert not objectives.get("grpo").needs_reference_model("full")  # rl.beta decides, inside TRL


def test_an_objective_without_a_module_is_named():
    with pytest.raises(ConfigError, match="objective.type ppo: this trainer has no module"):
        objectives.get("ppo")
