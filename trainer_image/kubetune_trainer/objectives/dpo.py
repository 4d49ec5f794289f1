"""dpo: Direct Preference Optimization on preference pairs (prompt, chosen, rejected) with TRL's DPOTrainer;
objective.dpo.beta holds the policy near the reference (the base with the adapter off, or a frozen copy)."""

from .. import objective_data
from .base import TRLObjective

OBJECTIVE = TRLObjective(
    "dpo", "DPOConfig", "DPOTrainer", objective_data.preference_rows, settings="dpo", reference_model=True
)
