"""Bad input, property-based: `kubetune validate` (the Python models) and the API server (the generated CRDs,
server-side dry run) agree on accepting or refusing FineTuneJob and ModelServe manifests.

Cases are the examples and mutations of them (tests/reliability/manifests.py). The only allowed
disagreement is the documented one (tests/data/invalid/README.md): checks that live only in Python (SSRF
hosts, '..' in pvc paths, credentials in URLs, the shape of targetModules, the smoke test's expect regex)
may refuse what the server accepts, never the reverse. Every refusal must name a field.

`make test` runs KUBETUNE_HYPOTHESIS_EXAMPLES (default 300) cases, derandomized (the same cases every run);
a longer, random run:

    KUBETUNE_HYPOTHESIS_EXAMPLES=5000 KUBETUNE_HYPOTHESIS_RANDOM=1 .venv/bin/python -m pytest \\
        tests/reliability/test_bad_input.py -p no:cacheprovider
"""

from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, note, settings
from kubernetes import client

from kubetune.api.v1alpha1 import GROUP, VERSION, validate_document
from tests.reliability.manifests import manifests
from tests.support.crds import apply_crds, wait_served

pytestmark = pytest.mark.cluster

MAX_EXAMPLES = int(os.environ.get("KUBETUNE_HYPOTHESIS_EXAMPLES", "300"))
RANDOM = os.environ.get("KUBETUNE_HYPOTHESIS_RANDOM") == "1"
PLURALS = {"FineTuneJob": "finetunejobs", "ModelServe": "modelserves"}

# Python-only rules (tests/data/invalid/README.md, "server: -"): the problem's message or field says which.
PYTHON_ONLY = [
    re.compile(r"must not contain '\.\.'"),
    re.compile(r"credentials in the URL are not allowed"),
    re.compile(r"datasets over https must come from a public address"),
    re.compile(r"not a valid regular expression"),
]
PYTHON_ONLY_FIELDS = re.compile(r"(^|\.)(targetModules|expect)$")


def python_only(problem) -> bool:
    return bool(PYTHON_ONLY_FIELDS.search(problem.path)) or any(
        p.search(problem.message) for p in PYTHON_ONLY
    )


@pytest.fixture(scope="module")
def dry_run(kube):
    apply_crds(kube.api)
    ns = kube.new_namespace("badinput")
    wait_served(kube.api, ns)
    custom = client.CustomObjectsApi(kube.api)

    def run(doc: dict) -> str | None:
        """None when the server accepts DOC, else its message."""
        try:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURALS[doc["kind"]], doc, dry_run="All", field_validation="Strict"
            )
            return None
        except client.ApiException as exc:
            assert exc.status in (400, 422), f"the server failed on the manifest: {exc.status} {exc.body}"
            return json.loads(exc.body)["message"]

    yield run
    kube.delete_namespace(ns)


@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=not RANDOM,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=manifests())
def test_validate_and_the_api_server_agree(dry_run, case):
    doc, mutations = case
    note(f"mutations: {mutations}")
    result = validate_document(doc)
    server = dry_run(doc)
    note(f"python: {[str(p) for p in result.problems]}")
    note(f"server: {server}")
    for problem in result.problems:
        assert problem.path, f"a Python problem names no field: {problem}"
    if server is not None:
        # "spec.training.epochs: Invalid value" or 'unknown field "spec.bogusField"'
        assert re.search(r"\b(spec|metadata)(\.[\w\[\]]+)+", server), (
            f"the server's refusal names no field: {server}"
        )
        assert not result.ok, f"the API server refuses what kubetune validate accepts: {server}"
    elif not result.ok:
        assert all(python_only(p) for p in result.problems), (
            "kubetune validate refuses what the API server accepts, for a rule that is not one of the "
            f"documented Python-only checks: {[str(p) for p in result.problems]}"
        )
