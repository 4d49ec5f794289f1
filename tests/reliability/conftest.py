"""Fixtures for the fault tests: the operator as a subprocess watching only rel-* namespaces (so it never
meets the operators of tests/operator or tests/serve in the same session), a namespace per test, and a
watch that records every state a pod went through (a pod can be Failed for a few milliseconds only)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
from kubernetes import client, watch

from tests.support.crds import apply_crds
from tests.support.objects import FTJ
from tests.support.operator import Operator

NS_PREFIX = "rel"  # the session operator's namespaces
OWN_NS_PREFIX = "relown"  # namespaces of tests that run their own operator: not rel-*


@pytest.fixture(scope="session")
def rel_operator(kube, tmp_path_factory):
    apply_crds(kube.api)
    op = Operator(kube.kubeconfig, tmp_path_factory.mktemp("rel-operator"), namespaces=f"{NS_PREFIX}-*")
    op.start()
    yield op
    op.stop()


def _fresh_namespace(kube, prefix: str):
    """A new namespace for one test; its pods dropped and it deleted after the test."""
    name = kube.new_namespace(prefix)
    yield name
    kube.drop_pods(name)
    kube.delete_namespace(name)


@pytest.fixture
def rel_ns(kube, rel_operator):
    """A namespace the session's operator (rel_operator) watches."""
    yield from _fresh_namespace(kube, NS_PREFIX)


@pytest.fixture
def own_ns(kube):
    """A namespace for a test that runs operators of its own on it (faults.operator): the session's operator
    does not watch it (its name does not start with rel-). The CRDs are applied."""
    apply_crds(kube.api)
    yield from _fresh_namespace(kube, OWN_NS_PREFIX)


@pytest.fixture
def ftj(kube, rel_ns) -> FTJ:
    return FTJ(kube, rel_ns)


class PodRecorder:
    """Every version of every pod in a namespace, as the API server sent them (a watch in a thread)."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.core = client.CoreV1Api(api)
        self.ns = namespace
        self.seen: list[tuple[str, Any]] = []
        self._watch = watch.Watch()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rv = self.core.list_namespaced_pod(self.ns).metadata.resource_version
        self._ready.set()
        with contextlib.suppress(Exception):  # stop() closes the stream under the reader's feet
            for event in self._watch.stream(
                self.core.list_namespaced_pod, self.ns, resource_version=rv, timeout_seconds=300
            ):
                self.seen.append((event["type"], event["object"]))

    def __enter__(self) -> PodRecorder:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.stop()

    def versions(self, name: str) -> list[Any]:
        return [pod for _, pod in self.seen if pod.metadata.name == name]
