"""Hypothesis strategies for FineTuneJob and ModelServe manifests: the examples as they are (valid) and
mutations of them driven by the CRDs' own OpenAPI schema (wrong types, out-of-range and negative numbers,
unknown enum values, unicode, very long strings, missing fields, unknown fields, both members of an
exclusive pair).

The schema is only used to find *where* a mutation is interesting (an enum, a bound, a required field);
whether the result is valid is never predicted here: the test compares what `kubetune validate` and the
API server say about it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from kubetune import crdgen

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def example_manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every FineTuneJob and ModelServe in examples/, sorted."""
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") in ("FineTuneJob", "ModelServe"):
                out.append((f"{path.stem}#{i}", doc))
    return out


def spec_schemas() -> dict[str, dict[str, Any]]:
    """kind -> the openAPIV3Schema of its spec, as the CRDs in crds/ carry it."""
    out = {}
    for crd in crdgen.crd_documents():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        out[crd["spec"]["names"]["kind"]] = schema["properties"]["spec"]
    return out


# Pairs of fields of which at most one may be set (API.md); setting both must be refused by both sides.
EXCLUSIVE_PAIRS: dict[str, list[tuple[tuple[str, ...], Any, tuple[str, ...], Any]]] = {
    "FineTuneJob": [
        (("training", "warmupRatio"), 0.1, ("training", "warmupSteps"), 10),
        (("dataset", "evalSplit"), "validation", ("dataset", "evalFraction"), 0.1),
    ],
    "ModelServe": [
        (("model", "fineTuneJobRef"), {"name": "some-job"}, ("model", "uri"), "hf://org/model"),
    ],
}


@dataclass(frozen=True)
class Site:
    """A place in a spec: its path (keys and list indexes below spec), its schema, and whether it is set."""

    path: tuple[str | int, ...]
    schema: dict[str, Any]
    present: bool
    required: bool


def sites(value: Any, schema: dict[str, Any], path: tuple = (), required: bool = False) -> list[Site]:
    """Every field of VALUE (and every absent optional field its schema knows), depth first, in order."""
    out = [Site(path, schema, True, required)] if path else []
    if isinstance(value, dict) and "properties" in schema:
        req = set(schema.get("required", []))
        for key in sorted(schema["properties"]):
            sub = schema["properties"][key]
            if key in value:
                out += sites(value[key], sub, (*path, key), key in req)
            else:
                out.append(Site((*path, key), sub, False, key in req))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += sites(item, schema["items"], (*path, i))
    return out


def get_in(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def set_in(doc: Any, path: tuple, value: Any) -> None:
    """Set PATH to VALUE, making (or replacing a non-container with) the objects on the way."""
    for part, below in zip(path[:-1], path[1:], strict=True):
        container = list if isinstance(below, int) else dict
        if isinstance(doc, dict) and not isinstance(doc.get(part), container):
            doc[part] = container()
        doc = doc[part]
    doc[path[-1]] = value


def delete_in(doc: Any, path: tuple) -> None:
    parent = get_in(doc, path[:-1])
    del parent[path[-1]]


UNICODE = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40
)  # surrogates cannot travel as JSON text
# Object names: DNS subdomains (253 characters, lowercase, dots allowed) on the API server.
ODD_NAMES = [
    "a.b",
    "job.v2",
    "UPPER",
    "a_b",
    "-a",
    "a-",
    "a" * 63,
    "a" * 64,
    "a" * 253,
    "a" * 254,
    "a..b",
    "é",
]
WRONG_TYPE_VALUES = [-1, 0, 7, 1.5, -0.5, "text", "", True, False, [], ["x"], {}, {"x": 1}, None]


def _typed_value(draw, schema: dict[str, Any]) -> Any:
    """A value of the schema's own type, in or out of its bounds (for setting an absent field)."""
    if "enum" in schema:
        return draw(st.one_of(st.sampled_from(schema["enum"]), UNICODE))
    kind = schema.get("type")
    if kind == "integer":
        return draw(st.integers(-5, 100_000))
    if kind == "number":
        return draw(st.floats(-10, 1e6, allow_nan=False, allow_infinity=False))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "string":
        return draw(st.one_of(UNICODE, st.sampled_from(["hf://org/model", "s3://bucket/x", "pvc://claim/x"])))
    if kind == "array":
        return draw(st.sampled_from([[], ["x"], [{"name": "x"}]]))
    return draw(st.sampled_from([{}, {"name": "x"}]))


@st.composite
def mutation(draw, kind: str, doc: dict[str, Any], schema: dict[str, Any]) -> str:
    """Mutate DOC's spec in place once; return a short description of what was done."""
    spec = doc["spec"]
    choice = draw(
        st.sampled_from(
            ["wrong-type", "bounds", "string", "delete", "add", "unknown-field", "exclusive-pair", "name"]
        )
    )
    if choice == "name":
        doc["metadata"]["name"] = name = draw(st.one_of(st.sampled_from(ODD_NAMES), UNICODE))
        return f"metadata.name={_short(name)}"
    if choice == "exclusive-pair":
        a, va, b, vb = draw(st.sampled_from(EXCLUSIVE_PAIRS[kind]))
        set_in(spec, a, va)
        set_in(spec, b, vb)
        return f"both {'.'.join(a)} and {'.'.join(b)}"
    all_sites = sites(spec, schema)
    present = [s for s in all_sites if s.present]
    if choice == "unknown-field":
        objects = [s for s in present if isinstance(get_in(spec, s.path), dict)]
        site = draw(st.sampled_from(objects)) if objects else Site((), schema, True, False)
        key = draw(st.sampled_from(["bogusField", "Epochs", "gpus", "extra"]))
        get_in(spec, site.path)[key] = 1
        return f"unknown field {_dotted(site.path + (key,))}"
    if choice == "add":
        absent = [s for s in all_sites if not s.present]
        if absent:
            site = draw(st.sampled_from(absent))
            value = _typed_value(draw, site.schema)
            set_in(spec, site.path, value)
            return f"add {_dotted(site.path)}={value!r}"
        choice = "wrong-type"
    site = draw(st.sampled_from(present))
    current = get_in(spec, site.path)
    if choice == "delete":
        delete_in(spec, site.path)
        return f"delete {_dotted(site.path)}{' (required)' if site.required else ''}"
    if choice == "bounds":
        value = draw(_out_of_bounds(site.schema, current))
    elif choice == "string":
        value = draw(
            st.one_of(
                UNICODE,
                st.text(st.sampled_from("ab-/."), min_size=300, max_size=300).map(lambda s: s * 20),
                st.sampled_from(["", " ", "UPPER", "a..b", "x" * 64]),
            )
        )
    else:
        value = draw(st.sampled_from([v for v in WRONG_TYPE_VALUES if type(v) is not type(current)]))
    set_in(spec, site.path, value)
    return f"{choice} {_dotted(site.path)}={_short(value)}"


def _out_of_bounds(schema: dict[str, Any], current: Any):
    candidates: list[Any] = [-1, 0, -(10**9), 10**12, 2**63, 1e308]
    for key in ("minimum", "maximum"):
        if key in schema:
            bound = schema[key]
            candidates += [bound, bound - 1, bound + 1, bound - 0.5, bound + 0.5]
    if "maxLength" in schema:
        candidates.append("y" * (schema["maxLength"] + 1))
    if "minLength" in schema and schema["minLength"] > 0:
        candidates.append("")
    if "maxItems" in schema:
        candidates.append(["x"] * (schema["maxItems"] + 1))
    if "minItems" in schema and schema["minItems"] > 0:
        candidates.append([])
    if "enum" in schema:
        candidates += [str(current).upper() if isinstance(current, str) else "Unknown", "unknown-value"]
    return st.sampled_from(candidates)


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} chars)"


_BASES = example_manifests()
_SCHEMAS = spec_schemas()


@st.composite
def manifests(draw, max_mutations: int = 2) -> tuple[dict[str, Any], list[str]]:
    """(manifest, what was mutated): an example with 0..max_mutations mutations of its spec."""
    _, base = draw(st.sampled_from(_BASES))
    doc = copy.deepcopy(base)
    doc["metadata"] = {"name": doc["metadata"]["name"]}
    kind = doc["kind"]
    done = [draw(mutation(kind, doc, _SCHEMAS[kind])) for _ in range(draw(st.integers(0, max_mutations)))]
    return doc, done
