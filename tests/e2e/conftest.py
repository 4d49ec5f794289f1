"""Fixtures of the end-to-end tests: images built from this repository and loaded into the nodes, the
target cluster (the real node of the local control plane, or kind), a namespace, and the operator
installed with the chart.

The images are built right after collection when e2e tests were selected (outside the per-test timeout;
seconds when nothing changed, see docs/testing.md for the first build), with hack/images.sh's progress on
the terminal. A build failure makes every e2e test error; a host that cannot run containers makes them skip,
saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

import pytest
import yaml

from tests.support import cluster as cluster_mod
from tests.support import controlplane as cpmod
from tests.support import e2e

_images_error: Exception | None = None
_images_skip: str | None = None

RELEASE = "kubetune"
CRD_NAMES = ("finetunejobs.kubetune.io", "modelserves.kubetune.io")


def _host_problem() -> str | None:
    from tests.support import realnode

    return realnode.host_problem()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the local control plane every e2e test needs the real node: request its fixture up front, so that
    its plugin prepares it right after collection and the session's control plane starts ready for it."""
    if cluster_mod.flavor_from_env() != "local":
        return
    for item in items:
        names = getattr(item, "fixturenames", None)
        if item.get_closest_marker("e2e") and names is not None and "real_node" not in names:
            names.append("real_node")


def pytest_collection_finish(session: pytest.Session) -> None:
    global _images_error, _images_skip
    if session.config.option.collectonly or not any(i.get_closest_marker("e2e") for i in session.items):
        return
    flavor = cluster_mod.flavor_from_env()
    if flavor == "external":
        return  # the fixture skips: images cannot be loaded into an arbitrary cluster's nodes
    if flavor == "local" and (problem := _host_problem()):
        _images_skip = f"this host cannot run containers: {problem}"
        return
    try:
        images_on_terminal(session.config, "build")
    except e2e.ImagesError as exc:
        _images_error = exc


def images_on_terminal(config: pytest.Config, *args: str) -> None:
    """hack/images.sh ARGS with its progress on the terminal (a first build or load takes minutes)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[e2e] hack/images.sh {' '.join(args)}", flush=True)
        proc = subprocess.run(["bash", str(e2e.IMAGES_SCRIPT), *args], cwd=e2e.REPO)
        print(
            f"[e2e] hack/images.sh {args[0]}: exit {proc.returncode} after {time.monotonic() - started:.0f} s"
        )
    if proc.returncode != 0:
        raise e2e.ImagesError(
            f"hack/images.sh {' '.join(args)} failed with exit code {proc.returncode} (above)"
        )


@pytest.fixture(scope="session")
def e2e_target(kube, request):
    """Where the e2e pods run, with this build's images on its nodes."""
    if _images_skip:
        pytest.skip(_images_skip)
    if _images_error is not None:
        raise _images_error
    if kube.flavor == "external":
        pytest.skip(
            "the e2e tests run on the local control plane's real node or on kind (KUBETUNE_TEST_CLUSTER=kind)"
        )
    if kube.flavor == "kind":
        images_on_terminal(request.config, "kind-load", os.environ.get("KUBETUNE_KIND_NAME", "kubetune-test"))
        yield e2e.Target("kind")
        return
    from tests.support import realnode

    node = request.getfixturevalue("real_node")  # skips, saying why, where the host cannot run it
    images_on_terminal(request.config, "load", str(node.socket))
    target = e2e.Target(
        "local",
        node_selector=dict(realnode.NODE_SELECTOR),
        tolerations=[dict(realnode.TOLERATION)],
        storage_class=realnode.STORAGE_CLASS,
        node_name=realnode.NODE_NAME,
        new_volume=node.new_volume,
    )
    try:
        yield target
    finally:
        from kubernetes import client

        core = client.CoreV1Api(kube.api)
        for pv in target.volumes_made:  # Retain: released once the namespace is gone; nobody else binds it
            with contextlib.suppress(client.ApiException):
                core.delete_persistent_volume(pv)


@pytest.fixture(scope="session")
def e2e_namespace(kube, e2e_target):
    name = kube.new_namespace("e2e")
    yield name
    kube.delete_namespace(name)


def adopt_crds(api, release: str, namespace: str) -> None:
    """Let the release own CRDs that exist already (applied by other tests or an earlier release; the chart
    keeps them on uninstall): Helm adopts an object that carries its release annotations and label."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    for name in CRD_NAMES:
        with contextlib.suppress(client.ApiException):
            ext.patch_custom_resource_definition(
                name,
                {
                    "metadata": {
                        "annotations": {
                            "meta.helm.sh/release-name": release,
                            "meta.helm.sh/release-namespace": namespace,
                        },
                        "labels": {"app.kubernetes.io/managed-by": "Helm"},
                    }
                },
            )


@pytest.fixture(scope="session")
def operator_release(kube, e2e_target, e2e_namespace, tmp_path_factory):
    """`helm install` of charts/kubetune: the operator image built here, in its own namespace, with the
    chart's ServiceAccount and RBAC, placed on the target's nodes, watching the e2e namespace."""
    helm = str(cpmod.ensure_testbin().binary("helm"))
    namespace = f"kubetune-system-{e2e_namespace.rpartition('-')[2]}"
    values = {
        "image": {
            "repository": e2e.OPERATOR_IMAGE.split(":")[0],
            "tag": e2e.TAG,
            "pullPolicy": e2e.PULL_POLICY,
        },
        "trainerImage": e2e.TRAINER_IMAGE,
        "tgiImage": e2e.TGI_IMAGE,
        "watchNamespaces": [e2e_namespace],
        "logLevel": "DEBUG",
        "extraEnv": [
            {"name": "KUBETUNE_TRAINER_IMAGE_PULL_POLICY", "value": e2e.PULL_POLICY},
            # Look again at waiting objects (pods starting, a rollout) every few seconds, not every 30.
            {"name": "KUBETUNE_REQUEUE_SECONDS", "value": "3"},
        ],
        "nodeSelector": e2e_target.node_selector,
        "tolerations": e2e_target.tolerations,
    }
    values_file = tmp_path_factory.mktemp("helm") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    adopt_crds(kube.api, RELEASE, namespace)
    cmd = [helm, "install", RELEASE, str(e2e.CHART), "--namespace", namespace, "--create-namespace",
           "--values", str(values_file), "--wait", "--timeout", "300s"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=kube.env(), timeout=400)
    if proc.returncode != 0:
        detail = _operator_debug(kube, namespace)
        raise AssertionError(f"helm install failed:\n{proc.stdout}\n{proc.stderr}\n{detail}")
    status = json.loads(
        subprocess.run(
            [helm, "status", RELEASE, "-n", namespace, "-o", "json"],
            capture_output=True, text=True, env=kube.env(), check=True,
        ).stdout
    )  # fmt: skip
    try:
        yield {"namespace": namespace, "release": RELEASE, "status": status, "values": values}
    finally:
        subprocess.run(
            [helm, "uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "120s"],
            capture_output=True, env=kube.env(), timeout=200,
        )  # fmt: skip
        kube.delete_namespace(namespace)


def _operator_debug(kube, namespace: str) -> str:
    """The operator pods' state and log tails, for a failed install."""
    from kubernetes import client

    core = client.CoreV1Api(kube.api)
    out = []
    with contextlib.suppress(client.ApiException):
        for pod in core.list_namespaced_pod(namespace).items:
            out.append(f"pod {pod.metadata.name}: {pod.status.phase} {pod.status.container_statuses}")
            with contextlib.suppress(client.ApiException):
                out.append(core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=40))
        for event in core.list_namespaced_event(namespace).items[-20:]:
            out.append(f"event {event.involved_object.name}: {event.reason} {event.message}")
    return "\n".join(out)
