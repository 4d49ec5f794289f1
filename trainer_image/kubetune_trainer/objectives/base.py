"""What an objective is to the trainer: the interface each module of this package implements.

An objective is one module, ``objectives/NAME.py``, whose ``OBJECTIVE`` is an Objective (most often a
TRLObjective: a declaration) with the ``name`` of an entry of the API's table (kubetune.api.v1alpha1.OBJECTIVES). The table holds what the
API checks and documents: the task the objective trains, the formats it reads, its result kind, its metrics.
The module holds the behaviour: how a split becomes the rows its trainer reads (``rows``), the config class and
arguments (``config_class``, ``config_kwargs``), the trainer it builds (``build``), and what it measures after
training (``final_metrics``). The registry (objectives/__init__.py) finds the modules; train.py calls only this
interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import OBJECTIVES, FineTuneJobSpec, ModelSpec, TrainerConfig
from kubetune.api.v1alpha1.finetunejob import DatasetSpec
from kubetune.api.v1alpha1.objective import ObjectiveFacts

# A split (datasets.Dataset) and its name -> the rows the objective's trainer reads.
Rows = Callable[[Any, str], Any]
# (split, dataset format, dataset uri, split name) -> rows: the functions of objective_data.py.
RowMaker = Callable[[Any, str, str, str], Any]


@dataclass
class TrainerInputs:
    """What a trainer is built from."""

    spec: FineTuneJobSpec
    args: Any  # the TrainingArguments (or TRL config) of config_class
    model: Any
    tokenizer: Any
    data: Any  # data.PreparedData
    callbacks: list = field(default_factory=list)
    ref_model: Any = None
    config: TrainerConfig | None = None  # the whole trainer config (reward models of the chain)

    def common(self) -> dict[str, Any]:
        """The keyword arguments every transformers/TRL trainer takes."""
        return dict(
            model=self.model,
            args=self.args,
            train_dataset=self.data.train,
            eval_dataset=self.data.eval,
            processing_class=self.tokenizer,
            callbacks=self.callbacks,
        )


class Objective:
    """One objective's behaviour in the trainer (its facts: ``facts``, from the API's table)."""

    def __init__(self, name: str, *, reference_model: bool = False):
        self.name = name
        self.reference_model = reference_model
        """Its loss compares the policy with a frozen reference: full fine-tuning loads a second copy of the base
        (with an adapter, TRL uses the base with the adapter switched off)."""

    @property
    def facts(self) -> ObjectiveFacts:
        return OBJECTIVES[self.name]

    def rows(self, fmt: str, spec: DatasetSpec, tokenizer) -> Rows | None:
        """How a split of format FMT becomes the rows of this objective's trainer (None: the task's tokenization
        in data.py)."""
        return None

    def model_spec(self, model: ModelSpec) -> ModelSpec:
        """The model as this objective trains it: the outputs it implies where model.numLabels is left out."""
        if self.facts.num_labels is None or model.num_labels is not None:
            return model
        return model.model_copy(update={"num_labels": self.facts.num_labels})

    def needs_reference_model(self, method_kind: str) -> bool:
        """Whether train.py loads a frozen copy of the base as the reference (METHOD_KIND: the method's result)."""
        return self.reference_model and method_kind == "full"

    def config_class(self, spec: FineTuneJobSpec) -> type:
        """The TrainingArguments class (or TRL config) of its trainer."""
        raise NotImplementedError

    def config_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        """Its own arguments of config_class (spec.training's are common: objectives.training_arguments)."""
        return {}

    def build(self, inputs: TrainerInputs):
        """The trainer."""
        raise NotImplementedError

    def result_kind(self, method_kind: str) -> str:
        """status.result.kind: the table's (reward-model) or the method's (adapter, full, ...)."""
        return self.facts.result_kind or method_kind

    def final_metrics(self, trainer, tokenizer, data, spec: FineTuneJobSpec) -> dict[str, float]:
        """Metrics measured after training besides the trainer's own evaluation."""
        return {}


class TRLObjective(Objective):
    """An objective trained by one TRL trainer: TRL_TRAINER with its config TRL_CONFIG (names in ``trl``), on the
    rows ROWS makes of each split (objective_data.py). The fields of spec.objective.SETTINGS are arguments of
    TRL_CONFIG of the same names (objective.dpo.beta is DPOConfig's beta), besides dataset.maxLength."""

    def __init__(
        self, name: str, trl_config: str, trl_trainer: str, rows: RowMaker, *, settings: str, **options: Any
    ):
        super().__init__(name, **options)
        self.trl_config, self.trl_trainer, self.row_maker, self.settings = (
            trl_config,
            trl_trainer,
            rows,
            settings,
        )

    def rows(self, fmt: str, spec: DatasetSpec, tokenizer) -> Rows:
        return lambda ds, split: self.row_maker(ds, fmt, spec.uri, split)

    def config_class(self, spec: FineTuneJobSpec) -> type:
        import trl

        return getattr(trl, self.trl_config)

    def config_kwargs(self, spec: FineTuneJobSpec) -> dict[str, Any]:
        return {"max_length": spec.dataset.max_length, **getattr(spec.objective, self.settings).model_dump()}

    def trainer_kwargs(self, inputs: TrainerInputs) -> dict[str, Any]:
        """Its trainer's own keyword arguments besides TrainerInputs.common()."""
        return {"ref_model": inputs.ref_model} if self.reference_model else {}

    def build(self, inputs: TrainerInputs):
        import trl

        return getattr(trl, self.trl_trainer)(**inputs.common(), **self.trainer_kwargs(inputs))
