"""A create request of OpenAI's fine-tuning API -> a FineTuneJob manifest (pure; docs/openai-api.md has
the mapping field by field).

Refused, each with a 400 naming the parameter: ``method.type: reinforcement`` (OpenAI's graders have no
counterpart; kubetune's grpo/rloo take reward functions), ``integrations`` (a FineTuneJob's
spec.tracking takes their place, with a Secret for the key), a method that does not fit the training
file's format, and anything the FineTuneJob's own validation refuses (quoted with its field).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from kubetune.api.v1alpha1 import API_VERSION, validate_document

from .errors import ApiError, bad_request
from .settings import GatewaySettings
from .training_files import DATASET_FORMATS, METHODS

# Labels and annotations the gateway puts on the FineTuneJobs it makes.
LABEL_CREATED_BY = "kubetune.io/created-by"
CREATED_BY_API = "openai-api"
LABEL_TRAINING_FILE = "kubetune.io/openai-training-file"
ANN = "openai.kubetune.io/"
ANN_MODEL = ANN + "model"
ANN_USER = ANN + "created-by"
ANN_REQUEST = ANN + "request-digest"
ANN_IDEMPOTENCY = ANN + "idempotency-key-digest"
ANN_SUFFIX = ANN + "suffix"
ANN_METADATA = ANN + "metadata"
ANN_TRAINING_FILE = ANN + "training-file"
ANN_VALIDATION_FILE = ANN + "validation-file"
ANN_METHOD = ANN + "method"
ANN_CANCELLED = ANN + "cancelled-at"

JOB_PREFIX = "ftjob-"
TRAIN_SPLIT, VALIDATION_SPLIT = "train", "validation"
MAX_SEED = 2**31 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Auto = Literal["auto"]


class Hyperparameters(_Strict):
    batch_size: Auto | Annotated[int, Field(ge=1, le=4096)] | None = None
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] | None = None
    n_epochs: Auto | Annotated[int, Field(ge=1, le=100)] | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=100)] | None = None


class SupervisedMethod(_Strict):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class JobCreateRequest(_Strict):
    """The body of POST /v1/fine_tuning/jobs (OpenAI's JobCreateParams)."""

    model: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    training_file: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    validation_file: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None
    integrations: list[dict[str, Any]] | None = None

    @property
    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"


def parse_request(body: Any) -> JobCreateRequest:
    """The request, or a 400 naming the first parameter that is wrong."""
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    try:
        request = JobCreateRequest.model_validate(body)
    except ValidationError as error:
        problems = error.errors(include_url=False)

        def where(item: Any) -> str:  # union members (int, 'auto', ...) say nothing to a user
            return ".".join(
                str(p)
                for p in item["loc"]
                if not re.match(r"^(literal\[|function-|constrained-|int$|float$|str$)", str(p))
            )

        param = where(problems[0])
        if problems[0]["type"] == "extra_forbidden":
            raise bad_request(f"Unrecognized request argument supplied: {param}", param) from None
        said = [item["msg"] for item in problems if where(item) == param]
        raise bad_request(f"{param}: {'; or '.join(dict.fromkeys(said))}", param) from None
    if request.integrations:
        raise bad_request(
            "integrations are not supported by kubetune's gateway: a FineTuneJob reports to Weights & Biases, "
            "MLflow or TensorBoard through spec.tracking (with a Secret for the key); create it with kubectl",
            "integrations",
        )
    if request.method_type == "reinforcement":
        raise bad_request(
            "method reinforcement is not supported: OpenAI's graders have no counterpart in kubetune; a "
            "FineTuneJob with objective grpo or rloo trains with reward models and built-in reward functions "
            "(docs/objectives.md)",
            "method.type",
        )
    if request.hyperparameters and request.method and _method_hyperparameters(request):
        raise bad_request(
            "hyperparameters is deprecated in favour of method.<type>.hyperparameters: set only one of them",
            "hyperparameters",
        )
    return request


def _method_hyperparameters(request: JobCreateRequest) -> Hyperparameters | None:
    method = request.method
    if method is None:
        return None
    inner = method.supervised if method.type == "supervised" else method.dpo
    return inner.hyperparameters if inner else None


def hyperparameters_of(request: JobCreateRequest) -> Hyperparameters:
    return _method_hyperparameters(request) or request.hyperparameters or Hyperparameters()


def request_digest(request: JobCreateRequest) -> str:
    """A digest of what the request asks for (an idempotent replay must ask for the same)."""
    canonical = json.dumps(request.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def job_name(namespace: str, user: str, idempotency_key: str | None) -> str:
    """The FineTuneJob's name, which is the job id: derived from the caller's Idempotency-Key (the same key
    from the same caller in the same namespace names the same job, so a retry finds the job it made), or
    random without one."""
    if idempotency_key is None:
        return JOB_PREFIX + secrets.token_hex(12)
    material = "\0".join((namespace, user, idempotency_key)).encode()
    return JOB_PREFIX + hashlib.sha256(material).hexdigest()[:24]


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
URI_SCHEMES = ("hf://", "pvc://", "s3://", "oci://")


def resolve_model(name: str, base_models: dict[str, str]) -> tuple[str, str]:
    """("uri", URI) or ("job", FineTuneJob name) for the request's model; the caller checks that such a
    FineTuneJob exists. A 400 names what would work."""
    if name in base_models:
        return "uri", base_models[name]
    if name.startswith(URI_SCHEMES):
        return "uri", name
    if HUB_ID.match(name):
        return "uri", f"hf://{name}"
    if K8S_NAME.match(name) and len(name) <= 253:
        return "job", name
    known = ", ".join(sorted(base_models)) or "none configured"
    raise bad_request(
        f"model {name!r} is not available here: use a configured model ({known}), a URI (hf://, pvc://, s3://, "
        "oci://), a Hub id ORG/NAME, or the id of a fine-tuning job of this namespace to continue from",
        "model",
        "model_not_available",
    )


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """OVER deep-merged onto a copy of BASE (mappings merge, everything else is replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# FineTuneJob fields -> the request parameter a user changes to fix them.
PARAMS = {
    "spec.model": "model",
    "spec.dataset": "training_file",
    "spec.training.epochs": "hyperparameters.n_epochs",
    "spec.training.batchSize": "hyperparameters.batch_size",
    "spec.training.learningRate": "hyperparameters.learning_rate_multiplier",
    "spec.training.seed": "seed",
    "spec.objective": "method",
}


def _param_for(path: str) -> str | None:
    return next((param for prefix, param in PARAMS.items() if path.startswith(prefix)), None)


def finetunejob(
    request: JobCreateRequest,
    *,
    name: str,
    namespace: str,
    user: str,
    model: tuple[str, str],
    file_kind: str,
    dataset_uri: str,
    has_validation: bool,
    settings: GatewaySettings,
    seed: int,
    idempotency_key: str | None,
) -> dict[str, Any]:
    """The FineTuneJob for REQUEST, checked as the API server and the operator would (a 400 otherwise).

    MODEL is resolve_model's answer; FILE_KIND the training file's kind (training_files); DATASET_URI the
    folder (as the trainer pods see it) holding train.jsonl and, with HAS_VALIDATION, validation.jsonl."""
    method = request.method_type
    if METHODS[file_kind] != method:
        raise bad_request(
            f"{request.training_file} holds {file_kind} examples, which train with method "
            f"{METHODS[file_kind]}, not {method}: upload {'preference pairs' if method == 'dpo' else 'chat examples'} "
            f"or set method.type to {METHODS[file_kind]}",
            "training_file",
            "invalid_training_file",
        )
    hp = hyperparameters_of(request)
    training: dict[str, Any] = {"seed": seed}
    if isinstance(hp.n_epochs, int):
        training["epochs"] = hp.n_epochs
    if isinstance(hp.batch_size, int):
        training["batchSize"] = hp.batch_size
    if isinstance(hp.learning_rate_multiplier, float | int):
        training["learningRate"] = settings.base_learning_rate * hp.learning_rate_multiplier
    objective: dict[str, Any] = {"type": "dpo" if method == "dpo" else "sft"}
    if isinstance(hp, DpoHyperparameters) and isinstance(hp.beta, float | int):
        objective["dpo"] = {"beta": hp.beta}
    kind, value = model
    dataset: dict[str, Any] = {
        "uri": dataset_uri,
        "format": DATASET_FORMATS[file_kind],
        "trainSplit": TRAIN_SPLIT,
    }
    if has_validation:
        dataset["evalSplit"] = VALIDATION_SPLIT
    if settings.files_secret:
        dataset["secretRef"] = {"name": settings.files_secret}
    mapped = {
        "model": {"uri": value} if kind == "uri" else {"fineTuneJobRef": {"name": value}},
        "dataset": dataset,
        "objective": objective,
        "training": training,
        "output": {"uri": settings.output_uri.format(job=name, namespace=namespace)},
    }
    spec = merge(settings.job_defaults, mapped)
    if kind == "job":  # a fineTuneJobRef replaces a default model.uri (they are exclusive)
        spec["model"].pop("uri", None)
    annotations = {
        ANN_MODEL: request.model,
        ANN_USER: user,
        ANN_REQUEST: request_digest(request),
        ANN_TRAINING_FILE: request.training_file,
        ANN_METHOD: method,
    }
    if idempotency_key is not None:
        annotations[ANN_IDEMPOTENCY] = idempotency_digest(idempotency_key)
    if request.validation_file:
        annotations[ANN_VALIDATION_FILE] = request.validation_file
    if request.suffix:
        annotations[ANN_SUFFIX] = request.suffix
    if request.metadata is not None:
        annotations[ANN_METADATA] = json.dumps(request.metadata, sort_keys=True)
    labels = {LABEL_CREATED_BY: CREATED_BY_API}
    if re.match(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,61}[A-Za-z0-9]$", request.training_file):
        labels[LABEL_TRAINING_FILE] = request.training_file
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": spec,
    }
    checked = validate_document(manifest)
    if checked.problems:
        first = checked.problems[0]
        raise ApiError(
            400,
            "the FineTuneJob this request maps to is not valid: "
            + "; ".join(str(p) for p in checked.problems[:5]),
            _param_for(first.path),
            "invalid_job",
            retry=False,
        )
    return manifest


__all__ = [
    "ANN_CANCELLED", "ANN_IDEMPOTENCY", "ANN_METADATA", "ANN_METHOD", "ANN_MODEL", "ANN_REQUEST", "ANN_SUFFIX",
    "ANN_TRAINING_FILE", "ANN_USER", "ANN_VALIDATION_FILE", "CREATED_BY_API", "JOB_PREFIX", "LABEL_CREATED_BY",
    "LABEL_TRAINING_FILE", "MAX_SEED", "TRAIN_SPLIT", "VALIDATION_SPLIT", "JobCreateRequest", "finetunejob",
    "hyperparameters_of", "idempotency_digest", "job_name", "merge", "parse_request", "request_digest",
    "resolve_model",
]  # fmt: skip
