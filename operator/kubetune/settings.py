"""The operator's settings: one object, read from the environment (prefix ``KUBETUNE_``).

KUBETUNE_NAMESPACES=team-a,team-b      watch these namespaces (empty: all)
KUBETUNE_TRAINER_IMAGE=...             default trainer image (spec.image overrides it)
KUBETUNE_METRICS_PORT=8080             Prometheus metrics (0 turns them off)
KUBETUNE_HEALTH_PORT=8081              liveness endpoint /healthz (0 turns it off)
KUBETUNE_LEADER_ELECT=true             only the holder of the leader Lease runs the controllers
KUBETUNE_OCI_PLAIN_HTTP_REGISTRIES=registry.local:5000   oci:// registries spoken to over plain HTTP
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubetune.engines import ENGINES

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/kubetune-trainer:0.1.0"
# Each serving engine's default image is declared by its module (kubetune/engines/).
DEFAULT_TGI_IMAGE = ENGINES["tgi"].default_image
DEFAULT_VLLM_IMAGE = ENGINES["vllm"].default_image


class Settings(BaseSettings):
    """Everything an operator deployment can tune; defaults suit a cluster install."""

    model_config = SettingsConfigDict(env_prefix="KUBETUNE_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Namespaces to watch (comma separated in the environment); empty watches the whole cluster."""
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Trainer image when a FineTuneJob does not name one."""
    trainer_image_pull_policy: str | None = None
    """imagePullPolicy of trainer containers; None leaves the Kubernetes default."""
    tgi_image: str = DEFAULT_TGI_IMAGE
    """Text Generation Inference image when a ModelServe does not name one."""
    vllm_image: str = DEFAULT_VLLM_IMAGE
    """vLLM OpenAI-compatible server image when a ModelServe with engine vllm does not name one."""
    metrics_port: int = 8080
    """Port of the Prometheus metrics endpoint (0: off)."""
    health_port: int = 8081
    """Port of the liveness endpoint /healthz (0: off)."""
    leader_elect: bool = False
    """Run the controllers only while holding the leader Lease (kubetune.leader_election): with several
    replicas one leads and the others stand by. The chart turns it on."""
    leader_election_id: str = "kubetune-operator"
    """Name of the leader Lease."""
    leader_election_namespace: str | None = None
    """Namespace of the leader Lease (default: the pod's own namespace; required outside a cluster)."""
    lease_duration_seconds: int = 15
    """A standby takes over a lease its holder has not renewed for this long (client-go's default)."""
    renew_deadline_seconds: float = 10.0
    """The leader steps down (exits) when it could not renew for this long; less than the lease duration."""
    retry_period_seconds: float = 2.0
    """How often the leader renews and a standby looks at the lease."""
    log_level: str = "INFO"
    """Log level of the operator."""
    field_manager: str = "kubetune"
    """Field manager of the operator's writes: the creates, server-side applies and patches of its children."""
    workers: int = 8
    """Reconciles that run at the same time (different objects; one object is never reconciled twice at once)."""
    resync_seconds: float = 600.0
    """Every object is reconciled at least this often, even without events (drift repair)."""
    requeue_seconds: float = 30.0
    """Re-check interval while something outside the operator is awaited (pods pending, image pulls)."""
    backoff_base_seconds: float = 1.0
    """First retry delay after an error or an unresolved problem; doubles each time."""
    backoff_max_seconds: float = 300.0
    """Longest retry delay."""
    termination_grace_seconds: int = 120
    """terminationGracePeriodSeconds of trainer pods: time to write a checkpoint on SIGTERM."""
    oci_plain_http_registries: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """OCI registries (host[:port], comma separated in the environment) that trainer pods and the serving pods'
    pull init containers speak to over plain HTTP (an in-cluster registry without TLS); every other
    registry is reached over HTTPS."""
    serve_endpoint_override: str | None = None
    """For ModelServe smoke tests from outside the cluster: a URL or a template with {name},
    {namespace} and {port}, e.g. "http://127.0.0.1:{port}"."""
    serve_pod_address_override: str | None = None
    """For vLLM live adapter updates from outside the cluster: a template with {pod}, {namespace}, {ip}
    and {port} for one pod's server, e.g. "http://127.0.0.1:8000/pods/{pod}" (default: http://{ip}:{port})."""

    @field_validator("namespaces", "oci_plain_http_registries", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (e.g. from command-line flags)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
