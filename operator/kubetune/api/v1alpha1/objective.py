"""spec.objective: what a FineTuneJob optimizes (sft, dpo, kto, reward, grpo, rloo) and its settings.

``OBJECTIVES`` is the one table of what each objective is: the model.task it trains (and implies when the user
leaves model.task out), the dataset formats it reads, its result kind and the metrics its trainer logs. The
API's enum, its CEL rules and ``kubetune validate``'s rules are generated from it, and the trainer reads it:
each objective's behaviour is one module, kubetune_trainer/objectives/NAME.py, registered against its entry
(tests/unit/test_objective_registry.py checks that each entry has exactly one module and each module an entry).

The reward functions of grpo/rloo are named here (kebab-case) with the arguments each one takes, so
``kubetune validate`` and the operator check them before a pod starts; the trainer implements them
(kubetune_trainer.rewards). docs/objectives.md lists them for users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, JsonValue, ValidationError, field_validator, model_validator

from .common import KubeModel, LocalObjectReference, Problem, raise_problems
from .uris import URIError, parse_uri


@dataclass(frozen=True)
class ObjectiveFacts:
    """What the API knows of one objective; kubetune_trainer/objectives/NAME.py implements it (the trainer it
    builds, the rows it reads)."""

    name: str
    """The value of objective.type."""
    summary: str
    """What it trains, in a few words (docs and messages)."""
    task: str | None = None
    """The model.task it trains, implied when the user leaves model.task out; None: any task (sft)."""
    formats: tuple[str, ...] | None = None
    """The dataset formats it reads, in the order auto detection tries them; None: those of model.task."""
    auto_format: bool = True
    """dataset.format auto is accepted (the trainer detects one of ``formats`` from the columns)."""
    num_labels: int | None = None
    """Outputs of the classifier it trains (model.numLabels left out means this)."""
    result_kind: str | None = None
    """status.result.kind of its result; None: the method's (adapter, full, prefix, prompt, ...)."""
    metrics: tuple[str, ...] = ()
    """What its trainer logs besides the loss (training logs, status.result.metrics with eval_ in front)."""
    rewards: bool = False
    """It samples completions and scores them with objective.rl.rewards (online RL)."""
    virtual_tokens: bool = False
    """prefix-tuning and prompt-tuning apply."""
    qlora: bool = False
    """qlora applies to its task although that task is not causal-lm or seq2seq (a causal LM's body under a
    score head)."""


DEFAULT_TASK = "causal-lm"
"""model.task when the user leaves it out and the objective implies none."""
RL_FORMATS = ("messages", "prompt-completion", "prompt")
RL_METRICS = ("reward", "reward_std")
OBJECTIVES: dict[str, ObjectiveFacts] = {
    facts.name: facts
    for facts in (
        ObjectiveFacts("sft", "supervised fine-tuning on the task's data", virtual_tokens=True),
        ObjectiveFacts(
            "dpo", "Direct Preference Optimization on preference pairs", task="causal-lm",
            formats=("preference",), auto_format=False,
            metrics=("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"),
        ),
        ObjectiveFacts(
            "kto", "Kahneman-Tversky Optimization on unpaired preferences", task="causal-lm",
            formats=("unpaired-preference",), auto_format=False, metrics=("rewards/margins", "kl"),
        ),
        ObjectiveFacts(
            "reward", "a reward model: a sequence classifier with one output, from preference pairs",
            task="sequence-classification", formats=("preference",), auto_format=False,
            num_labels=1, result_kind="reward-model", metrics=("accuracy", "margin", "mean_reward"), qlora=True,
        ),
        ObjectiveFacts(
            "grpo", "Group Relative Policy Optimization: online RL on prompts", task="causal-lm",
            formats=RL_FORMATS, metrics=RL_METRICS, rewards=True,
        ),
        ObjectiveFacts(
            "rloo", "REINFORCE Leave-One-Out: online RL on prompts", task="causal-lm",
            formats=RL_FORMATS, metrics=RL_METRICS, rewards=True,
        ),
    )
}  # fmt: skip
if TYPE_CHECKING:  # to a type checker it is a string; pydantic gets the enum of the table
    ObjectiveType = str
else:
    ObjectiveType = Literal[tuple(OBJECTIVES)]
RL_OBJECTIVES = tuple(name for name, facts in OBJECTIVES.items() if facts.rewards)
# The dataset formats each model.task reads (objective sft), in the order auto detection tries them.
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "causal-lm": ("messages", "instruction", "prompt-completion", "text"),
    "seq2seq": ("seq2seq", "instruction", "prompt-completion"),
    "sequence-classification": ("classification",),
    "token-classification": ("token-tags",),
    "masked-lm": ("text",),
    "question-answering": ("question-answering",),
}
QLORA_TASKS = ("causal-lm", "seq2seq")
VIRTUAL_TOKEN_METHODS = ("prefix-tuning", "prompt-tuning")
CLASSIFICATION_TASKS = ("sequence-classification", "token-classification")
PPO_REFUSAL = (
    "ppo is not supported: PPO left TRL (its PPOTrainer was removed); grpo or rloo with a reward model "
    "(objective.rl.rewards[].model) does the same job: set objective.type to grpo or rloo"
)
REWARD_MODEL_SCHEMES = ("hf", "pvc", "s3", "file")


def implied_task(objective: str) -> str:
    """model.task when the user leaves it out: the task OBJECTIVE trains (reward: sequence-classification),
    else causal-lm."""
    return OBJECTIVES[objective].task or DEFAULT_TASK


def format_readers(data_format: str) -> tuple[str, ...] | None:
    """The objectives that read DATA_FORMAT when no task reads it under sft (None: the tasks' formats)."""
    if any(data_format in formats for formats in TASK_FORMATS.values()):
        return None
    readers = tuple(name for name, facts in OBJECTIVES.items() if data_format in (facts.formats or ()))
    return readers or None


# The JSON-schema key of a default that depends on other fields (model.task: the objective's task). crdgen keeps
# it out of the CRD, so the API server leaves the field unset for the rules (TASK_CEL) and the models (which
# fill it in) to read, and shows it in the API reference.
DEFAULT_BY_RULES = "x-kubetune-default-by-rules"


def default_by_rules(schema: dict[str, Any]) -> None:
    """json_schema_extra of a field whose default the rules apply (see DEFAULT_BY_RULES)."""
    schema[DEFAULT_BY_RULES] = schema.pop("default")


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _words(values: tuple[str, ...], last: str = "or") -> str:
    return f" {last} ".join(values) if len(values) < 3 else f"{', '.join(values[:-1])} {last} {values[-1]}"


class DPOSpec(KubeModel):
    """Direct Preference Optimization settings."""

    beta: Annotated[float, Field(gt=0)] = 0.1
    """Strength of the KL penalty towards the reference model."""


class KTOSpec(KubeModel):
    """Kahneman-Tversky Optimization settings (unpaired preference data: prompt, completion, label)."""

    beta: Annotated[float, Field(gt=0)] = 0.1
    """Strength of the KL penalty towards the reference model."""
    desirable_weight: Annotated[float, Field(gt=0)] = 1.0
    """Weight of the losses of desirable (label true) completions."""
    undesirable_weight: Annotated[float, Field(gt=0)] = 1.0
    """Weight of the losses of undesirable (label false) completions."""


class RewardModelSpec(KubeModel):
    """Reward model training settings (a sequence classifier with one output, trained on preference pairs)."""

    center_rewards_coefficient: Annotated[float | None, Field(gt=0)] = None
    """Push the rewards' mean towards zero with this coefficient (TRL's center_rewards_coefficient)."""


# ------------------------------------------------------------------------------------ reward functions


class _Args(KubeModel):
    """Base of the arguments of a built-in reward function."""


class NoArgs(_Args):
    """This function takes no arguments."""


class RepetitionPenaltyArgs(_Args):
    """Arguments of repetition-penalty."""

    ngram_size: Annotated[int, Field(ge=1)] = 3
    """Size of the token n-grams counted."""
    max_penalty: Annotated[float, Field(le=0)] = -1.0
    """Reward of a fully repetitive completion (<= 0)."""


class SoftOverlongPunishmentArgs(_Args):
    """Arguments of soft-overlong-punishment."""

    max_completion_length: Annotated[int | None, Field(ge=1)] = None
    """Length (tokens) above which a completion gets -1; defaults to objective.rl.maxCompletionLength."""
    soft_punish_cache: Annotated[int | None, Field(ge=0)] = None
    """Tokens before the maximum where the penalty ramps from 0 to -1; defaults to a fifth of the maximum."""


class LengthTargetArgs(_Args):
    """Arguments of length-target."""

    target: Annotated[int, Field(ge=1)]
    """Wanted completion length in tokens (reward 1.0 there)."""
    tolerance: Annotated[int, Field(ge=0)] = 0
    """Lengths within this many tokens of the target also get 1.0; beyond, the reward falls linearly to 0 at
    target + tolerance tokens away from the target."""


class RegexMatchArgs(_Args):
    """Arguments of regex-match."""

    pattern: Annotated[str, Field(min_length=1)]
    """Python regular expression searched for in the completion text (reward 1.0 when found, else 0.0)."""
    full_match: bool = False
    """Require the whole completion (stripped) to match instead of searching in it."""
    ignore_case: bool = False
    """Match without regard to case."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        import re

        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"is not a valid regular expression: {error}") from None
        return pattern


# name -> (arguments model, what it does). TRL's functions first (trl.rewards), then kubetune's.
REWARD_FUNCTIONS: dict[str, tuple[type[_Args], str]] = {
    "accuracy": (NoArgs, "TRL accuracy_reward: 1.0 when the completion's answer equals the row's `solution` (math-verify)"),
    "think-format": (NoArgs, "TRL think_format_reward: 1.0 when the reasoning is enclosed in <think>...</think>"),
    "repetition-penalty": (RepetitionPenaltyArgs, "TRL get_repetition_penalty_reward: penalty for repeated n-grams"),
    "soft-overlong-punishment": (SoftOverlongPunishmentArgs, "TRL get_soft_overlong_punishment: penalty for overlong completions"),
    "length-target": (LengthTargetArgs, "kubetune: 1.0 at the target length in tokens, falling linearly away from it"),
    "regex-match": (RegexMatchArgs, "kubetune: 1.0 when the completion matches a regular expression"),
}  # fmt: skip
RewardFunctionName = Literal[
    "accuracy", "think-format", "repetition-penalty", "soft-overlong-punishment", "length-target", "regex-match"
]  # fmt: skip


def reward_function_args(name: str, args: dict[str, Any]) -> _Args:
    """The validated arguments of a built-in reward function (raises ValidationError)."""
    return REWARD_FUNCTIONS[name][0].model_validate(args)


class RewardFunctionSpec(KubeModel):
    """A built-in reward function (docs/objectives.md lists them and their arguments)."""

    name: RewardFunctionName
    """accuracy, think-format, repetition-penalty, soft-overlong-punishment, length-target or regex-match."""
    args: Annotated[
        dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    ] = Field(default_factory=dict)
    """Arguments of the function in camelCase, e.g. {ngramSize: 3} for repetition-penalty."""

    @model_validator(mode="after")
    def _check_args(self) -> RewardFunctionSpec:
        try:
            reward_function_args(self.name, self.args)
        except ValidationError as error:
            problems = []
            for item in error.errors(include_url=False):
                where = ".".join(str(p) for p in item["loc"])
                message = item["msg"].removeprefix("Value error, ")
                if item["type"] == "extra_forbidden":
                    allowed = ", ".join(
                        f.alias or n for n, f in REWARD_FUNCTIONS[self.name][0].model_fields.items()
                    )
                    message = f"{self.name} takes no argument {where!r}; its arguments: {allowed or 'none'}"
                elif item["type"] == "missing":
                    message = f"{self.name} needs this argument"
                problems.append(Problem(f"args.{where}" if where else "args", message))
            raise_problems(problems)
        return self


class RewardModelSource(KubeModel):
    """A sequence-classification reward model with one output: a URI or another FineTuneJob's result."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.uri) != has(self.fineTuneJobRef)",
                    "message": "set exactly one of uri and fineTuneJobRef",
                    "fieldPath": ".uri",
                }
            ]
        }
    }

    uri: Annotated[str | None, Field(min_length=1, max_length=2048)] = None
    """hf://ORG/NAME, pvc://CLAIM/PATH or s3://BUCKET/PREFIX of a reward model."""
    fine_tune_job_ref: LocalObjectReference | None = None
    """A FineTuneJob (same namespace) with objective reward whose result is the reward model."""

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_uri(value, REWARD_MODEL_SCHEMES)
            except URIError as error:
                raise ValueError(str(error)) from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RewardModelSource:
        if (self.uri is None) == (self.fine_tune_job_ref is None):
            raise_problems([Problem("uri", "set exactly one of uri and fineTuneJobRef")])
        return self


class RLReward(KubeModel):
    """One reward of grpo/rloo: a reward model or a built-in function, with a weight."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.model) != has(self.function)",
                    "message": "each reward needs exactly one of model and function",
                    "fieldPath": ".model",
                }
            ]
        }
    }

    model: RewardModelSource | None = None
    """A reward model (uri or fineTuneJobRef)."""
    function: RewardFunctionSpec | None = None
    """A built-in reward function."""
    weight: float = 1.0
    """Weight of this reward in the sum of rewards."""

    @model_validator(mode="after")
    def _one_kind(self) -> RLReward:
        if (self.model is None) == (self.function is None):
            has = "both" if self.model is not None else "neither"
            raise_problems(
                [Problem("model", f"each reward needs exactly one of model and function; this one has {has}")]
            )
        return self


class RLSpec(KubeModel):
    """Online reinforcement learning settings (grpo and rloo)."""

    rewards: Annotated[list[RLReward], Field(max_length=16)] = Field(default_factory=list)
    """The rewards (at least one): reward models and built-in functions, each with a weight."""
    num_generations: Annotated[int, Field(ge=2)] = 8
    """Completions sampled per prompt; the advantage compares them with each other."""
    max_completion_length: Annotated[int, Field(ge=1)] = 256
    """Maximum tokens generated per completion."""
    temperature: Annotated[float, Field(gt=0)] = 1.0
    """Sampling temperature of the generations."""
    beta: Annotated[float, Field(ge=0)] = 0.0
    """KL coefficient towards the reference model (0: no reference model is loaded)."""


class ObjectiveSpec(KubeModel):
    """What the training optimizes."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    # has(): the CRD's default ({}) of objective is checked against this rule too
                    "rule": f"!has(self.type) || !(self.type in {_cel_list(RL_OBJECTIVES)}) || (has(self.rl) && has(self.rl.rewards) && size(self.rl.rewards) > 0)",
                    "message": f"objective.type {_words(RL_OBJECTIVES, 'and')} need at least one reward in objective.rl.rewards",
                    "fieldPath": ".rl.rewards",
                }
            ]
        }
    }

    type: ObjectiveType = Field(
        "sft",
        description="; ".join(f"{f.name}: {f.summary}" for f in OBJECTIVES.values())
        + f". ppo left TRL: use {_words(RL_OBJECTIVES)}. docs/objectives.md says what each reads and implies.",
    )
    dpo: DPOSpec = Field(default_factory=DPOSpec)
    """DPO settings."""
    kto: KTOSpec = Field(default_factory=KTOSpec)
    """KTO settings."""
    reward: RewardModelSpec = Field(default_factory=RewardModelSpec)
    """Reward model settings."""
    rl: RLSpec = Field(default_factory=RLSpec)
    """GRPO / RLOO settings."""

    @field_validator("type", mode="before")
    @classmethod
    def _refuse_ppo(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() == "ppo":
            raise ValueError(PPO_REFUSAL)
        return value

    @model_validator(mode="after")
    def _check_rl(self) -> ObjectiveSpec:
        if self.type in RL_OBJECTIVES and not self.rl.rewards:
            raise_problems(
                [
                    Problem(
                        "rl.rewards",
                        f"objective {self.type} needs at least one reward: a reward model "
                        "({model: {uri: ...}} or {model: {fineTuneJobRef: {name: ...}}}) or a built-in function "
                        "({function: {name: ...}})",
                    )
                ]
            )
        return self


# ------------------------------------------------------------------------ rules across spec fields
# Generated from OBJECTIVES, twice: as CEL for the API server (OBJECTIVE_SPEC_CEL, part of the FineTuneJob spec's
# rules) and as Python for `kubetune validate` and the operator (objective_problems). Paths are relative to spec.


def _objectives(keep: Callable[[ObjectiveFacts], bool]) -> tuple[str, ...]:
    return tuple(name for name, facts in OBJECTIVES.items() if keep(facts))


def _type_in(names: tuple[str, ...]) -> str:
    return f"self.objective.type in {_cel_list(names)}"


def _task_cel() -> str:
    expression = f"'{DEFAULT_TASK}'"
    implied: dict[str, tuple[str, ...]] = {}
    for facts in OBJECTIVES.values():
        if facts.task not in (None, DEFAULT_TASK):
            implied[facts.task] = (*implied.get(facts.task, ()), facts.name)
    for task, names in sorted(implied.items()):
        expression = f"({_type_in(names)} ? '{task}' : {expression})"
    return f"(has(self.model.task) ? self.model.task : {expression})"


# model.task as the API server must read it: left out, it is the task the objective implies. The CRD gives
# model.task no default (the server would fill in causal-lm before the rules run and a reward model would be
# refused), so every FineTuneJob rule reads this expression where it says self.model.task.
TASK_CEL = _task_cel()


def implied_task_cel(rules: list[JsonValue]) -> list[JsonValue]:
    """RULES with self.model.task read as TASK_CEL (once: the FineTuneJob spec's schema applies it to all its
    rules, OBJECTIVE_SPEC_CEL's included)."""
    out: list[JsonValue] = []
    for rule in rules:
        text = rule.get("rule") if isinstance(rule, dict) else None
        if isinstance(rule, dict) and isinstance(text, str):
            rule = {**rule, "rule": text.replace("self.model.task", TASK_CEL)}
        out.append(rule)
    return out


def accepted_formats(facts: ObjectiveFacts) -> tuple[str, ...]:
    """The dataset.format values an objective with a fixed task accepts (auto where it detects its formats)."""
    return (("auto",) if facts.auto_format else ()) + (
        facts.formats or TASK_FORMATS[facts.task or DEFAULT_TASK]
    )


def _outputs(count: int) -> str:
    return "one output" if count == 1 else f"{count} outputs"


def _by_task_and_formats() -> dict[tuple[str, tuple[str, ...]], tuple[str, ...]]:
    """(task, accepted formats) -> the objectives with a fixed task that read them (one CEL rule each)."""
    groups: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
    for facts in OBJECTIVES.values():
        if facts.task is not None:
            key = (facts.task, accepted_formats(facts))
            groups[key] = (*groups.get(key, ()), facts.name)
    return groups


# A format no task reads under sft -> the objectives that read it.
FORMAT_OBJECTIVES = {
    fmt: readers
    for fmt in dict.fromkeys(f for facts in OBJECTIVES.values() for f in facts.formats or ())
    if (readers := format_readers(fmt))
}
_LABELED = _objectives(lambda f: f.num_labels is not None)
_QLORA = _objectives(lambda f: f.qlora)
_VIRTUAL_TOKENS = _objectives(lambda f: f.virtual_tokens)


def _rule(rule: str, message: str, field_path: str) -> JsonValue:
    return {"rule": rule, "message": message, "fieldPath": field_path}


def _objective_cel() -> list[JsonValue]:
    rules = [
        _rule(
            f"!({_type_in(names)}) || (self.model.task == '{task}' && self.dataset.format in {_cel_list(formats)})",
            f"objective.type {_words(names, 'and')} need{'s' if len(names) == 1 else ''} model.task {task} (leave it "
            f"out to get it) and dataset.format {_words(formats)}",
            ".objective.type",
        )
        for (task, formats), names in _by_task_and_formats().items()
    ]
    rules += [
        _rule(
            f"self.objective.type != '{f.name}' || !has(self.model.numLabels) || self.model.numLabels == {f.num_labels}",
            f"objective.type {f.name} trains a model with {_outputs(f.num_labels)}: set model.numLabels to "
            f"{f.num_labels} or leave it out",
            ".model.numLabels",
        )
        for f in OBJECTIVES.values()
        if f.num_labels is not None
    ]
    rules += [
        _rule(
            f"!(self.model.task in {_cel_list(CLASSIFICATION_TASKS)}) || has(self.model.numLabels) || {_type_in(_LABELED)}",
            f"model.numLabels is required for {_words(CLASSIFICATION_TASKS, 'and')}",
            ".model.numLabels",
        ),
        _rule(
            f"self.method.type != 'qlora' || self.model.task in {_cel_list(QLORA_TASKS)} || {_type_in(_QLORA)}",
            f"method.type qlora works only with model.task {_words(QLORA_TASKS)}",
            ".method.type",
        ),
        _rule(
            f"!(self.method.type in {_cel_list(VIRTUAL_TOKEN_METHODS)}) || {_type_in(_VIRTUAL_TOKENS)}",
            f"{_words(VIRTUAL_TOKEN_METHODS, 'and')} support only objective.type {_words(_VIRTUAL_TOKENS)}",
            ".objective.type",
        ),
    ]
    rules += [
        _rule(
            f"self.dataset.format != '{fmt}' || {_type_in(readers)}",
            f"dataset.format {fmt} is read by objective.type {_words(readers)}",
            ".dataset.format",
        )
        for fmt, readers in FORMAT_OBJECTIVES.items()
    ]
    return rules


# The CEL twins of objective_problems (FINETUNEJOB_SPEC_CEL includes them).
OBJECTIVE_SPEC_CEL = _objective_cel()  # fmt: skip


def objective_problems(
    objective: ObjectiveSpec,
    *,
    task: str,
    data_format: str,
    num_labels: int | None,
    method: str,
    cluster: bool,
) -> list[Problem]:
    """The rules tying spec.objective to spec.model, spec.dataset and spec.method (the Python twins of
    OBJECTIVE_SPEC_CEL; TASK is model.task after the objective's default)."""
    facts = OBJECTIVES[objective.type]
    name = facts.name
    problems: list[Problem] = []
    if facts.task is not None:
        formats = accepted_formats(facts)
        wrong = (
            [f"model.task {task} (leave model.task out: {name} implies {facts.task})"]
            if task != facts.task
            else []
        )
        wrong += [f"dataset.format {data_format}"] if data_format not in formats else []
        if wrong:
            problems.append(
                Problem(
                    "objective.type",
                    f"{name} needs model.task {facts.task} and dataset.format {_words(formats)}; "
                    f"got {' and '.join(wrong)}",
                )
            )
    if facts.num_labels is not None and num_labels not in (None, facts.num_labels):
        problems.append(
            Problem(
                "model.numLabels",
                f"objective.type {name} trains a model with {_outputs(facts.num_labels)}: set it to "
                f"{facts.num_labels} or leave it out",
            )
        )
    if task in CLASSIFICATION_TASKS and num_labels is None and facts.num_labels is None:
        problems.append(
            Problem("model.numLabels", f"required for model.task {task}: set the number of classes")
        )
    if method == "qlora" and task not in QLORA_TASKS and not facts.qlora:
        problems.append(
            Problem(
                "method.type", f"qlora works only with model.task {_words(QLORA_TASKS)}, not {task}; use lora"
            )
        )
    if method in VIRTUAL_TOKEN_METHODS and not facts.virtual_tokens:
        problems.append(
            Problem("objective.type", f"{method} supports only objective {_words(_VIRTUAL_TOKENS)}")
        )
    readers = format_readers(data_format)
    if readers is not None and name not in readers:
        problems.append(
            Problem(
                "dataset.format",
                f"{data_format} data is read by objective.type {_words(readers)}, not {name}",
            )
        )
    if cluster and facts.rewards:
        for i, reward in enumerate(objective.rl.rewards):
            if reward.model is not None and (reward.model.uri or "").startswith("file://"):
                problems.append(
                    Problem(
                        f"objective.rl.rewards[{i}].model.uri",
                        "file:// works only with `kubetune train --local`; use hf://, pvc:// or s3://",
                    )
                )
    return problems
