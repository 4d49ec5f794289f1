"""What the online RL objectives (grpo.py and rloo.py in objectives/) share: prompts as data, objective.rl as
the arguments of TRL's config, and the rewards (rewards.py) handed to the trainer.

They sample objective.rl.numGenerations completions per prompt (up to maxCompletionLength tokens, at
temperature), score them with objective.rl.rewards (weighted sum) and push the policy towards the better ones;
objective.rl.beta > 0 adds a KL penalty towards the starting model. The trainers log reward, reward_std and kl,
which reporting.py turns into status.progress, console lines and Prometheus gauges.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import FineTuneJobSpec

from . import objective_data, rewards
from .errors import ConfigError
from .objectives.base import TrainerInputs, TRLObjective


class OnlineRL(TRLObjective):
    """An online RL objective: a TRL trainer that takes reward_funcs (GRPOTrainer, RLOOTrainer), on prompts, with
    objective.rl's settings."""

    def __init__(self, name: str, trl_config: str, trl_trainer: str):
        super().__init__(name, trl_config, trl_trainer, objective_data.prompt_rows, settings="rl")

    def config_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        rl = spec.objective.rl
        return {**rl.model_dump(exclude={"rewards"}), "reward_weights": [float(r.weight) for r in rl.rewards]}

    def trainer_kwargs(self, inputs: TrainerInputs) -> dict[str, Any]:
        if inputs.config is None:
            raise ConfigError(f"objective {self.name} builds its rewards from the whole trainer config")
        built = rewards.build(inputs.config, list(inputs.data.train.column_names))
        return {"reward_funcs": built.funcs, "reward_processing_classes": built.processing_classes}
