"""rloo: REINFORCE Leave-One-Out with TRL's RLOOTrainer: each completion's baseline is the mean reward of the
other completions of its prompt (rl.py has what grpo and rloo share)."""

from ..rl import OnlineRL

OBJECTIVE = OnlineRL("rloo", "RLOOConfig", "RLOOTrainer")
