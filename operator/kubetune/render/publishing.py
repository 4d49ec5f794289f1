"""What pods need for oci:// and model registries: registry credentials mounted from kubernetes.io/
dockerconfigjson Secrets (files, as the container runtime reads image pull secrets; never env), the
plain-HTTP registries the operator was told of, the model registry's credentials, and the init container
that pulls an oci:// model or adapter into a serving pod. Pure: manifests from specs.

Paths and variable names are the trainer's contract (api/v1alpha1/trainerconfig.py): the trainer finds a
role's credentials at REGISTRY_AUTH_DIR/ROLE/config.json through ENV_<ROLE>_REGISTRY_AUTH.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.api.v1alpha1.publishing import DOCKER_CONFIG_KEY
from kubetune.api.v1alpha1.tracking import MLFLOW_SECRET_KEYS
from kubetune.api.v1alpha1.trainerconfig import (
    ENV_MODEL_REGISTRY_AUTH,
    ENV_OCI_PLAIN_HTTP,
    ENV_OUTPUT_REGISTRY_AUTH,
    REGISTRY_AUTH_DIR,
)

REGISTRY_ROLES = {"output": ENV_OUTPUT_REGISTRY_AUTH, "model": ENV_MODEL_REGISTRY_AUTH}
REGISTER_ENV_PREFIX = "KUBETUNE_REGISTER_"  # kubetune_trainer.registration reads these


def is_oci(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith("oci://")


def registry_auth(role: str, secret: str, volume: str | None = None) -> tuple[dict, dict, dict]:
    """(volume, mount, env) that put SECRET's .dockerconfigjson at REGISTRY_AUTH_DIR/ROLE/config.json."""
    name = volume or f"registry-{role}"
    folder = f"{REGISTRY_AUTH_DIR}/{role}"
    return (
        {
            "name": name,
            "secret": {"secretName": secret, "items": [{"key": DOCKER_CONFIG_KEY, "path": "config.json"}]},
        },
        {"name": name, "mountPath": folder, "readOnly": True},
        {"name": REGISTRY_ROLES.get(role, ENV_MODEL_REGISTRY_AUTH), "value": f"{folder}/config.json"},
    )


def registry_secrets(job: FineTuneJob) -> list[tuple[str, str, str]]:
    """(role, field path, Secret) of each dockerconfigjson Secret a FineTuneJob's pods read."""
    spec = job.spec
    found = []
    if is_oci(spec.output.uri) and spec.output.secret_ref is not None:
        found.append(("output", "spec.output.secretRef", spec.output.secret_ref.name))
    if is_oci(spec.model.uri) and spec.model.secret_ref is not None:
        found.append(("model", "spec.model.secretRef", spec.model.secret_ref.name))
    return found


def trainer_registry(
    job: FineTuneJob, plain_http: Sequence[str]
) -> tuple[list[dict], list[dict], list[dict]]:
    """(volumes, mounts, env) of a trainer pod for its oci:// output and model."""
    volumes, mounts, env = [], [], []
    for role, _, secret in registry_secrets(job):
        volume, mount, variable = registry_auth(role, secret)
        volumes.append(volume)
        mounts.append(mount)
        env.append(variable)
    uses_oci = is_oci(job.spec.output.uri) or is_oci(job.spec.model.uri)
    if uses_oci and plain_http:
        env.append(plain_http_env(plain_http))
    return volumes, mounts, env


def plain_http_env(plain_http: Sequence[str]) -> dict[str, Any]:
    return {"name": ENV_OCI_PLAIN_HTTP, "value": ",".join(plain_http)}


def register_secret(job: FineTuneJob) -> str | None:
    """The Secret of output.register.mlflow when it is not the tracking server's (whose env is there already)."""
    registration = job.spec.output.registration
    mlflow = registration.mlflow if registration else None
    if mlflow is None or mlflow.secret_ref is None:
        return None
    tracking = job.spec.tracking.mlflow
    same_server = not mlflow.tracking_uri or mlflow.tracking_uri == tracking.tracking_uri
    if same_server and tracking.secret_ref is not None and tracking.secret_ref.name == mlflow.secret_ref.name:
        return None
    return mlflow.secret_ref.name


def register_env(job: FineTuneJob) -> list[dict[str, Any]]:
    """KUBETUNE_REGISTER_MLFLOW_TRACKING_* from the model registry's own Secret (each key optional)."""
    secret = register_secret(job)
    if secret is None:
        return []
    return [
        {
            "name": REGISTER_ENV_PREFIX + key,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
        }
        for key in MLFLOW_SECRET_KEYS
    ]


def fetch_init_container(
    *,
    name: str,
    image: str,
    uri: str,
    dest: str,
    field: str,
    models_volume: str,
    models_dir: str,
    security_context: dict[str, Any],
    registry_volume: str | None,
    plain_http: Sequence[str],
) -> dict[str, Any]:
    """The init container that pulls an oci:// model or adapter into the serving pod's models volume with
    the trainer's own client (kubetune-trainer fetch -> kubetune_trainer.oci.pull: every blob's digest checked)."""
    mounts: list[dict[str, Any]] = [
        {"name": models_volume, "mountPath": models_dir},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    env: list[dict[str, Any]] = []
    if registry_volume is not None:
        folder = f"{REGISTRY_AUTH_DIR}/{registry_volume}"
        mounts.append({"name": registry_volume, "mountPath": folder, "readOnly": True})
        env.append({"name": ENV_MODEL_REGISTRY_AUTH, "value": f"{folder}/config.json"})
    if plain_http:
        env.append(plain_http_env(plain_http))
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": ["kubetune-trainer", "fetch", uri, dest, "--field", field],
        "volumeMounts": mounts,
        "securityContext": security_context,
    }
    if env:
        container["env"] = env
    return container
