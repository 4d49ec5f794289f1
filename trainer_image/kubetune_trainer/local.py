"""`kubetune train -f FILE --local [--output DIR]`: the pods' training code, run on this machine."""

from __future__ import annotations

import logging
import sys
import time

from .errors import ConfigError, Preempted, TrainerError


def _print(*args) -> None:
    print(*args, flush=True)


def run_local(manifest_path: str, output_dir: str | None = None) -> int:
    """Train the FineTuneJob in manifest_path here; print metrics, where the result is and a sample. Exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .config import load_manifest, local_config

    try:
        job = load_manifest(manifest_path)
        config = local_config(job, output_dir)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    spec = job.spec
    _print(
        f"kubetune: training {job.metadata.name} locally: {spec.model.task} {spec.method.type}/{spec.objective.type} "
        f"of {spec.model.uri} on {spec.dataset.uri}"
    )
    _print(f"kubetune: output in {config.runtime.output_dir}")
    started = time.monotonic()
    try:
        from .predict import sample_prediction
        from .train import run_training

        outcome = run_training(config)
    except Preempted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return Preempted.exit_code
    except TrainerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    result = outcome.result
    # The result and its metrics were just printed by reporting.report_result (the same figures a cluster
    # run writes to status.result).
    _print(f"kubetune: finished in {elapsed:.1f}s")
    _print(f"lineage: {config.runtime.output_dir}/lineage.json (dataset {result.get('datasetDigest')})")
    try:
        sample = sample_prediction(
            spec.model.task, outcome.model, outcome.tokenizer, outcome.data.samples, outcome.data.label_names
        )
    except Exception as error:  # a sample is a courtesy; the run itself succeeded
        sample = None
        _print(f"(no sample prediction: {type(error).__name__}: {error})")
    if sample:
        _print("sample prediction:")
        _print(f"  input:    {sample['input']!r}")
        _print(f"  output:   {sample['output']!r}")
        _print(f"  expected: {sample['expected']!r}")
    return 0
