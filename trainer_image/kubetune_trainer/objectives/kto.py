"""kto: Kahneman-Tversky Optimization on unpaired preferences (prompt, completion, label true/false) with TRL's
KTOTrainer; objective.kto weighs desirable and undesirable completions and holds the policy near the reference."""

from .. import objective_data
from .base import TRLObjective

OBJECTIVE = TRLObjective(
    "kto", "KTOConfig", "KTOTrainer", objective_data.unpaired_rows, settings="kto", reference_model=True
)
