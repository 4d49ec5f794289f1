"""Container env for spec.tracking: the trackers' credentials from Secrets (never in the ConfigMap).

The non-secret settings (tracking URI, experiment, project, ...) travel in the trainer config and
are turned into the trackers' own env by kubetune_trainer.tracking inside the pod.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.api.v1alpha1.tracking import MLFLOW_SECRET_KEYS


def _from_secret(name: str, secret: str, key: str, optional: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def tracking_secrets(job: FineTuneJob) -> list[tuple[str, str, tuple[str, ...]]]:
    """(field path, Secret name, keys that must exist) for each Secret spec.tracking refers to."""
    tracking = job.spec.tracking
    uses: list[tuple[str, str, tuple[str, ...]]] = []
    if tracking.mlflow.tracking_uri and tracking.mlflow.secret_ref is not None:
        uses.append(("spec.tracking.mlflow.secretRef", tracking.mlflow.secret_ref.name, ()))
    wandb = tracking.wandb
    if wandb.project and wandb.secret_ref is not None:
        uses.append(("spec.tracking.wandb.secretRef", wandb.secret_ref.name, (wandb.secret_ref.key,)))
    return uses


def tracking_env(job: FineTuneJob) -> list[dict[str, Any]]:
    """MLFLOW_TRACKING_* from the MLflow Secret (each key optional) and WANDB_API_KEY from the W&B Secret."""
    tracking = job.spec.tracking
    env: list[dict[str, Any]] = []
    mlflow = tracking.mlflow
    if mlflow.tracking_uri and mlflow.secret_ref is not None:
        env += [_from_secret(k, mlflow.secret_ref.name, k, optional=True) for k in MLFLOW_SECRET_KEYS]
    wandb = tracking.wandb
    if wandb.project and wandb.secret_ref is not None:
        env.append(_from_secret("WANDB_API_KEY", wandb.secret_ref.name, wandb.secret_ref.key, optional=False))
    return env
