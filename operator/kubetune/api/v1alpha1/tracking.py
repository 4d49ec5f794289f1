"""spec.tracking of a FineTuneJob: where training metrics go besides status and Prometheus.

Each tracker is a transformers ``report_to`` integration the trainer turns on (kubetune_trainer.tracking);
credentials come from Secrets as container env (kubetune.render.tracking), never from the ConfigMap.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, JsonValue

from .common import KubeModel, LocalObjectReference, SecretKeyRef

TRACKING_URI_PATTERN = r"^(https?://[^\s/]+.*|databricks(://[^\s]*)?)$"

# The keys an MLflow credentials Secret may hold; each becomes the env variable of the same name
# (the names MLflow's client reads).
MLFLOW_SECRET_KEYS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
)


class TensorBoardTracking(KubeModel):
    """TensorBoard event files."""

    enabled: bool = False
    """Write TensorBoard event files under the output's tensorboard/ folder."""


class MLflowTracking(KubeModel):
    """An MLflow tracking server."""

    tracking_uri: Annotated[str | None, Field(pattern=TRACKING_URI_PATTERN, max_length=2048)] = None
    """URL of the MLflow tracking server (http:// or https://, or databricks); setting it turns MLflow on."""
    experiment: Annotated[str | None, Field(min_length=1, max_length=500)] = None
    """MLflow experiment name; defaults to the FineTuneJob's namespace/name."""
    secret_ref: LocalObjectReference | None = None
    """Secret with the server's credentials under the keys MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN (each optional)."""


class WandbSecretKeyRef(SecretKeyRef):
    """The key of a Secret that holds the Weights & Biases API key."""

    key: Annotated[str, Field(min_length=1)] = "WANDB_API_KEY"
    """Key inside the Secret."""


class WandbTracking(KubeModel):
    """Weights & Biases."""

    project: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    """W&B project; setting it turns W&B on."""
    entity: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    """W&B entity (user or team); defaults to the API key's default entity."""
    mode: Literal["online", "offline"] = "online"
    """online sends to W&B (needs secretRef); offline writes the run under the output's wandb/ folder
    for a later `wandb sync`."""
    secret_ref: WandbSecretKeyRef | None = None
    """Secret with the W&B API key (key defaults to WANDB_API_KEY)."""


class TrackingSpec(KubeModel):
    """Experiment trackers the trainer reports to (transformers report_to)."""

    tensorboard: TensorBoardTracking = Field(default_factory=TensorBoardTracking)
    """TensorBoard event files."""
    mlflow: MLflowTracking = Field(default_factory=MLflowTracking)
    """MLflow tracking server."""
    wandb: WandbTracking = Field(default_factory=WandbTracking)
    """Weights & Biases."""

    def trackers(self) -> list[str]:
        """The transformers report_to names this spec turns on, in a fixed order."""
        names = []
        if self.tensorboard.enabled:
            names.append("tensorboard")
        if self.mlflow.tracking_uri:
            names.append("mlflow")
        if self.wandb.project:
            names.append("wandb")
        return names


# Cross-field rules of spec.tracking (CEL on FineTuneJobSpec, and the same in Python).
TRACKING_CEL: list[JsonValue] = [
    {
        "rule": "!has(self.tracking) || !has(self.tracking.wandb) || !has(self.tracking.wandb.project) "
        "|| self.tracking.wandb.mode == 'offline' || has(self.tracking.wandb.secretRef)",
        "message": "tracking.wandb in online mode needs secretRef (the W&B API key); or set mode offline",
        "fieldPath": ".tracking.wandb.secretRef",
    },
]


def tracking_problems(tracking: TrackingSpec) -> list[tuple[bool, str, str]]:
    """(broken, field path, message) checks of spec.tracking, in the shape FineTuneJobSpec.problems uses."""
    wandb = tracking.wandb
    return [
        (
            bool(wandb.project) and wandb.mode == "online" and wandb.secret_ref is None,
            "tracking.wandb.secretRef",
            "W&B online mode needs the API key: set secretRef (a Secret with WANDB_API_KEY), or mode offline",
        ),
    ]
