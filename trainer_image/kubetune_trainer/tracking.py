"""spec.tracking in the trainer: which transformers report_to integrations run, and their settings.

transformers' own callbacks do the reporting (TensorBoardCallback, MLflowCallback, WandbCallback); they
read their settings from the environment when the Trainer is built, so ``prepare`` sets those variables
(never overriding one the user already set through spec.env) and returns the TrainingArguments keyword
arguments. Credentials arrive as env from Secrets (kubetune.render.tracking), never through the config.

- TensorBoard: event files in OUTPUT/tensorboard (TENSORBOARD_LOGGING_DIR).
- MLflow: MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME (default NAMESPACE/NAME), tags naming the run.
- W&B: WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE; run files under OUTPUT/wandb (WANDB_DIR=OUTPUT).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import TrainerConfig

from .errors import ConfigError

TENSORBOARD_SUBDIR = "tensorboard"
WANDB_SUBDIR = "wandb"

# The Python package each tracker needs in the trainer image.
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def tensorboard_dir(config: TrainerConfig) -> Path:
    return Path(config.runtime.output_dir) / TENSORBOARD_SUBDIR


def experiment_name(config: TrainerConfig) -> str:
    meta = config.job.metadata
    if config.job.spec.tracking.mlflow.experiment:
        return config.job.spec.tracking.mlflow.experiment
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name or "kubetune"


def run_name(config: TrainerConfig) -> str:
    """The run's name in every tracker: the FineTuneJob's name and its run id (the spec's config hash)."""
    return f"{config.job.metadata.name or 'kubetune'}-{config.runtime.run_id}"


def tracking_env(config: TrainerConfig) -> dict[str, str]:
    """The trackers' own environment variables for this run (without credentials)."""
    tracking = config.job.spec.tracking
    meta = config.job.metadata
    env: dict[str, str] = {}
    if tracking.tensorboard.enabled:
        env["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir(config))
    if tracking.mlflow.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking.mlflow.tracking_uri
        env["MLFLOW_EXPERIMENT_NAME"] = experiment_name(config)
        tags = {"kubetune.finetunejob": meta.name or "", "kubetune.run_id": config.runtime.run_id}
        if meta.namespace:
            tags["kubetune.namespace"] = meta.namespace
        env["MLFLOW_TAGS"] = json.dumps(tags, sort_keys=True)
    if tracking.wandb.project:
        env["WANDB_PROJECT"] = tracking.wandb.project
        if tracking.wandb.entity:
            env["WANDB_ENTITY"] = tracking.wandb.entity
        env["WANDB_MODE"] = tracking.wandb.mode
        env["WANDB_DIR"] = str(Path(config.runtime.output_dir))  # wandb adds its own wandb/ folder
        env["WANDB_RUN_GROUP"] = meta.name or "kubetune"
    return env


def missing_packages(trackers: list[str]) -> list[str]:
    return [PACKAGES[t] for t in trackers if importlib.util.find_spec(PACKAGES[t]) is None]


def prepare(config: TrainerConfig, environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """Set the trackers' env (user-set variables win) and return the TrainingArguments kwargs.

    Raises ConfigError naming spec.tracking when a tracker's package is not installed in this image."""
    environ = os.environ if environ is None else environ
    trackers = config.job.spec.tracking.trackers()
    if not trackers:
        return {"report_to": []}
    missing = missing_packages(trackers)
    if missing:
        raise ConfigError(
            f"spec.tracking turns on {', '.join(trackers)}, but the trainer image lacks the Python "
            f"package(s) {', '.join(missing)}: use an image with them installed or turn that tracker off"
        )
    for name, value in tracking_env(config).items():
        environ.setdefault(name, value)
    if "tensorboard" in trackers:
        Path(environ["TENSORBOARD_LOGGING_DIR"]).mkdir(parents=True, exist_ok=True)
    return {"report_to": trackers, "run_name": run_name(config)}
