"""The evaluation gate of one run (spec.evaluation), as the training code uses it:

1. ``Gatekeeper(config, ...)`` before training: the evaluation data; ``measure_base(model)`` measures the
   base model (compareWithBase) before the first step, once per run (kept in OUTPUT/evaluation/ so a
   resumed attempt does not measure it again);
2. ``judge(model)`` after training: the result's metrics against the gates (main process; every rank learns
   the verdict), reported to status.evaluation (or the console);
3. ``result_config(config)``: where the result is written: the output as usual when it passed; when it
   failed, OUTPUT/rejected/RUN_ID, so the promoted result a ModelServe may serve stays where it is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import EvaluationStatus, ModelSpec, TrainerConfig

from . import evaluation, reporting, world

log = logging.getLogger("kubetune_trainer.gatekeeper")

BASE_CACHE = "evaluation"


@dataclass
class Verdict:
    status: EvaluationStatus
    passed: bool


class Gatekeeper:
    def __init__(
        self, config: TrainerConfig, model_spec: ModelSpec, tokenizer, job_eval: Any, job_samples: list
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.main = reporting.is_main_process()
        self.sets = (
            evaluation.eval_sets(config, model_spec, tokenizer, job_eval, job_samples) if self.main else []
        )
        self.base: evaluation.Measured | None = None

    @property
    def spec(self):
        spec = self.config.job.spec.evaluation
        assert spec is not None
        return spec

    def _cache(self) -> Path:
        return Path(self.config.runtime.output_dir) / BASE_CACHE / f"base-{self.config.runtime.run_id}.json"

    def measure_base(self, model) -> None:
        """The base model's metrics (compareWithBase), before training changes the model."""
        if not self.spec.compare_with_base or not self.main:
            return
        cache = self._cache()
        if cache.exists():
            saved = json.loads(cache.read_text())
            self.base = evaluation.Measured(saved["values"], saved["higherIsBetter"])
            log.info(
                "base model metrics of run %s (measured before): %s",
                self.config.runtime.run_id,
                saved["values"],
            )
            return
        with evaluation.as_base(model) as base:
            self.base = evaluation.measure(self.config, base, self.tokenizer, self.sets)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(
            json.dumps({"values": self.base.values, "higherIsBetter": self.base.higher_is_better})
        )
        _say(f"evaluation: base model {_figures(self.base.values)}")

    def judge(self, model) -> Verdict:
        """The trained MODEL against the gates; every rank returns the same verdict."""
        status = None
        passed = True
        if self.main:
            result = evaluation.measure(self.config, model, self.tokenizer, self.sets)
            _say(f"evaluation: result {_figures(result.values)}")
            status, passed = evaluation.status(self.config, result, self.base)
            report(self.config, status)
        failed = world.agree(not passed)  # only the main process measured: the others learn its verdict
        if status is None:
            status = EvaluationStatus(passed=not failed, config_hash=self.config.runtime.run_id)
        return Verdict(status, not failed)


def _say(line: str) -> None:
    print(line, flush=True)


def _figures(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(values.items())) or "(nothing measured)"


def result_config(config: TrainerConfig, passed: bool) -> TrainerConfig:
    """CONFIG with the result's location: unchanged when it passed; OUTPUT/rejected/RUN_ID when it failed."""
    if passed:
        return config
    runtime = config.runtime
    sub = f"{evaluation.REJECTED}/{runtime.run_id}"
    oci = bool(runtime.output_uri and runtime.output_uri.startswith("oci://"))
    update = {
        "output_dir": str(Path(runtime.output_dir) / sub),
        # an oci:// output is a reference, not a folder: the rejected result stays on its checkpoint storage
        "output_uri": f"{runtime.output_uri.rstrip('/')}/{sub}"
        if runtime.output_uri and not oci
        else runtime.output_uri,
    }
    if runtime.checkpoint_uri:
        update["checkpoint_uri"] = f"{runtime.checkpoint_uri.rstrip('/')}/{sub}"
    moved = runtime.model_copy(update=update)
    return config.model_copy(update={"runtime": moved})


def report(config: TrainerConfig, status: EvaluationStatus) -> None:
    """status.evaluation in a cluster; the verdicts on the console everywhere."""
    body = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    if reporting.reports_status(config):
        reporting.StatusWriter(config).patch({"evaluation": body})
    _say(f"evaluation: {'PASSED' if status.passed else 'FAILED'}: {status.message}")
