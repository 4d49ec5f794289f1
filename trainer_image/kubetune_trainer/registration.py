"""output.register.mlflow: a promoted result becomes a version of a named model in an MLflow model registry.

The version's source is the result's URI (for an oci:// output the pushed artifact, pinned by its digest);
its tags are the lineage (FineTuneJob, run id, base model and resolved revision, dataset and its digest,
parents, trainer image, result kind, digest) and the final metrics (``metric.NAME``). When the same MLflow
server tracks the run (spec.tracking.mlflow), the version is linked to that run. A retried attempt of the
same run finds its own version (tag ``kubetune.run_id``) instead of adding a second one.

Credentials: the MLFLOW_TRACKING_* environment MLflow's client reads; when output.register.mlflow.secretRef
names another Secret than tracking.mlflow.secretRef, the operator passes its keys as KUBETUNE_REGISTER_<KEY>,
which stand in for the tracking ones while registering.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, MutableMapping
from typing import Any

from kubetune.api.v1alpha1 import TrainerConfig
from kubetune.api.v1alpha1.tracking import MLFLOW_SECRET_KEYS

log = logging.getLogger("kubetune_trainer.registration")

REGISTER_ENV_PREFIX = "KUBETUNE_REGISTER_"
TAG_VALUE_MAX = 5000  # MLflow's limit on a model version tag's value
# A registry that does not answer should not hold the pod for MLflow's default of about 4 minutes of retries.
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def tracking_uri(config: TrainerConfig) -> str | None:
    spec = config.job.spec
    mlflow = spec.output.registration.mlflow if spec.output.registration else None
    if mlflow is None:
        return None
    return mlflow.tracking_uri or spec.tracking.mlflow.tracking_uri


def version_tags(result: dict[str, Any], lineage: dict[str, Any]) -> dict[str, str]:
    """The model version's tags: the lineage and the metrics, as strings."""
    job = lineage.get("finetuneJob") or {}
    base = lineage.get("baseModel") or {}
    dataset = lineage.get("dataset") or {}
    values: dict[str, Any] = {
        "kubetune.finetunejob": job.get("name"),
        "kubetune.namespace": job.get("namespace"),
        "kubetune.finetunejob.uid": job.get("uid"),
        "kubetune.run_id": lineage.get("configHash"),
        "kubetune.config_hash": result.get("configHash") or lineage.get("configHash"),
        "kubetune.result.uri": result.get("uri"),
        "kubetune.result.digest": result.get("digest"),
        "kubetune.result.kind": result.get("kind"),
        "kubetune.result.merged_uri": result.get("mergedUri"),
        "kubetune.result.storage_uri": result.get("storageUri"),
        "kubetune.base_model": base.get("uri"),
        "kubetune.base_model.revision": base.get("resolvedRevision") or result.get("baseModelRevision"),
        "kubetune.dataset": dataset.get("uri"),
        "kubetune.dataset.digest": dataset.get("digest") or result.get("datasetDigest"),
        "kubetune.parents": json.dumps(lineage["parents"], sort_keys=True)
        if lineage.get("parents")
        else None,
        "kubetune.image": result.get("image") or lineage.get("image"),
        "kubetune.method": lineage.get("method"),
        "kubetune.objective": lineage.get("objective"),
        "kubetune.promoted": "true" if result.get("promoted", True) else "false",
    }
    for name, value in sorted((result.get("metrics") or {}).items()):
        values[f"metric.{name}"] = repr(float(value))
    return {k: str(v)[:TAG_VALUE_MAX] for k, v in values.items() if v not in (None, "")}


@contextlib.contextmanager
def registry_credentials(environ: MutableMapping[str, str] | None = None) -> Iterator[None]:
    """KUBETUNE_REGISTER_<KEY> in place of MLFLOW_TRACKING_<KEY> (and gentler retries) while registering."""
    environ = os.environ if environ is None else environ
    override = {
        k: environ[REGISTER_ENV_PREFIX + k] for k in MLFLOW_SECRET_KEYS if REGISTER_ENV_PREFIX + k in environ
    }
    if override:  # the registry's own Secret: none of the tracking server's credentials may leak into it
        override = {k: override.get(k, "") for k in MLFLOW_SECRET_KEYS}
    override |= {k: v for k, v in CLIENT_DEFAULTS.items() if k not in environ}
    saved = {k: environ.get(k) for k in override}
    try:
        for key, value in override.items():
            if value:
                environ[key] = value
            else:
                environ.pop(key, None)
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                environ.pop(key, None)
            else:
                environ[key] = old


def _tracked_run(client, config: TrainerConfig, run_id: str) -> str | None:
    """The MLflow run that tracked this training run on the same server (spec.tracking.mlflow), if any."""
    spec = config.job.spec
    if not spec.tracking.mlflow.tracking_uri or spec.tracking.mlflow.tracking_uri != tracking_uri(config):
        return None
    from .tracking import experiment_name

    experiment = client.get_experiment_by_name(experiment_name(config))
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`kubetune.run_id` = '{run_id}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id if runs else None


def register(config: TrainerConfig, result: dict[str, Any], lineage: dict[str, Any]) -> dict[str, str]:
    """Make RESULT a version of output.register.mlflow.model; returns {name, version, trackingUri}."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    spec = config.job.spec
    mlflow = spec.output.registration.mlflow if spec.output.registration else None
    uri = tracking_uri(config)
    if mlflow is None or not uri:
        raise ValueError("output.register.mlflow is not set")
    name, run_id = mlflow.model, config.runtime.run_id
    tags = version_tags(result, lineage)
    with registry_credentials():
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            client.create_registered_model(
                name, description="Fine-tuned by kubetune: each version is a FineTuneJob's promoted result."
            )
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mine = client.search_model_versions(f"name = '{name}' and tags.`kubetune.run_id` = '{run_id}'")
        same = [v for v in mine if v.source == result["uri"]]
        if same:
            version = same[0]
            log.info("model version %s/%s is this run's already", name, version.version)
        else:
            version = client.create_model_version(
                name,
                source=result["uri"],
                run_id=_tracked_run(client, config, run_id),
                tags=tags,
                description=f"FineTuneJob {lineage.get('finetuneJob', {}).get('namespace') or ''}/"
                f"{config.job.metadata.name}, run {run_id}: {result.get('kind')} at {result['uri']}",
                await_creation_for=0,
            )
            log.info("registered %s as model version %s/%s at %s", result["uri"], name, version.version, uri)
    return {"name": name, "version": str(version.version), "trackingUri": uri}
