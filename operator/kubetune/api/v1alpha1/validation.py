"""Turn a manifest (a dict) into a model or a list of problems, each with a field path a user can find.

Pure: the caller reads files and prints; ``kubetune validate`` and the operator's Validated condition
both use ``validate_document``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .common import API_VERSION, TARGET_CLUSTER, Problem
from .finetunejob import FineTuneJob
from .modelserve import ModelServe

KINDS: dict[str, type[FineTuneJob] | type[ModelServe]] = {
    "FineTuneJob": FineTuneJob,
    "ModelServe": ModelServe,
}


@dataclass
class Validated:
    """The result of validating one manifest."""

    kind: str
    name: str
    obj: FineTuneJob | ModelServe | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    """Valid, but worth saying (e.g. perplexity without an evaluation set is the training perplexity)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_document(doc: Any, target: str = TARGET_CLUSTER) -> Validated:
    """Validate one manifest of either kind against the schema and the cross-field rules."""
    if not isinstance(doc, dict):
        return Validated("?", "?", problems=[Problem("", "not a Kubernetes object (expected a mapping)")])
    kind = str(doc.get("kind", "?"))
    name = (
        str((doc.get("metadata") or {}).get("name") or "?") if isinstance(doc.get("metadata"), dict) else "?"
    )
    if doc.get("apiVersion") != API_VERSION:
        return Validated(
            kind,
            name,
            problems=[Problem("apiVersion", f"must be {API_VERSION}, not {doc.get('apiVersion')!r}")],
        )
    model = KINDS.get(kind)
    if model is None:
        return Validated(
            kind, name, problems=[Problem("kind", f"must be one of {', '.join(KINDS)}, not {kind!r}")]
        )
    if name == "?":
        return Validated(kind, name, problems=[Problem("metadata.name", "required: give the object a name")])
    try:
        # Strict, from JSON: the types the API server enforces (no "1" for 1, no 0 for false, no true
        # for 1), with timestamps read from their strings as in any object from the API.
        text = json.dumps(doc, default=_json_default)
        obj = model.model_validate_json(text, strict=True, context={"target": target})
    except ValidationError as error:
        return Validated(kind, name, problems=problems_from(error))
    # Integer fields (not number ones) must fit the API server's int64; a number field takes a float.
    too_big = list(_huge_integers(obj.model_dump(by_alias=True, exclude_none=True)))
    if too_big:
        return Validated(kind, name, problems=too_big)
    warnings = (
        [Problem(f"spec.{w.path}", w.message) for w in obj.spec.warnings()]
        if isinstance(obj, FineTuneJob)
        else []
    )
    return Validated(kind, name, obj=obj, warnings=warnings)


INT64 = 2**63


def _huge_integers(value: Any, path: str = "") -> Iterator[Problem]:
    """Integers the API server cannot hold (it stores int64: larger ones arrive as a float and fail the
    type check), wherever they are."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _huge_integers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _huge_integers(item, f"{path}[{index}]")
    elif isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        yield Problem(path, f"{value} does not fit in a 64-bit integer")


def _json_default(value: Any) -> str:
    """YAML reads unquoted timestamps as datetimes: write them back as the strings the API would send."""
    if isinstance(value, date | datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"not a JSON value: {value!r}")


def problems_from(error: ValidationError) -> list[Problem]:
    """One Problem per pydantic error, with a dotted camelCase path and a message a user can act on."""
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        base = _path(item["loc"])
        if item["type"] == "cross_field":
            for rel, message in item["ctx"]["problems"]:
                problems.append(Problem(".".join(p for p in (base, rel) if p), message))
            continue
        problems.append(Problem(base, _message(item)))
    # A value that fits no member of a union gets one error per member: say them on one line.
    merged: dict[str, list[str]] = {}
    for problem in problems:
        messages = merged.setdefault(problem.path, [])
        if problem.message not in messages:
            messages.append(problem.message)
    return [Problem(path, "; or ".join(messages)) for path, messages in merged.items()]


def _path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif "[" in str(part) or str(part).startswith(("function-", "constrained-")):
            continue  # union member and validator tags say nothing to a user
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def _message(item: ErrorDetails) -> str:
    kind, message = item["type"], item["msg"]
    if kind == "extra_forbidden":
        return "unknown field; check its spelling and place (`kubectl explain` lists the fields)"
    if kind == "missing":
        return "required field is missing"
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    value = item.get("input")
    if (
        "input" in item
        and kind != "missing"
        and not isinstance(value, dict | list)
        and str(value) not in message
    ):
        message = f"{message} (got {value!r})"
    return message
