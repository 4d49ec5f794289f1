"""Where results go beyond the output location: an OCI registry (``output.uri: oci://``) and a model registry
(``output.register``), and how the trainer says a publication failed (``status.result.publishError``).

An ``oci://`` output is a CNCF ModelPack artifact pushed by the trainer (kubetune_trainer.oci); its checkpoints,
and a copy of the result, go to ``output.checkpointUri`` (pvc:// or s3://), so a refused push loses nothing.
Registration makes each promoted result a version of a named model in an MLflow model registry
(kubetune_trainer.registration). The cross-field rules are CEL on FineTuneJobSpec and the same in Python
(``publishing_problems``), in the shape FineTuneJobSpec.problems uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, JsonValue

from .common import KubeModel, LocalObjectReference
from .tracking import TRACKING_URI_PATTERN

if TYPE_CHECKING:
    from .finetunejob import OutputSpec
    from .tracking import TrackingSpec

# The key of a kubernetes.io/dockerconfigjson Secret, as image pull secrets have it.
DOCKER_CONFIG_KEY = ".dockerconfigjson"
DOCKER_CONFIG_SECRET_TYPE = "kubernetes.io/dockerconfigjson"
# An MLflow registered model's name: no '/' or ':' (MLflow refuses them); not starting with '.' (so not '.' or '..').
MLFLOW_MODEL_NAME_PATTERN = r"^[^./:][^/:]*$"

PublishFailure = Literal[
    "InvalidReference", "RegistryUnreachable", "PushRefused", "TagExists", "PushFailed", "RegistrationFailed"
]


def _check_model_name(name: str) -> str:
    if "/" in name or ":" in name or name.startswith("."):
        raise ValueError(f"{name!r} is not an MLflow model name: no '/' or ':', not starting with '.'")
    return name


class MLflowRegistration(KubeModel):
    """A named model in an MLflow model registry; each promoted result becomes one of its versions."""

    tracking_uri: Annotated[str | None, Field(pattern=TRACKING_URI_PATTERN, max_length=2048)] = None
    """URL of the MLflow server that holds the registry (http://, https:// or databricks); defaults to
    spec.tracking.mlflow.trackingUri."""
    model: Annotated[
        str,
        Field(min_length=1, max_length=256),
        AfterValidator(_check_model_name),
        Field(json_schema_extra={"pattern": MLFLOW_MODEL_NAME_PATTERN}),
    ]
    """The registered model's name (created when missing); no '/' or ':'."""
    secret_ref: LocalObjectReference | None = None
    """Secret with the server's credentials (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or
    MLFLOW_TRACKING_TOKEN); defaults to spec.tracking.mlflow.secretRef."""


class RegisterSpec(KubeModel):
    """Model registries that get a version for each promoted result."""

    mlflow: MLflowRegistration | None = None
    """An MLflow model registry: the version's source is the result's URI (with its digest for oci://), its
    tags the lineage (base model and revision, dataset digest, config hash, parents) and the metrics."""


class PublishError(KubeModel):
    """Why the result did not reach its oci:// output or its model registry (the trainer says so)."""

    reason: PublishFailure
    """InvalidReference, RegistryUnreachable, PushRefused, TagExists, PushFailed or RegistrationFailed."""
    message: str
    """What happened and what to change."""


class RegisteredModel(KubeModel):
    """The model registry version a result became."""

    name: str
    """The registered model's name."""
    version: str
    """Its version number."""
    tracking_uri: str | None = None
    """The MLflow server that holds it."""


# Cross-field rules of spec.output (CEL on FineTuneJobSpec; the API server fills the defaults first).
PUBLISHING_CEL: list[JsonValue] = [
    {
        "rule": "!has(self.output.uri) || !self.output.uri.startsWith('oci://') || !self.output.uri.contains('@')",
        "message": "output.uri: an oci:// output names the tag to push to (oci://REGISTRY/REPOSITORY:TAG), "
        "not a digest (the digest is known after the push: status.result.digest)",
        "fieldPath": ".output.uri",
    },
    {
        "rule": "!has(self.output.uri) || !self.output.uri.startsWith('oci://') || has(self.output.checkpointUri)",
        "message": "output.checkpointUri is required with an oci:// output: set pvc://CLAIM/PATH or "
        "s3://BUCKET/PREFIX for the checkpoints (a copy of the result is kept there too)",
        "fieldPath": ".output.checkpointUri",
    },
    {
        "rule": "!has(self.output.checkpointUri) || (has(self.output.uri) && self.output.uri.startsWith('oci://'))",
        "message": "output.checkpointUri applies only to an oci:// output.uri (pvc:// and s3:// outputs keep "
        "their checkpoints under output.uri); remove it",
        "fieldPath": ".output.checkpointUri",
    },
    {
        "rule": "!has(self.output.checkpointUri) || !self.output.checkpointUri.startsWith('file://')",
        "message": "output.checkpointUri: file:// works only with `kubetune train --local`; in a cluster use "
        "pvc://CLAIM/PATH or s3://BUCKET/PREFIX",
        "fieldPath": ".output.checkpointUri",
    },
    {
        "rule": "!has(self.output.checkpointSecretRef) || (has(self.output.checkpointUri) "
        "&& self.output.checkpointUri.startsWith('s3://'))",
        "message": "output.checkpointSecretRef holds S3 credentials: it goes with an s3:// output.checkpointUri",
        "fieldPath": ".output.checkpointSecretRef",
    },
    {
        "rule": "!has(self.output.overwriteTag) || !self.output.overwriteTag "
        "|| (has(self.output.uri) && self.output.uri.startsWith('oci://'))",
        "message": "output.overwriteTag applies only to an oci:// output.uri; remove it",
        "fieldPath": ".output.overwriteTag",
    },
    {
        "rule": "!has(self.output.register) || !has(self.output.register.mlflow) "
        "|| has(self.output.register.mlflow.trackingUri) "
        "|| (has(self.tracking) && has(self.tracking.mlflow) && has(self.tracking.mlflow.trackingUri))",
        "message": "output.register.mlflow needs the MLflow server: set its trackingUri (or "
        "tracking.mlflow.trackingUri)",
        "fieldPath": ".output.register.mlflow.trackingUri",
    },
]


def publishing_problems(
    output: OutputSpec, tracking: TrackingSpec, cluster: bool
) -> list[tuple[bool, str, str]]:
    """(broken, field path, message) checks of spec.output's publishing fields (the CEL rules above)."""
    uri = output.uri or ""
    oci = uri.startswith("oci://")
    checkpoint = output.checkpoint_uri or ""
    mlflow = output.registration.mlflow if output.registration else None
    return [
        (oci and "@" in uri, "output.uri",
         "an oci:// output names the tag to push to (oci://REGISTRY/REPOSITORY:TAG), not a digest (the digest is "
         "known after the push: status.result.digest)"),
        (cluster and oci and not checkpoint, "output.checkpointUri",
         "required with an oci:// output: set pvc://CLAIM/PATH or s3://BUCKET/PREFIX for the checkpoints (a copy "
         "of the result is kept there too)"),
        (bool(checkpoint) and not oci, "output.checkpointUri",
         "applies only to an oci:// output.uri (pvc:// and s3:// outputs keep their checkpoints under output.uri); "
         "remove it"),
        (cluster and checkpoint.startswith("file://"), "output.checkpointUri",
         "file:// works only with `kubetune train --local`; in a cluster use pvc://CLAIM/PATH or s3://BUCKET/PREFIX"),
        (output.checkpoint_secret_ref is not None and not checkpoint.startswith("s3://"),
         "output.checkpointSecretRef", "holds S3 credentials: it goes with an s3:// output.checkpointUri"),
        (output.overwrite_tag and not oci, "output.overwriteTag", "applies only to an oci:// output.uri; remove it"),
        (mlflow is not None and not (mlflow.tracking_uri or tracking.mlflow.tracking_uri),
         "output.register.mlflow.trackingUri",
         "the MLflow server is needed: set it (or tracking.mlflow.trackingUri)"),
    ]  # fmt: skip
