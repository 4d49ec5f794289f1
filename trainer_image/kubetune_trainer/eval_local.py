"""`kubetune eval -f FILE --local [--result DIR]`: evaluate an existing result against the FineTuneJob's
spec.evaluation on this machine, with the code the trainer runs after training (evaluation.py, gate.py).

The result is read from DIR (default: where `kubetune train --local` writes it): an adapter, prefix or prompt
(loaded on the base model), or a full model. With compareWithBase the base model is measured on the same data.
Prints every metric (result and base) and each gate's verdict; exit 0 when every gate passed, 1 when one failed.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .errors import ConfigError, TrainerError

ADAPTER_FILE = "adapter_config.json"


def _print(line: str = "") -> None:
    print(line, flush=True)


def run_eval(manifest_path: str, result_dir: str | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .config import load_manifest, local_config

    try:
        job = load_manifest(manifest_path)
        config = local_config(job, result_dir)
        if job.spec.evaluation is None:
            raise ConfigError(
                f"{manifest_path}: FineTuneJob/{job.metadata.name} has no spec.evaluation to run"
            )
        return _evaluate(config)
    except TrainerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _evaluate(config) -> int:
    from . import chain, evaluation, objectives
    from . import data as data_mod
    from . import model as model_mod

    spec = config.job.spec
    folder = Path(config.runtime.output_dir)
    if not (folder / "config.json").exists() and not (folder / ADAPTER_FILE).exists():
        raise TrainerError(
            f"{folder} holds no result (no config.json or {ADAPTER_FILE}); give it with --result DIR"
        )
    objective = objectives.for_spec(spec)
    model_spec = objective.model_spec(chain.base_model_spec(config))
    source = model_mod.resolve_source(model_spec)
    tokenizer = model_mod.load_tokenizer(model_spec, source)
    prepared = None
    if spec.evaluation.metrics and not spec.evaluation.datasets:
        prepared = data_mod.prepare(spec.dataset, model_spec, tokenizer, spec.training.seed, objective)
    sets = evaluation.eval_sets(
        config,
        model_spec,
        tokenizer,
        prepared.eval if prepared else None,
        prepared.samples if prepared else [],
    )
    adapter = (folder / ADAPTER_FILE).exists()
    base = model_mod.load_model(model_spec, source)
    if base.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        base.config.pad_token_id = tokenizer.pad_token_id
    _print(
        f"kubetune: evaluating {folder} ({'adapter on ' + str(model_spec.uri) if adapter else 'full model'})"
    )
    base_measured = None
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(folder))
        if spec.evaluation.compare_with_base:
            with evaluation.as_base(model) as plain:
                base_measured = evaluation.measure(config, plain, tokenizer, sets)
    else:
        if spec.evaluation.compare_with_base:
            base_measured = evaluation.measure(config, base, tokenizer, sets)
        result_source = model_mod.ModelSource(str(folder), None, f"file://{folder}", False)
        model = model_mod.load_model(model_spec, result_source)
    measured = evaluation.measure(config, model, tokenizer, sets)
    status, passed = evaluation.status(config, measured, base_measured)
    width = max([len(m.name) for m in status.metrics] + [6])
    _print(f"{'metric':<{width}}  {'result':>12}  {'base':>12}")
    for metric in status.metrics:
        base_text = "-" if metric.base is None else f"{metric.base:.6g}"
        result_text = "-" if metric.result is None else f"{metric.result:.6g}"
        _print(f"{metric.name:<{width}}  {result_text:>12}  {base_text:>12}")
    for verdict in status.gates:
        _print(f"gate {verdict.metric}: {'passed' if verdict.passed else 'FAILED'}: {verdict.message}")
    _print(f"evaluation: {'PASSED' if passed else 'FAILED'}: {status.message}")
    _print(json.dumps({"evaluation": status.model_dump(by_alias=True, mode="json", exclude_none=True)}))
    return 0 if passed else 1
