"""Small builders shared by the unit tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "data" / "invalid").glob("*.yaml"))


def finetunejob(name: str = "t", **spec: Any) -> dict[str, Any]:
    """A minimal valid FineTuneJob manifest; keyword arguments replace top-level spec fields."""
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://openai-community/gpt2"},
            "dataset": {"uri": "hf://Salesforce/wikitext"},
            "output": {"uri": "pvc://models/out"},
        },
    }
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def modelserve(name: str = "s", **spec: Any) -> dict[str, Any]:
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelServe",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}},
    }
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set doc[a][b][c] for "a.b.c", creating mappings on the way; returns doc."""
    *parents, last = dotted.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return doc


def header(path: Path) -> dict[str, str]:
    """The '# key: value' lines at the top of a manifest."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(":")
        if sep and key in ("expect", "server"):
            out[key] = value.strip()
    return out


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
