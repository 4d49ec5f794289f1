"""spec.objective: what a FineTuneJob optimizes (sft, dpo, kto, reward, grpo, rloo) and its settings.

The reward functions of grpo/rloo are named here (kebab-case) with the arguments each one takes, so
``kubetune validate`` and the operator check them before a pod starts; the trainer implements them
(kubetune_trainer.rewards). docs/objectives.md lists them for users.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, ValidationError, field_validator, model_validator

from .common import KubeModel, LocalObjectReference, Problem, raise_problems
from .uris import URIError, parse_uri

ObjectiveType = Literal["sft", "dpo", "kto", "reward", "grpo", "rloo"]
RL_OBJECTIVES = ("grpo", "rloo")
PPO_REFUSAL = (
    "ppo is not supported: PPO left TRL (its PPOTrainer was removed); grpo or rloo with a reward model "
    "(objective.rl.rewards[].model) does the same job: set objective.type to grpo or rloo"
)
REWARD_MODEL_SCHEMES = ("hf", "pvc", "s3", "file")


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
                    "rule": "!has(self.type) || !(self.type in ['grpo', 'rloo']) || (has(self.rl) && has(self.rl.rewards) && size(self.rl.rewards) > 0)",
                    "message": "objective.type grpo and rloo need at least one reward in objective.rl.rewards",
                    "fieldPath": ".rl.rewards",
                }
            ]
        }
    }

    type: ObjectiveType = "sft"
    """sft, dpo (preference data), kto (unpaired-preference data), reward (a reward model from preference data),
    grpo or rloo (online RL on prompts with objective.rl.rewards). ppo left TRL: use grpo or rloo."""
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

    def fine_tune_job_refs(self) -> list[str]:
        """Names of the FineTuneJobs whose reward models this objective uses."""
        if self.type not in RL_OBJECTIVES:
            return []
        return [
            r.model.fine_tune_job_ref.name
            for r in self.rl.rewards
            if r.model is not None and r.model.fine_tune_job_ref is not None
        ]


# ------------------------------------------------------------------------ rules across spec fields

# What each objective trains on: (task, dataset formats). "auto" is detected by the trainer from the columns.
OBJECTIVE_DATA: dict[str, tuple[str, tuple[str, ...]]] = {
    "dpo": ("causal-lm", ("preference",)),
    "kto": ("causal-lm", ("unpaired-preference",)),
    "reward": ("sequence-classification", ("preference",)),
    "grpo": ("causal-lm", ("auto", "prompt", "messages", "prompt-completion")),
    "rloo": ("causal-lm", ("auto", "prompt", "messages", "prompt-completion")),
}
# Formats only some objectives read.
FORMAT_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "preference": ("dpo", "reward"),
    "unpaired-preference": ("kto",),
    "prompt": RL_OBJECTIVES,
}

# CEL twins of objective_problems (the API server checks these; FINETUNEJOB_SPEC_CEL includes them).
OBJECTIVE_SPEC_CEL: list[JsonValue] = [
    {
        "rule": "self.objective.type != 'kto' || (self.dataset.format == 'unpaired-preference' && self.model.task == 'causal-lm')",
        "message": "objective.type kto needs dataset.format unpaired-preference and model.task causal-lm",
        "fieldPath": ".objective.type",
    },
    {
        "rule": "self.objective.type != 'reward' || (self.dataset.format == 'preference' && self.model.task == 'sequence-classification')",
        "message": "objective.type reward needs dataset.format preference and model.task sequence-classification",
        "fieldPath": ".objective.type",
    },
    {
        "rule": "self.objective.type != 'reward' || !has(self.model.numLabels) || self.model.numLabels == 1",
        "message": "a reward model has one output: set model.numLabels to 1 or leave it out",
        "fieldPath": ".model.numLabels",
    },
    {
        "rule": "!(self.objective.type in ['grpo', 'rloo']) || (self.model.task == 'causal-lm' && self.dataset.format in ['auto', 'prompt', 'messages', 'prompt-completion'])",
        "message": "objective.type grpo and rloo need model.task causal-lm and dataset.format prompt, messages, prompt-completion or auto",
        "fieldPath": ".dataset.format",
    },
    {
        "rule": "self.dataset.format != 'preference' || self.objective.type in ['dpo', 'reward']",
        "message": "dataset.format preference is read by objective.type dpo or reward",
        "fieldPath": ".dataset.format",
    },
    {
        "rule": "self.dataset.format != 'unpaired-preference' || self.objective.type == 'kto'",
        "message": "dataset.format unpaired-preference is read by objective.type kto",
        "fieldPath": ".dataset.format",
    },
    {
        "rule": "self.dataset.format != 'prompt' || self.objective.type in ['grpo', 'rloo']",
        "message": "dataset.format prompt (prompts only) is read by objective.type grpo or rloo",
        "fieldPath": ".dataset.format",
    },
]


def objective_problems(
    objective: ObjectiveSpec, task: str, data_format: str, num_labels: int | None, cluster: bool
) -> list[Problem]:
    """The rules tying spec.objective to spec.model and spec.dataset (paths relative to spec)."""
    problems: list[Problem] = []
    kind = objective.type
    if kind in OBJECTIVE_DATA:
        want_task, formats = OBJECTIVE_DATA[kind]
        if kind != "dpo" and (task != want_task or data_format not in formats):  # dpo: FineTuneJobSpec's rule
            problems.append(
                Problem(
                    "objective.type",
                    f"{kind} needs model.task {want_task} and dataset.format {' or '.join(formats)} "
                    f"(got task {task}, format {data_format})",
                )
            )
    if kind == "reward" and num_labels not in (None, 1):
        problems.append(
            Problem("model.numLabels", "a reward model has one output: set it to 1 or leave it out")
        )
    readers = FORMAT_OBJECTIVES.get(data_format)
    if readers is not None and kind not in readers:
        problems.append(
            Problem(
                "dataset.format",
                f"{data_format} data is read by objective.type {' or '.join(readers)}, not {kind}",
            )
        )
    if cluster and kind in RL_OBJECTIVES:
        for i, reward in enumerate(objective.rl.rewards):
            if reward.model is not None and (reward.model.uri or "").startswith("file://"):
                problems.append(
                    Problem(
                        f"objective.rl.rewards[{i}].model.uri",
                        "file:// works only with `kubetune train --local`; use hf://, pvc:// or s3://",
                    )
                )
    return problems
