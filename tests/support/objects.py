"""kubetune's custom objects in tests: one set of wrappers for FineTuneJobs and ModelServes.

objs = Objects(api, namespace, "ModelServe")   create/get/patch/patch_status/delete/status/cond/
                                               wait_phase/events of one kind in one namespace
ftj = FTJ(kube, namespace)                     the same for FineTuneJobs, plus their children
                                               (jobs, pods) through the core clients
condition(obj, "Ready")                        one condition of an object as read
tiny_job(name, **spec)                         a small valid FineTuneJob manifest
example_docs(kind)                             the documents of examples/*.yaml of KIND
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GROUP, VERSION = "kubetune.io", "v1alpha1"
PLURALS = {"FineTuneJob": "finetunejobs", "ModelServe": "modelserves"}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition TYPE_ of OBJ's status, or {} when it has none."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return {}


class Objects:
    """One kind of kubetune object in one namespace, through the official client's CustomObjectsApi."""

    def __init__(self, api: Any, namespace: str, kind: str = "FineTuneJob") -> None:
        from kubernetes import client

        self.api = api
        self.ns = namespace
        self.kind = kind
        self.plural = PLURALS[kind]
        self.co = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        doc.setdefault("apiVersion", f"{GROUP}/{VERSION}")
        doc.setdefault("kind", self.kind)
        doc.setdefault("metadata", {})["namespace"] = self.ns
        return self.co.create_namespaced_custom_object(GROUP, VERSION, self.ns, self.plural, doc)

    def get(self, name: str) -> dict[str, Any]:
        return self.co.get_namespaced_custom_object(GROUP, VERSION, self.ns, self.plural, name)

    def exists(self, name: str) -> bool:
        from kubernetes import client

        try:
            self.get(name)
            return True
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the object (spec, metadata)."""
        return self.co.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, self.plural, name, patch, _content_type="application/merge-patch+json"
        )

    def patch_status(self, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the status subresource (what the trainer or a test writes there)."""
        return self.co.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, self.plural, name, {"status": status},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    def delete(self, name: str) -> None:
        self.co.delete_namespaced_custom_object(GROUP, VERSION, self.ns, self.plural, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def cond(self, name: str, type_: str) -> dict[str, Any]:
        return condition(self.get(name), type_)

    def wait_phase(self, name: str, phase: str | tuple[str, ...], timeout: float = 60.0) -> dict[str, Any]:
        """The status once status.phase is PHASE (or one of them); the failure message shows the status."""
        phases = (phase,) if isinstance(phase, str) else phase
        return wait_for(
            lambda: (s := self.status(name)).get("phase") in phases and s,
            timeout,
            0.1,
            f"{self.kind} {name} phase {' or '.join(phases)} (status then: {json.dumps(self._safe_status(name))[:1500]})",
        )

    def _safe_status(self, name: str) -> Any:
        try:
            return self.status(name)
        except Exception as exc:  # noqa: BLE001 - only for a failure message
            return str(exc)

    def events(self, name: str) -> list[Any]:
        """The Events about this object (core/v1 Events, as `kubectl describe` shows them)."""
        return [
            e
            for e in self.core.list_namespaced_event(
                self.ns, field_selector=f"involvedObject.name={name}"
            ).items
            if e.involved_object.kind == self.kind
        ]


class FTJ(Objects):
    """FineTuneJobs of one namespace and their children."""

    def __init__(self, kube: Any, namespace: str) -> None:
        from kubernetes import client

        super().__init__(kube.api, namespace, "FineTuneJob")
        self.batch = client.BatchV1Api(kube.api)
        self.rbac = client.RbacAuthorizationV1Api(kube.api)

    def jobs(self, name: str) -> list[Any]:
        return self.batch.list_namespaced_job(self.ns, label_selector=f"kubetune.io/finetunejob={name}").items

    def job(self, job_name: str) -> Any:
        return self.batch.read_namespaced_job(job_name, self.ns)

    def pods(self, name: str) -> list[Any]:
        return self.core.list_namespaced_pod(self.ns, label_selector=f"kubetune.io/finetunejob={name}").items


def example_docs(kind: str = "FineTuneJob") -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) of every KIND document in examples/*.yaml."""
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                out.append((path.name, doc))
    return out


def tiny_job(name: str, **spec: Any) -> dict[str, Any]:
    """A small valid FineTuneJob (1 node, 1 GPU, pvc output); SPEC keys override top-level spec fields."""
    labels = spec.pop("labels", None)
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "spec": {
            "model": {"uri": "hf://gpt2"},
            "dataset": {"uri": "hf://wikitext", "config": "wikitext-2-raw-v1", "format": "text"},
            "method": {"type": "lora"},
            "training": {"maxSteps": 10},
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "output": {"uri": "s3://bucket/out"},
        },
    }
    body["spec"].update(spec)
    return body
