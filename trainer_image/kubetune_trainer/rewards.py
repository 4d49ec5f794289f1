"""The rewards of grpo/rloo (objective.rl.rewards): built-in reward functions and reward models.

Built-ins (kebab-case in the spec, arguments in camelCase; docs/objectives.md):
- accuracy, think-format, repetition-penalty, soft-overlong-punishment: TRL's (trl.rewards);
- length-target, regex-match: kubetune's, below.
Each is a callable with TRL's reward-function signature (prompts, completions, completion_ids, **columns) and
a ``__name__`` (TRL logs rewards/<name>/mean). Callable classes, not closures, so they pickle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import ResolvedModel, RLReward, TrainerConfig, reward_function_args
from kubetune.api.v1alpha1.objective import (
    LengthTargetArgs,
    RegexMatchArgs,
    RepetitionPenaltyArgs,
    SoftOverlongPunishmentArgs,
)

from .errors import ConfigError


def _text(completion: Any) -> str:
    """A completion's text: plain text, or the content of a conversational completion's messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _as_messages(completions: list) -> list[list[dict[str, str]]]:
    """TRL's accuracy/think-format functions read completion[0]['content']: give them that shape."""
    return [[{"role": "assistant", "content": _text(c)}] for c in completions]


class LengthTarget:
    """1.0 when the completion has `target` tokens (within `tolerance`), falling linearly beyond the tolerance
    to 0.0 at `target + tolerance` tokens away from the target."""

    __name__ = "length_target"

    def __init__(self, target: int, tolerance: int = 0):
        self.target, self.tolerance = target, tolerance

    def __call__(self, completion_ids: list[list[int]], **kwargs) -> list[float]:
        out = []
        for ids in completion_ids:
            off = max(0, abs(len(ids) - self.target) - self.tolerance)
            out.append(max(0.0, 1.0 - off / self.target))
        return out


class RegexMatch:
    """1.0 when the completion's text matches `pattern` (searched, or the whole stripped text), else 0.0."""

    __name__ = "regex_match"

    def __init__(self, pattern: str, full_match: bool = False, ignore_case: bool = False):
        self.pattern, self.full_match, self.ignore_case = pattern, full_match, ignore_case
        self._regex = self._compile()

    def _compile(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_regex"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)  # pattern, full_match, ignore_case (see __getstate__)
        self._regex = self._compile()

    def __call__(self, completions: list, **kwargs) -> list[float]:
        match = self._regex.fullmatch if self.full_match else self._regex.search
        return [1.0 if match(_text(c).strip() if self.full_match else _text(c)) else 0.0 for c in completions]


class MessageShaped:
    """A TRL function that reads conversational completions, usable with plain-text prompts too."""

    def __init__(self, func, name: str):
        self.func, self.__name__ = func, name

    def __call__(self, completions: list, **kwargs) -> list[float | None]:
        return self.func(completions=_as_messages(completions), **kwargs)


def builtin(name: str, args: dict[str, Any], max_completion_length: int):
    """The reward function NAME with ARGS (validated against the API's argument models)."""
    from trl import rewards as trl_rewards

    parsed = reward_function_args(name, args)
    if name == "accuracy":
        return MessageShaped(trl_rewards.accuracy_reward, "accuracy")
    if name == "think-format":
        return MessageShaped(trl_rewards.think_format_reward, "think_format")
    # each other name has its own arguments model (REWARD_FUNCTIONS): its type says which function it is
    if isinstance(parsed, RepetitionPenaltyArgs):
        return trl_rewards.get_repetition_penalty_reward(parsed.ngram_size, parsed.max_penalty)
    if isinstance(parsed, SoftOverlongPunishmentArgs):
        length = parsed.max_completion_length or max_completion_length
        cache = parsed.soft_punish_cache if parsed.soft_punish_cache is not None else max(1, length // 5)
        if cache > length:
            raise ConfigError(
                f"soft-overlong-punishment: softPunishCache ({cache}) exceeds maxCompletionLength ({length})"
            )
        return trl_rewards.get_soft_overlong_punishment(length, cache)
    if isinstance(parsed, LengthTargetArgs):
        return LengthTarget(parsed.target, parsed.tolerance)
    if isinstance(parsed, RegexMatchArgs):
        return RegexMatch(parsed.pattern, parsed.full_match, parsed.ignore_case)
    raise ConfigError(f"unknown reward function {name!r}")


# Dataset columns a built-in reads besides the completion (TRL passes extra columns as keyword arguments).
NEEDS_COLUMNS = {"accuracy": ("solution",)}


@dataclass
class Rewards:
    """What GRPOTrainer / RLOOTrainer take: reward_funcs, their tokenizers (None for functions) and weights."""

    funcs: list = field(default_factory=list)
    processing_classes: list = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def build(config: TrainerConfig, columns: list[str]) -> Rewards:
    """The rewards of objective.rl.rewards: functions built here, reward models loaded (chain.load_reward_model)."""
    from . import chain

    spec = config.job.spec
    rl = spec.objective.rl
    out = Rewards()
    for index, reward in enumerate(rl.rewards):
        where = f"objective.rl.rewards[{index}]"
        if reward.function is not None:
            name = reward.function.name
            missing = [c for c in NEEDS_COLUMNS.get(name, ()) if c not in columns]
            if missing:
                raise ConfigError(
                    f"{where}: {name} compares each completion with the dataset's {', '.join(missing)} column, "
                    f"which {spec.dataset.uri} does not have (columns: {', '.join(columns)}); map one with "
                    "dataset.columns or drop this reward"
                )
            out.funcs.append(builtin(name, reward.function.args, rl.max_completion_length))
            out.processing_classes.append(None)
            out.names.append(name)
        else:
            resolved = _reward_model(config, reward, where)
            model, tokenizer = chain.load_reward_model(resolved, spec.model.trust_remote_code)
            out.funcs.append(model)
            out.processing_classes.append(tokenizer)
            out.names.append(f"model:{resolved.uri}")
        out.weights.append(float(reward.weight))
    return out


def _reward_model(config: TrainerConfig, reward: RLReward, where: str) -> ResolvedModel:
    source = reward.model
    assert source is not None
    if source.uri is not None:
        return ResolvedModel(uri=source.uri)
    name = source.fine_tune_job_ref.name if source.fine_tune_job_ref else "?"
    resolved = (config.runtime.chain.reward_models if config.runtime.chain else {}).get(name)
    if resolved is None:
        raise ConfigError(
            f"{where}.model.fineTuneJobRef {name!r} was not resolved by the operator; run the FineTuneJob through "
            "the operator, or give the reward model's uri for a local run"
        )
    return resolved
