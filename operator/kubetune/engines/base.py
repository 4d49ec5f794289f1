"""A serving engine behind one interface: what a ModelServe's pods run and how the operator talks to them.

An engine module (tgi.py, vllm.py) subclasses ``Engine`` and declares:

- its **container**: command, arguments and environment for the model and adapters (``command``, ``args``,
  ``env``; ``container`` puts them together), the port it listens on and the path of its health endpoint (the probes are built from them in
  render/modelserve.py, which renders the rest of the pod the same way for every engine);
- what a **rollout** depends on (``revision_inputs``: a change there is a new revision, a rolling update);
- its **smoke test** (``smoke_protocol``: which client reconcile/ uses, ``served_model``: the name the base
  model answers to); every answer is judged alike (engines/smoke.py);
- its **live adapter operations** (``live_adapters``: how adapters are loaded and unloaded on a running
  server; None when the engine loads them only at start);
- what it **cannot serve** (``model_problem``, ``adapter_problem``, ``sources_problem``: the messages of
  ``UnsupportedByEngine``, each saying what would work);
- its **validation rules**: ``settings_model``, the engine's settings in the API (``spec.tgi``,
  ``spec.vllm``). The CRD is generated from the API's models, so an engine's settings and the rules the API
  server checks (CEL) live there, with the same rules in Python for ``kubetune validate`` and the operator.

Pure: no client, no kopf, no network. The I/O (smoke tests, adapter loads) is in reconcile/, driven by what
the engine declares here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kubetune.api.v1alpha1 import CLASSIFICATION_TASKS, ENCODER_TASKS, FineTuneJob, KubeModel, ModelServe
from kubetune.api.v1alpha1.finetunejob import ResultStatus

# Where things are inside a serving pod (render/modelserve.py mounts them; engines point their servers there).
MODELS_DIR = "/mnt/kubetune/models"  # emptyDir: s3:// downloads and oci:// pulls
HF_CACHE_DIR = "/data"  # an emptyDir: Hub downloads (the TGI image's HUGGINGFACE_HUB_CACHE)
HOME_DIR = "/home/kubetune"
# $USER: getpass.getuser() (torch's cache paths) needs a name; the pod's uid has no passwd entry.
SERVE_USER = "kubetune"
PORT_NAME = "http"

# Results that are not text generators (reward models score, masked LMs fill in, QA models extract).
UNSERVABLE_MODEL_KINDS = ("reward-model", "masked-lm", "question-answering")


# ---- what is served ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One thing to load: the model (name None) or an adapter."""

    name: str | None
    uri: str
    """Where it is (hf://, pvc://, s3:// or oci://)."""
    source: str | None = None
    """FineTuneJob/NAME@CONFIGHASH#UID when it came from a job's result."""
    s3_secret: str | None = None
    """Secret with S3 credentials (a job's output.secretRef) for the download init container."""
    hf_token: tuple[str, str] | None = None
    """(Secret, key) with a Hub token for a private hf:// source."""
    registry_secret: str | None = None
    """kubernetes.io/dockerconfigjson Secret for an oci:// source's pull init container."""
    rank: int | None = None
    """An adapter's LoRA rank (its FineTuneJob's method.lora.r; None when given by URI)."""


@dataclass
class Sources:
    """The model and the adapters a ModelServe serves (decided in reconcile/sources.py)."""

    model: Source | None = None
    adapters: list[Source] = field(default_factory=list)

    @property
    def sources(self) -> list[str]:
        """The FineTuneJob results among them (``Source.source``)."""
        items = [self.model] if self.model else []
        return [s.source for s in items + self.adapters if s.source]


@dataclass(frozen=True)
class Placement:
    """Where the serving container finds what it serves, as render/modelserve.py laid out the pod."""

    model: str
    """A path inside the pod, or a Hub id the engine downloads itself."""
    adapters: tuple[tuple[str, str], ...] = ()
    """(name, path or Hub id) of each adapter, in spec order."""
    ranks: tuple[int | None, ...] = ()
    """Each adapter's LoRA rank (None: not known)."""
    hf_token: tuple[str, str] | None = None
    """(Secret, key) of a Hub token: the model's, else the first adapter's."""

    @property
    def adapter_pairs(self) -> list[str]:
        """``NAME=PATH`` per adapter (the form TGI's LORA_ADAPTERS and vLLM's --lora-modules read)."""
        return [f"{name}={path}" for name, path in self.adapters]


def flags(settings: Iterable[tuple[str, object]]) -> list[str]:
    """``FLAG VALUE`` for each setting that is set (None: left to the server's default)."""
    out: list[str] = []
    for flag, value in settings:
        if value is not None:
            out += [flag, str(value)]
    return out


def home_env() -> list[dict[str, Any]]:
    """HOME and USER of the pod's non-root user (caches under ~/.cache and friends go to an emptyDir)."""
    return [{"name": "HOME", "value": HOME_DIR}, {"name": "USER", "value": SERVE_USER}]


def hf_token_env(placement: Placement) -> list[dict[str, Any]]:
    """HF_TOKEN from the Secret that holds a Hub token (both engines read it), when there is one."""
    if placement.hf_token is None:
        return []
    name, key = placement.hf_token
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}]


# ---- live adapters ----------------------------------------------------------------------------


class LiveAdapterApi(ABC):
    """How a running server loads and unloads LoRA adapters: HTTP requests relative to its OpenAI-compatible
    API base (``/v1``). reconcile/live_adapters.py plans the changes, reconcile/adapter_admin.py sends them."""

    @abstractmethod
    def load_request(self, name: str, path: str) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the request that loads PATH under the served name NAME (not loaded yet)."""

    @abstractmethod
    def unload_request(self, name: str) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of the request that unloads the served name NAME."""

    @abstractmethod
    def loaded(self, models: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Adapter served name -> the path it was loaded from, read from the server's model list."""


# ---- the interface ----------------------------------------------------------------------------


class Engine(ABC):
    """One serving engine. Subclasses set the class attributes and implement the abstract methods; the
    defaults describe a text-generation server that loads LoRA adapters (both engines today)."""

    name: ClassVar[str]
    """The value of ``spec.engine``."""
    title: ClassVar[str]
    """The engine's name in messages (TGI, vLLM)."""
    default_image: ClassVar[str]
    """The image when neither ``spec.image`` nor the operator's settings name one."""
    settings_model: ClassVar[type[KubeModel]]
    """The engine's settings in the API (``spec.<name>``): its fields and rules are the engine's validation."""
    container_name: ClassVar[str]
    port: ClassVar[int]
    """The port the server listens on inside the pod (the Service and the probes use its name, ``http``)."""
    health_path: ClassVar[str] = "/health"
    smoke_protocol: ClassVar[str]
    """Which client the smoke test speaks (reconcile/modelserve.py's runners): ``tgi`` or ``openai``."""
    live_adapters: ClassVar[LiveAdapterApi | None] = None
    """Adapters loaded and unloaded on running servers (None: they load at start; a change is a rollout)."""

    command: ClassVar[tuple[str, ...]] = ()
    """The container's command (empty: the image's entrypoint)."""

    # -- the container --

    def container(
        self, ms: ModelServe, placement: Placement, image: str, *, live_modules: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """The serving container's name, image, command, args, env and ports (render/modelserve.py adds the
        mounts, probes, resources and security context)."""
        container: dict[str, Any] = {"name": self.container_name, "image": image}
        if self.command:
            container["command"] = list(self.command)
        return container | {
            "args": self.args(ms, placement, live_modules=live_modules),
            "env": self.env(ms, placement),
            "ports": [{"name": PORT_NAME, "containerPort": self.port, "protocol": "TCP"}],
        }

    @abstractmethod
    def args(
        self, ms: ModelServe, placement: Placement, *, live_modules: Sequence[str] | None = None
    ) -> list[str]:
        """The server's arguments for MS's model and adapters where PLACEMENT put them. LIVE_MODULES (engines
        with live adapters): the adapters the running revision's pods started with (None: PLACEMENT's)."""

    @abstractmethod
    def env(self, ms: ModelServe, placement: Placement) -> list[dict[str, Any]]:
        """The server's environment."""

    def started_adapters(self, template: Mapping[str, Any] | None) -> list[str] | None:
        """The adapters a live pod TEMPLATE starts its server with (engines with live adapters), None
        when the template is not this engine's."""
        return None

    @abstractmethod
    def revision_inputs(self, ms: ModelServe, sources: Sources, image: str) -> dict[str, Any]:
        """What the pods depend on: a change of any of it is a new revision (a rolling update)."""

    # -- the smoke test --

    def served_model(self, ms: ModelServe) -> str:
        """The model name the smoke test asks the base model by ("" when the server has one model only)."""
        return ""

    def adapter_ids(self, ms: ModelServe) -> tuple[str, ...]:
        """The names clients (and the smoke test) ask each adapter by, in spec order."""
        return tuple(a.name for a in ms.spec.adapters)

    # -- what it cannot serve (UnsupportedByEngine) --

    def model_problem(
        self, where: str, ref: str, job: FineTuneJob, result: ResultStatus | None
    ) -> str | None:
        """Why the result of FineTuneJob REF (WHERE: the spec field) cannot be served as the model; None when
        it can. RESULT: the job's result (None while it has none: only what the spec says is checked)."""
        task = job.spec.model.task
        if task in CLASSIFICATION_TASKS:
            return (
                f"{where}: FineTuneJob {ref!r} trains a {task} model and {self.title} serves only text "
                "generation here; serve a causal-lm or seq2seq FineTuneJob, or run the classifier with your "
                "own Deployment"
            )
        if task in ENCODER_TASKS:
            return self._encoder_message(where, ref, task, result.uri if result else None)
        if result is None:
            return None
        if result.kind in UNSERVABLE_MODEL_KINDS:
            return (
                f"{where}: FineTuneJob {ref!r} produced a {result.kind} model, which is not a text "
                f"generator {self.title} can serve; serve a causal-lm result (SFT, DPO, KTO, GRPO, RLOO)"
            )
        if result.kind in ("prefix", "prompt"):
            return (
                f"{where}: FineTuneJob {ref!r} produced a {result.kind}-tuning result, which {self.title} "
                "cannot load; train with method lora (served under adapters) or full (served as model)"
            )
        if result.merged_uri or result.kind == "full":
            return None
        return (
            f"{where}: FineTuneJob {ref!r} produced a LoRA adapter without a merged model; set "
            "spec.output.mergeAdapter: true on the job, or serve its base model "
            f"(model.uri: {job.spec.model.uri}) with the adapter under adapters: "
            f"[{{name: ..., fineTuneJobRef: {{name: {ref}}}}}]"
        )

    def adapter_problem(
        self, where: str, ref: str, job: FineTuneJob, result: ResultStatus | None
    ) -> str | None:
        """Why the result of FineTuneJob REF cannot be served as an adapter; None when it can (as
        ``model_problem``)."""
        task, method = job.spec.model.task, job.spec.method.type
        if task in CLASSIFICATION_TASKS:
            return (
                f"{where}: FineTuneJob {ref!r} trains a {task} model; {self.title} serves "
                "adapters of text-generation models only"
            )
        if task in ENCODER_TASKS:
            return self._encoder_message(where, ref, task, result.uri if result else None)
        if method in ("prefix-tuning", "prompt-tuning") or (result and result.kind in ("prefix", "prompt")):
            return (
                f"{where}: FineTuneJob {ref!r} uses {method}, which {self.title} cannot load as an adapter; "
                "train with method lora or qlora"
            )
        if method == "ia3":
            return (
                f"{where}: FineTuneJob {ref!r} trains an IA3 adapter and {self.title} loads only LoRA adapters; "
                "train with method lora or qlora, or set output.mergeAdapter: true and serve the merged "
                "model under model.fineTuneJobRef"
            )
        if method in ("full", "head-only") or (result and result.kind == "full"):
            return (
                f"{where}: FineTuneJob {ref!r} produces a full model, not an adapter; serve it under "
                f"model.fineTuneJobRef: {{name: {ref}}}"
            )
        if result is not None and result.kind in UNSERVABLE_MODEL_KINDS:
            return (
                f"{where}: FineTuneJob {ref!r} produced a {result.kind} model, not a LoRA adapter {self.title} "
                "can serve; serve a causal-lm LoRA result"
            )
        return None

    def sources_problem(self, ms: ModelServe, sources: Sources) -> str | None:
        """Why this set of sources cannot be served together (e.g. adapter ranks), None when it can."""
        return None

    def _encoder_message(self, where: str, ref: str, task: str, result_uri: str | None) -> str:
        """Why a masked-lm or extractive question-answering job's result cannot be served for text generation."""
        if task == "masked-lm":
            base = f" (model.uri: {result_uri})" if result_uri else ""
            return (
                f"{where}: FineTuneJob {ref!r} trains a masked-lm model (fill-mask, not text generation), which "
                f"{self.title} cannot serve; use its result as the base of a sequence- or token-classification "
                f"FineTuneJob{base}, or serve it with your own Deployment (a transformers fill-mask pipeline)"
            )
        return (
            f"{where}: FineTuneJob {ref!r} trains an extractive question-answering model (it returns answer "
            f"spans, not generated text), which {self.title} cannot serve; run it with your own Deployment (a "
            "transformers question-answering pipeline)"
        )


__all__ = [
    "HF_CACHE_DIR",
    "HOME_DIR",
    "MODELS_DIR",
    "PORT_NAME",
    "SERVE_USER",
    "UNSERVABLE_MODEL_KINDS",
    "Engine",
    "LiveAdapterApi",
    "Placement",
    "Source",
    "Sources",
    "flags",
    "hf_token_env",
    "home_env",
]
