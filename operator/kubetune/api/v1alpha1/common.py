"""Types both kinds share: the model base, references, conditions, quantities, problems."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Validation targets: "cluster" (what the API server and the operator accept) or "local"
# (`kubetune train --local`, where file:// URIs and a missing output are fine).
TARGET_CLUSTER = "cluster"
TARGET_LOCAL = "local"


class KubeModel(BaseModel):
    """Base for every API object: camelCase in YAML, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        """An explicit null counts as unset where the field is not nullable, as on the API server (which
        prunes such nulls before defaulting): `learningRate: null` gets the default, a required field
        set to null is missing."""
        if not isinstance(data, dict) or None not in data.values():
            return data
        nullable = {
            key for name, f in cls.model_fields.items() if f.default is None for key in (name, f.alias) if key
        }
        return {k: v for k, v in data.items() if v is not None or k in nullable}

    def to_dict(self) -> dict[str, Any]:
        """The object as a manifest would have it: camelCase keys, JSON types, unset optionals left out."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _check_quantity(value: str | int | None) -> str | None:
    if value is None:
        return None
    text = str(value)
    if isinstance(value, int) and value >= 2**63:
        raise PydanticCustomError("quantity", "{value} does not fit in a 64-bit integer", {"value": text})
    if not _QUANTITY.match(text) or text.startswith("-"):
        raise PydanticCustomError(
            "quantity",
            "'{value}' is not a Kubernetes quantity; write it like 8, 500m, 64Gi or 1.5",
            {"value": text},
        )
    return text


# The same syntax without a minus sign, for the CRD (the API server applies it to strings only).
_QUANTITY_CRD_PATTERN = _QUANTITY.pattern.replace(r"^(\+|-)?", r"^\+?", 1)

Quantity = Annotated[
    # No float: the API server takes an integer or a string here (1.5 must be written "1.5" or 1500m).
    str | int,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": _QUANTITY_CRD_PATTERN,
            # The pattern applies to strings only: a negative integer needs its own rule.
            "x-kubernetes-validations": [
                {"rule": "type(self) == string || self >= 0", "message": "must not be negative"}
            ],
        }
    ),
]
"""A Kubernetes resource quantity such as 8, 500m or 64Gi."""

IntOrPercent = Annotated[
    int | str,
    WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class LocalObjectReference(KubeModel):
    """A reference to an object in the same namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Name of the object."""


class SecretKeyRef(KubeModel):
    """A key of a Secret in the same namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1)] = "HF_TOKEN"
    """Key inside the Secret."""


class Toleration(KubeModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = None
    """The taint key the toleration applies to; empty matches all keys."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: str | None = None
    """The taint value the toleration matches."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class EnvVar(KubeModel):
    """A container environment variable (core/v1 EnvVar)."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    """Name of the variable."""
    value: str | None = None
    """Literal value."""
    value_from: Annotated[
        dict[str, Any] | None, Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    ] = None
    """Source for the value (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), as in core/v1."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """A status condition following the Kubernetes API conventions."""

    type: str
    """Type of the condition, e.g. Running."""
    status: ConditionStatus
    """True, False or Unknown."""
    observed_generation: int | None = None
    """The metadata.generation this condition reflects."""
    reason: str | None = None
    """A CamelCase word for the last transition."""
    message: str | None = None
    """What happened, in words a user can act on."""
    last_transition_time: datetime | None = None
    """When the status last changed."""


class ObjectMeta(KubeModel):
    """The parts of metadata kubetune reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str | None, Field(max_length=253, pattern=DNS_SUBDOMAIN)] = None
    """Name of the object: a lowercase RFC 1123 subdomain, as the API server requires."""
    namespace: str | None = None
    """Namespace of the object."""
    labels: dict[str, str] | None = None
    """Labels of the object."""
    annotations: dict[str, str] | None = None
    """Annotations of the object."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest: where (a dotted field path) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def raise_problems(problems: list[Problem]) -> None:
    """Raise the cross-field problems of a model as one pydantic error that keeps each path.

    Paths are relative to the model that raises. ``kubetune.api.v1alpha1.validation`` unpacks them
    again so that every problem gets its own line with its full path.
    """
    if problems:
        raise PydanticCustomError(
            "cross_field",
            "{summary}",
            {
                "summary": "; ".join(str(p) for p in problems),
                "problems": [(p.path, p.message) for p in problems],
            },
        )
