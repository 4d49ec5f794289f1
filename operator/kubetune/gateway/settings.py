"""The gateway's settings: one object, read from the environment (prefix ``KUBETUNE_API_``).

KUBETUNE_API_FILES_DIR=/var/lib/kubetune/files    where uploads are stored (the gateway's volume)
KUBETUNE_API_FILES_URI=pvc://kubetune-files/{namespace}
                                                 how a trainer pod in NAMESPACE reads FILES_DIR/NAMESPACE
KUBETUNE_API_OUTPUT_URI=pvc://kubetune-models/{job}  where a job's result goes (spec.output.uri)
KUBETUNE_API_BASE_MODELS={"tiny": "pvc://models/tiny"}  model names a request may use, and their URIs
KUBETUNE_API_JOB_DEFAULTS={"resources": {"gpusPerNode": 1}}  a partial FineTuneJob spec under every job
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

OPENAI_MAX_FILE_BYTES = 512 * 1024 * 1024  # OpenAI's own limit for one uploaded file


class GatewaySettings(BaseSettings):
    """Everything a gateway deployment can tune; defaults suit the chart."""

    model_config = SettingsConfigDict(env_prefix="KUBETUNE_API_", extra="ignore")

    host: str = "0.0.0.0"
    """Address to listen on."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """Port to listen on (`kubetune api --port` overrides it)."""
    files_dir: str = "/var/lib/kubetune/files"
    """Folder of the uploaded files (a mounted PersistentVolumeClaim in the chart): FILES_DIR/NAMESPACE/..."""
    files_uri: str = "pvc://kubetune-files/{namespace}"
    """The URI under which a trainer pod in a namespace reads FILES_DIR/NAMESPACE ({namespace} is replaced):
    a claim of that name in the job's namespace on the same storage, or an s3:// prefix when FILES_DIR is a
    bucket mounted in the gateway."""
    files_secret: str | None = None
    """Secret (in the job's namespace) the trainer reads the files with: dataset.secretRef (S3 credentials)."""
    max_file_bytes: Annotated[int, Field(ge=1)] = OPENAI_MAX_FILE_BYTES
    """Largest upload accepted (bytes); larger ones get 413."""
    output_uri: str = "pvc://kubetune-models/{job}"
    """spec.output.uri of the jobs made through the API ({job}: the FineTuneJob's name, {namespace})."""
    base_models: dict[str, str] = Field(default_factory=dict)
    """Model names a create request may use, each with the URI of the base model (hf://, pvc://, s3://,
    oci://). Besides these, a request may name a URI, an ORG/NAME Hub id or a FineTuneJob of the namespace."""
    job_defaults: dict[str, Any] = Field(default_factory=dict)
    """A partial FineTuneJob spec (camelCase) under what a request sets: method, resources, dataset.maxLength..."""
    base_learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-4
    """learning_rate_multiplier 1.0 means this learning rate."""
    audiences: list[str] = Field(default_factory=list)
    """Audiences a token must be issued for (TokenReview spec.audiences); empty: the API server's own."""
    auth_cache_seconds: Annotated[float, Field(ge=0)] = 10.0
    """How long a successful TokenReview and an allowing SubjectAccessReview are reused (0: never).
    A denial is never cached, so a new RoleBinding works at once; a removed one is noticed within this time."""
    kube_connections: Annotated[int, Field(ge=1)] = 32
    """Connections to the API server (the gateway's worker threads share them)."""

    @field_validator("output_uri")
    @classmethod
    def _output_names_the_job(cls, value: str) -> str:
        if "{job}" not in value:
            raise ValueError("must contain {job}: every job needs its own output location")
        if not value.startswith(("pvc://", "s3://")):
            raise ValueError("must be a pvc:// or s3:// URI template")
        return value

    @field_validator("files_uri")
    @classmethod
    def _files_uri_scheme(cls, value: str) -> str:
        if not value.startswith(("pvc://", "s3://")):
            raise ValueError("must be a pvc:// or s3:// URI (template)")
        return value.rstrip("/")


__all__ = ["OPENAI_MAX_FILE_BYTES", "GatewaySettings"]
