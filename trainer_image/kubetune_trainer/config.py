"""Load the TrainerConfig the operator rendered (in a pod) or build one for a local run."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from kubetune.api.v1alpha1 import (
    TARGET_CLUSTER,
    TARGET_LOCAL,
    FineTuneJob,
    TrainerConfig,
    TrainerRuntime,
    config_hash,
)
from kubetune.api.v1alpha1.trainerconfig import CONFIG_PATH, ENV_CONFIG

from .errors import ConfigError


def config_path() -> str:
    return os.environ.get(ENV_CONFIG) or CONFIG_PATH


def load_config(path: str | None = None, target: str = TARGET_CLUSTER) -> TrainerConfig:
    """Read the rendered config (YAML or JSON) from ``path``, $KUBETUNE_CONFIG or CONFIG_PATH; TARGET_LOCAL
    for the config of a ``kubetune train --local`` run (file:// URIs allowed)."""
    path = path or config_path()
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the trainer config {path}: {error.strerror or error}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"the trainer config {path} is not valid YAML/JSON: {error}") from None
    try:
        return TrainerConfig.model_validate(doc, context={"target": target})
    except ValidationError as error:
        raise ConfigError(f"the trainer config {path} is invalid:\n{error}") from None


def load_manifest(path: str) -> FineTuneJob:
    """The FineTuneJob in a manifest file (the first one when the file has several documents)."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "FineTuneJob"]
    if not jobs:
        raise ConfigError(f"{path} has no FineTuneJob (kind: FineTuneJob)")
    try:
        return FineTuneJob.model_validate(jobs[0], context={"target": TARGET_LOCAL})
    except ValidationError as error:
        raise ConfigError(f"{path}: the FineTuneJob is invalid:\n{error}") from None


def local_config(job: FineTuneJob, output_dir: str | None = None) -> TrainerConfig:
    """A TrainerConfig for ``kubetune train --local``: results in output_dir (default ./out/NAME). An oci://
    output is pushed from there (its checkpoints in output_dir, or a file:// output.checkpointUri)."""
    name = job.metadata.name or "finetunejob"
    output = job.spec.output
    oci = bool(output.uri and output.uri.startswith("oci://"))
    local_uri = output.checkpoint_uri if oci else output.uri
    if output_dir is None:
        output_dir = (
            local_uri[len("file://") :]
            if local_uri and local_uri.startswith("file://")
            else os.path.join("out", name)
        )
    runtime = TrainerRuntime(
        run_id=config_hash(job),
        output_dir=str(Path(output_dir).absolute()),
        output_uri=output.uri if oci else None,  # pushed from output_dir, the result's storage here
        image=None,
        report_status=False,
        metrics_port=None,
    )
    return TrainerConfig(job=job, runtime=runtime)
