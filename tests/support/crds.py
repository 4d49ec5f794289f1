"""The project's CRDs (crds/*.yaml, written by `kubetune crds`) on a test cluster: one applier for every test.

apply_crds(api)              server-side apply of every CRD, then wait until each is Established
wait_served(api, namespace)  then wait until the API server serves both kinds in NAMESPACE
crd_docs()                   the CRD documents as committed
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
FIELD_MANAGER = "kubetune-tests"


def crd_docs() -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in crds/, in file order."""
    docs = [
        doc
        for path in sorted(CRDS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
    ]
    assert docs, f"{CRDS} has no CustomResourceDefinition: run `make crds`"
    return docs


def _conditions(ext: Any, name: str) -> dict[str, Any]:
    return {c.type: c for c in ext.read_custom_resource_definition(name).status.conditions or []}


def _established(ext: Any, name: str) -> bool:
    established = _conditions(ext, name).get("Established")
    return established is not None and established.status == "True"


def _names_refused(ext: Any, name: str) -> str | None:
    names = _conditions(ext, name).get("NamesAccepted")
    return (
        f"its names were not accepted: {names.message}"
        if names is not None and names.status == "False"
        else None
    )


def apply_crds(api: Any, timeout: float = 60.0) -> list[str]:
    """Server-side apply every CRD of crds/ (creates or updates; a schema or CEL rule the API server
    refuses fails with its message), then wait until each is Established. Returns their names."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    names = []
    for doc in crd_docs():
        name = doc["metadata"]["name"]
        try:
            ext.patch_custom_resource_definition(
                name, doc, field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml",
            )  # fmt: skip
        except client.ApiException as exc:
            raise AssertionError(f"CRD {name} refused by the API server ({exc.status}): {exc.body}") from None
        names.append(name)
    for name in names:
        # A rejected name fails at once, with the API server's message.
        wait_for(
            functools.partial(_established, ext, name), timeout, 0.2, f"CRD {name} Established",
            fail_if=functools.partial(_names_refused, ext, name),
        )  # fmt: skip
    return names


def wait_served(api: Any, namespace: str, timeout: float = 30.0) -> None:
    """Wait until the API server serves kubetune's resources in NAMESPACE: a moment after the CRDs are
    Established, a request can still get 404."""
    from kubernetes import client

    from kubetune.crdgen import GROUP, KINDS, VERSION

    custom = client.CustomObjectsApi(api)

    def served() -> bool:
        for kind in KINDS:
            custom.list_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural)
        return True

    wait_for(served, timeout, 0.2, f"the kubetune resources served in {namespace}")
