"""`kubetune train -f FILE --local [--output DIR] [--processes N]`: the pods' training code, run on this machine.

One process trains here, in this process. ``--processes N`` (N > 1) goes through the pods' launch code
(launch.py): accelerate/torchrun starts N ``kubetune-trainer train`` processes, over N GPUs or, without
GPUs, on the CPU (DDP with gloo); rank 0 writes the result, and the world size the run trained with (from
its lineage) is printed at the end."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from .errors import ConfigError, Preempted, TrainerError


def _print(*args) -> None:
    print(*args, flush=True)


def run_local(manifest_path: str, output_dir: str | None = None, processes: int = 1) -> int:
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
    if processes != 1:
        return run_processes(config, processes)
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


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_processes(config, processes: int) -> int:
    """N training processes through the pods' launch code; prints the world size the run trained with."""
    from kubetune.api.v1alpha1.trainerconfig import ENV_CONFIG

    from . import artifacts, launch

    launch_dir = Path(tempfile.mkdtemp(prefix="kubetune-local-"))
    try:
        facts = launch.local_facts(processes, _visible_gpus())
        # --local: the workers read a local config (file:// URIs, no status reporting)
        plan = launch.plan_for(
            config.job.spec, facts, str(launch_dir), [*launch.trainer_command(), "--local"]
        )
    except launch.LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    config_file = launch_dir / "config.json"
    # every field, None included (to_dict leaves unset optionals out, and metricsPort's default is a port)
    config_file.write_text(json.dumps(config.model_dump(by_alias=True, mode="json")))
    _print(f"kubetune: launching {plan.describe()}")
    started = time.monotonic()
    code = launch.start(plan, {**os.environ, ENV_CONFIG: str(config_file)})
    elapsed = time.monotonic() - started
    if code != 0:
        print(
            f"error: the training processes failed (exit code {code}) after {elapsed:.1f}s", file=sys.stderr
        )
        return code
    lineage_file = Path(config.runtime.output_dir) / artifacts.LINEAGE
    try:
        ran = json.loads(lineage_file.read_text()).get("distributed") or {}
    except (OSError, ValueError) as error:
        print(
            f"error: the run ended but its lineage is unreadable ({lineage_file}): {error}", file=sys.stderr
        )
        return 1
    _print(
        f"kubetune: finished in {elapsed:.1f}s with world size {ran.get('worldSize')} "
        f"({ran.get('strategy')}, backend {ran.get('backend')})"
    )
    if ran.get("replicasInSync") is False:
        print(
            "error: the processes ended with different weights (see distributed in lineage.json)",
            file=sys.stderr,
        )
        return 1
    _print(f"lineage: {lineage_file}")
    return 0
