"""Helpers for the operator tests: examples, the CRDs, a `kubetune operator` subprocess, polling."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CRDS = REPO / "crds"
NS_PREFIX = "ftj"  # the operator under test watches only ftj-* namespaces (other sessions may run theirs)


def example_docs(kind: str = "FineTuneJob") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                out.append((path.name, doc))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """`kubetune operator` as a subprocess (what a Deployment runs), restartable."""

    def __init__(self, kubeconfig: str, log_dir: Path, namespaces: str = f"{NS_PREFIX}-*", **env: str):
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.namespaces = namespaces
        self.extra_env = env
        self.proc: subprocess.Popen | None = None
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        env = dict(os.environ)
        env.update(
            KUBECONFIG=self.kubeconfig,
            KUBETUNE_NAMESPACES=self.namespaces,
            KUBETUNE_METRICS_PORT=str(self.metrics_port),
            KUBETUNE_HEALTH_PORT=str(self.health_port),
            KUBETUNE_BACKOFF_BASE_SECONDS="0.5",
            KUBETUNE_BACKOFF_MAX_SECONDS="5",
            PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer_image")]),
            **self.extra_env,
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.log_path, "w")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli", "operator"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        wait_for(self.healthy, timeout, 0.2, f"the operator's liveness endpoint (log: {self.log_path})")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"operator exited: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""


def apply_crds(api) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            api.call_api(
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{doc['metadata']['name']}",
                "PATCH",
                query_params=[("fieldManager", "kubetune-tests"), ("force", "true")],
                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                body=doc,
                auth_settings=["BearerToken"],
                _preload_content=False,
            )

            def established(name=doc["metadata"]["name"]):
                crd = ext.read_custom_resource_definition(name)
                return any(
                    c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
                )

            wait_for(established, 30, 0.2, f"CRD {doc['metadata']['name']} established")


def wait_served(api, namespace: str, timeout: float = 30.0) -> None:
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


@pytest.fixture(scope="session")
def crds(kube):
    apply_crds(kube.api)
    return True


@pytest.fixture(scope="session")
def operator(kube, crds, tmp_path_factory):
    op = Operator(kube.kubeconfig, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


@pytest.fixture
def ftj_ns(kube, operator):
    """A fresh namespace the operator under test watches."""
    name = kube.new_namespace(NS_PREFIX)
    yield name
    kube.drop_pods(name)  # fake pods that never finish (outcome=run) would hold their GPUs for 120 s
    kube.delete_namespace(name)


@pytest.fixture(autouse=True)
def _operator_log_on_failure(request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "operator" in request.fixturenames:
        op = request.getfixturevalue("operator")
        print("---- operator log (tail) ----\n" + op.log_tail(120))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ------------------------------------------------------------------------------------------------
# FineTuneJob helpers


class FTJ:
    """Thin helpers around the FineTuneJob API for tests."""

    def __init__(self, kube, namespace: str):
        from kubernetes import client

        self.api = kube.api
        self.ns = namespace
        self.co = client.CustomObjectsApi(kube.api)
        self.core = client.CoreV1Api(kube.api)
        self.batch = client.BatchV1Api(kube.api)
        self.rbac = client.RbacAuthorizationV1Api(kube.api)

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        doc.setdefault("metadata", {})["namespace"] = self.ns
        return self.co.create_namespaced_custom_object(
            "kubetune.io", "v1alpha1", self.ns, "finetunejobs", doc
        )

    def get(self, name: str) -> dict[str, Any]:
        return self.co.get_namespaced_custom_object("kubetune.io", "v1alpha1", self.ns, "finetunejobs", name)

    def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.co.patch_namespaced_custom_object(
            "kubetune.io", "v1alpha1", self.ns, "finetunejobs", name, patch
        )

    def delete(self, name: str) -> None:
        self.co.delete_namespaced_custom_object("kubetune.io", "v1alpha1", self.ns, "finetunejobs", name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def cond(self, name: str, type_: str) -> dict[str, Any]:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == type_:
                return c
        return {}

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") == phase and s,
            timeout,
            0.1,
            f"{name} phase {phase} (status: {json.dumps(self._safe_status(name))[:1500]})",
        )

    def _safe_status(self, name: str) -> Any:
        try:
            return self.status(name)
        except Exception as exc:  # noqa: BLE001
            return str(exc)

    def jobs(self, name: str) -> list[Any]:
        return self.batch.list_namespaced_job(self.ns, label_selector=f"kubetune.io/finetunejob={name}").items

    def job(self, job_name: str):
        return self.batch.read_namespaced_job(job_name, self.ns)

    def events(self, name: str) -> list[Any]:
        return [
            e
            for e in self.core.list_namespaced_event(self.ns).items
            if e.involved_object.name == name and e.involved_object.kind == "FineTuneJob"
        ]

    def pods(self, name: str) -> list[Any]:
        return self.core.list_namespaced_pod(self.ns, label_selector=f"kubetune.io/finetunejob={name}").items


def tiny_job(name: str, **spec: Any) -> dict[str, Any]:
    """A small valid FineTuneJob (1 node, 1 GPU, pvc output); SPEC keys override top-level spec fields."""
    labels = spec.pop("labels", None)
    body: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
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


@pytest.fixture
def ftj(kube, ftj_ns) -> FTJ:
    return FTJ(kube, ftj_ns)
