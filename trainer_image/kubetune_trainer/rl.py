"""Online RL objectives, grpo and rloo, through TRL's GRPOTrainer and RLOOTrainer; kto and reward through
KTOTrainer and RewardTrainer. objectives.py hands these objectives here: ``args_class``, ``objective_kwargs``
and ``build_trainer``.

grpo/rloo sample objective.rl.numGenerations completions per prompt (up to maxCompletionLength tokens, at
temperature), score them with objective.rl.rewards (weighted sum) and push the policy towards the better ones;
objective.rl.beta > 0 adds a KL penalty towards the starting model. The trainers log reward, reward_std and kl,
which reporting.py turns into status.progress, console lines and Prometheus gauges.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import RL_OBJECTIVES, FineTuneJobSpec, TrainerConfig

OBJECTIVES = ("kto", "reward", *RL_OBJECTIVES)


def handles(spec: FineTuneJobSpec) -> bool:
    return spec.objective.type in OBJECTIVES


def args_class(spec: FineTuneJobSpec):
    kind = spec.objective.type
    if kind == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    if kind == "rloo":
        from trl import RLOOConfig

        return RLOOConfig
    if kind == "kto":
        from trl import KTOConfig

        return KTOConfig
    from trl import RewardConfig

    return RewardConfig


def objective_kwargs(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The objective's own arguments of its TRL config class."""
    objective = spec.objective
    if objective.type in RL_OBJECTIVES:
        rl = objective.rl
        return {
            "num_generations": rl.num_generations,
            "max_completion_length": rl.max_completion_length,
            "temperature": rl.temperature,
            "beta": rl.beta,
            "reward_weights": [float(r.weight) for r in rl.rewards],
        }
    if objective.type == "kto":
        kto = objective.kto
        return {
            "beta": kto.beta,
            "desirable_weight": kto.desirable_weight,
            "undesirable_weight": kto.undesirable_weight,
            "max_length": spec.dataset.max_length,
        }
    return {
        "max_length": spec.dataset.max_length,
        "center_rewards_coefficient": objective.reward.center_rewards_coefficient,
    }


def build_trainer(config: TrainerConfig, args, model, tokenizer, data, callbacks, ref_model=None):
    """The TRL trainer of a kto, reward, grpo or rloo objective."""
    spec = config.job.spec
    common = dict(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    kind = spec.objective.type
    if kind == "reward":
        from trl import RewardTrainer

        return RewardTrainer(**common)
    if kind == "kto":
        from trl import KTOTrainer

        return KTOTrainer(ref_model=ref_model, **common)
    from . import rewards

    built = rewards.build(config, list(data.train.column_names))
    if kind == "grpo":
        from trl import GRPOTrainer

        return GRPOTrainer(
            reward_funcs=built.funcs, reward_processing_classes=built.processing_classes, **common
        )
    from trl import RLOOTrainer

    return RLOOTrainer(reward_funcs=built.funcs, reward_processing_classes=built.processing_classes, **common)
