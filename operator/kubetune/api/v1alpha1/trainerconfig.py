"""The contract between the operator and the trainer pod.

The operator renders a ``TrainerConfig`` (the FineTuneJob plus runtime facts, never secrets) into a
ConfigMap mounted at ``CONFIG_PATH``; the pod's environment carries its place in the run (``ENV_*``).
``kubetune train --local`` builds the same object for a run on this machine.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import Field

from .common import KubeModel
from .finetunejob import FineTuneJob, ParentResult
from .uris import parse_uri

CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
PVC_MOUNT_ROOT = "/mnt/pvc"  # every claim a job names is mounted at PVC_MOUNT_ROOT/CLAIM
WORK_DIR = "/mnt/kubetune/work"  # scratch (emptyDir): staging for s3:// output, downloads
CACHE_DIR = "/mnt/kubetune/cache"  # HF_HOME (emptyDir)
RENDEZVOUS_PORT = 29500
METRICS_PORT = 9400

# Environment of a trainer pod (set by the operator's Job template).
ENV_CONFIG = "KUBETUNE_CONFIG"  # path of the rendered config
ENV_NODE_RANK = "KUBETUNE_NODE_RANK"  # from the Indexed Job's completion index
ENV_NUM_NODES = "KUBETUNE_NUM_NODES"
ENV_GPUS_PER_NODE = "KUBETUNE_GPUS_PER_NODE"
ENV_MASTER_ADDR = "KUBETUNE_MASTER_ADDR"  # stable DNS name of pod 0 behind the headless Service
ENV_MASTER_PORT = "KUBETUNE_MASTER_PORT"
ENV_POD_NAME = "KUBETUNE_POD_NAME"
ENV_REPORT_STATUS = "KUBETUNE_REPORT_STATUS"  # "true" in a cluster: patch the FineTuneJob's status
# OCI registries (kubetune_trainer.oci): the ones spoken to over plain HTTP (comma-separated host[:port], an
# operator setting), and the docker config files with a role's registry credentials (a mounted
# kubernetes.io/dockerconfigjson Secret under REGISTRY_AUTH_DIR/ROLE/config.json).
ENV_OCI_PLAIN_HTTP = "KUBETUNE_OCI_PLAIN_HTTP"
ENV_OUTPUT_REGISTRY_AUTH = "KUBETUNE_OUTPUT_REGISTRY_AUTH"
ENV_MODEL_REGISTRY_AUTH = "KUBETUNE_MODEL_REGISTRY_AUTH"
REGISTRY_AUTH_DIR = "/etc/kubetune/registry"


def pvc_local_path(uri: str) -> str:
    """Where a pvc://CLAIM/PATH URI is found inside a trainer or serving pod."""
    parsed = parse_uri(uri, ("pvc",))
    return "/".join(p for p in (PVC_MOUNT_ROOT, parsed.claim, parsed.path) if p)


def pvc_claims(job: FineTuneJob, extra_uris: tuple[str, ...] = ()) -> list[str]:
    """The distinct PersistentVolumeClaims a FineTuneJob reads or writes, in a stable order (EXTRA_URIS: what
    its FineTuneJob references resolved to, see ChainResolution.uris)."""
    output = job.spec.output
    uris = [
        job.spec.model.uri or "",
        job.spec.dataset.uri,
        output.uri or "",
        output.checkpoint_uri or "",
        *extra_uris,
    ]
    claims = [parse_uri(u, ("pvc",)).claim for u in uris if u.startswith("pvc://")]
    return sorted(set(claims))


def config_hash(job: FineTuneJob) -> str:
    """A short, stable hash of the spec: it names a run and goes into the result's lineage."""
    canonical = json.dumps(job.spec.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ResolvedModel(KubeModel):
    """A model another FineTuneJob produced, as the trainer loads it: a full model, plus the adapters (results
    of LoRA/QLoRA/IA3 jobs without a merged model) that are merged into it in order."""

    uri: Annotated[str, Field(min_length=1)]
    """The full model (hf://, pvc://, s3:// or file://)."""
    revision: str | None = None
    """Hub revision of an hf:// uri."""
    adapters: list[str] = Field(default_factory=list)
    """Adapter results merged into the model, first to last, before this job trains."""

    def uris(self) -> list[str]:
        return [self.uri, *self.adapters]


class ChainResolution(KubeModel):
    """What the operator resolved the job's FineTuneJob references to (model.fineTuneJobRef, reward models)."""

    model: ResolvedModel | None = None
    """The base model when spec.model.fineTuneJobRef is set."""
    reward_models: dict[str, ResolvedModel] = Field(default_factory=dict)
    """Reward models by FineTuneJob name (objective.rl.rewards[].model.fineTuneJobRef)."""
    parents: list[ParentResult] = Field(default_factory=list)
    """The chain, recorded in status.result.parents and lineage.json."""

    def uris(self) -> tuple[str, ...]:
        found = self.model.uris() if self.model else []
        for resolved in self.reward_models.values():
            found += resolved.uris()
        return tuple(found)


class TrainerRuntime(KubeModel):
    """Facts the operator knows and the spec does not say."""

    run_id: Annotated[str, Field(min_length=1)]
    """Identifies this run (the spec's config hash); checkpoints of another run are never resumed."""
    output_dir: Annotated[str, Field(min_length=1)]
    """Local directory the trainer writes the result and checkpoints to (a mounted claim, or staging for s3)."""
    output_uri: str | None = None
    """Where the result ends up as the user wrote it (pvc://, s3:// or oci://); None for local runs that write
    to output_dir only."""
    checkpoint_uri: str | None = None
    """oci:// outputs: where the checkpoints and a copy of the result go (output.checkpointUri: pvc:// or s3://;
    output_dir is its local side); None otherwise."""
    image: str | None = None
    """Trainer image, recorded in the lineage."""
    report_status: bool = False
    """Patch the FineTuneJob's status (in a cluster, with the pod's ServiceAccount)."""
    metrics_port: int | None = METRICS_PORT
    """Port of the Prometheus endpoint; None turns it off."""
    uid: str | None = None
    """The FineTuneJob's uid (status patches are made only to this object)."""
    chain: ChainResolution | None = None
    """The resolved FineTuneJob references (model.fineTuneJobRef, reward models); None when there are none."""


class TrainerConfig(KubeModel):
    """What a trainer pod reads from CONFIG_PATH."""

    job: FineTuneJob
    """The FineTuneJob as the operator saw it (metadata name/namespace/generation and the full spec)."""
    runtime: TrainerRuntime
    """Runtime facts."""
