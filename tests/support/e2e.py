"""What the end-to-end tests (tests/e2e) need around a cluster whose pods really run: the images built from
this repository (hack/images.sh), where those pods may run (the local control plane's real node, or kind),
the chart installed with Helm, pods run to completion, polling.

``Target`` hides the difference between the two clusters:

- ``local``: the node ``real-0`` of tests/support/realnode.py (containerd + kubelet on this host). Pods
  must select and tolerate it; claims use its StorageClass ``real-local`` (static local volumes, one made
  per claim); images are imported into its containerd (``hack/images.sh load SOCKET``).
- ``kind``: every node of the kind cluster runs pods; claims use kind's default StorageClass; images go in
  with ``kind load docker-image`` (``hack/images.sh kind-load NAME``).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = REPO / "hack" / "images.sh"
CHART = REPO / "charts" / "kubetune"

TAG = "dev"
OPERATOR_IMAGE = f"kubetune-operator:{TAG}"
TRAINER_IMAGE = f"kubetune-trainer:{TAG}"
TGI_IMAGE = f"kubetune-tgi-test:{TAG}"
IMAGES = (OPERATOR_IMAGE, TRAINER_IMAGE, TGI_IMAGE)
# hack/images.sh has built the images, and the nodes have them: never pull (there is no registry).
PULL_POLICY = "Never"
TRAINER_UID = 1000


class ImagesError(RuntimeError):
    """hack/images.sh failed; the message carries the end of its output."""


def images_script(*args: str, timeout: float = 3600) -> str:
    """Run hack/images.sh ARGS; its output (stderr: the progress lines) or ImagesError."""
    proc = subprocess.run(
        ["bash", str(IMAGES_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if proc.returncode != 0:
        raise ImagesError(
            f"hack/images.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout + proc.stderr


def built_image_ids() -> dict[str, str]:
    """IMAGE -> Docker image ID (the digest of its config) of the last `hack/images.sh build`."""
    out = images_script("ids")
    return {parts[0]: parts[1] for parts in (line.split() for line in out.splitlines()) if len(parts) >= 2}


@dataclass
class Target:
    """Where the end-to-end pods run and how their storage is made."""

    flavor: str
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    storage_class: str | None = None
    node_name: str | None = None
    """The one node every pod must land on (local), or None (kind: any node)."""
    new_volume: Callable[[str], str] | None = None
    """Make a PersistentVolume for one more claim (static local volumes); returns its name."""
    volumes_made: list[str] = field(default_factory=list)

    def placement(self) -> dict[str, Any]:
        """nodeSelector and tolerations for a pod spec (camelCase, as in a FineTuneJob's resources)."""
        out: dict[str, Any] = {}
        if self.node_selector:
            out["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            out["tolerations"] = [dict(t) for t in self.tolerations]
        return out


def make_claim(api, target: Target, namespace: str, name: str, size: str = "2Gi") -> None:
    """A ReadWriteOnce claim of the target's StorageClass (on the real node: with a new local volume)."""
    from kubernetes import client

    if target.new_volume is not None:
        target.volumes_made.append(target.new_volume(size))
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if target.storage_class:
        spec["storageClassName"] = target.storage_class
    client.CoreV1Api(api).create_namespaced_persistent_volume_claim(
        namespace,
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec},
    )


def run_pod(
    api,
    target: Target,
    namespace: str,
    name: str,
    command: list[str],
    *,
    image: str = TRAINER_IMAGE,
    claim: str | None = None,
    mount: str = "/mnt/data",
    timeout: float = 300,
) -> str:
    """Run COMMAND in a pod of IMAGE (CLAIM mounted at MOUNT) to completion; return its log. A pod that
    fails raises with its log and status."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID, "fsGroup": TRAINER_UID},
        "containers": [{"name": "main", "image": image, "imagePullPolicy": PULL_POLICY, "command": command}],
        **target.placement(),
    }
    if claim:
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
        spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": mount}]
    core.create_namespaced_pod(
        namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    )

    def finished():
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = wait_for(finished, timeout, 0.5, f"pod {namespace}/{name} to finish")
    logs = pod_log(api, namespace, name)
    if pod.status.phase != "Succeeded":
        raise AssertionError(f"pod {name} {pod.status.phase}: {pod.status.container_statuses}\n{logs}")
    if target.node_name:
        assert pod.spec.node_name == target.node_name
    with contextlib.suppress(client.ApiException):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    return logs


def pod_log(api, namespace: str, name: str) -> str:
    """The pod's log as it is (the client's own decoding turns a log that is one JSON document into a
    Python repr)."""
    from kubernetes import client

    response = client.CoreV1Api(api).read_namespaced_pod_log(name, namespace, _preload_content=False)
    return response.data.decode()


def pods_of(api, namespace: str, selector: str) -> list:
    from kubernetes import client

    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def image_id(pod) -> str:
    """The ID (config digest) of the image the pod's first container runs, as the kubelet reports it."""
    status = (pod.status.container_statuses or [None])[0]
    return (status.image_id or "").rpartition("@")[2] if status else ""
