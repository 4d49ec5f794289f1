"""reward: a reward model, a sequence classifier with one output (the API's table implies model.task and the
trainer numLabels 1), trained on preference pairs with TRL's RewardTrainer to score chosen above rejected. Its
result (kind reward-model) is a reward of grpo/rloo jobs (objective.rl.rewards[].model)."""

from .. import objective_data
from .base import TRLObjective

OBJECTIVE = TRLObjective(
    "reward", "RewardConfig", "RewardTrainer", objective_data.preference_rows, settings="reward"
)
