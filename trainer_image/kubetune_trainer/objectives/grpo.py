"""grpo: Group Relative Policy Optimization with TRL's GRPOTrainer: each completion's advantage is its reward
against the others sampled for the same prompt (rl.py has what grpo and rloo share)."""

from ..rl import OnlineRL

OBJECTIVE = OnlineRL("grpo", "GRPOConfig", "GRPOTrainer")
