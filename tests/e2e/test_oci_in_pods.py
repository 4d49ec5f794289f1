"""oci:// end to end in real pods, against a real registry on the test host (the CNCF distribution registry of
hack/registry with an htpasswd account, on the real node's bridge address, plain HTTP: the operator is told
so through KUBETUNE_OCI_PLAIN_HTTP_REGISTRIES):

1. a FineTuneJob trained in a trainer pod pushes its LoRA adapter as a ModelPack artifact with the
   credentials of a kubernetes.io/dockerconfigjson Secret; crane, a second client, reads the tag's digest and
   the manifest's media types back from the host;
2. a ModelServe serves the tiny Llama with that adapter pulled from oci:// by an init container, passes its
   smoke test, and the adapter answers through the Service;
3. a push the registry refuses (a wrong password) leaves the result on the claim and the FineTuneJob Failed
   with reason PushRefused and a message that says what to change.
"""

from __future__ import annotations

import base64
import json

import pytest
from kubernetes import client

from tests.support import e2e
from tests.support import realnode_config as node_config
from tests.support.objects import Objects, condition
from tests.support.oci_registry import OCIRegistry, crane, docker_config_auth
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLAIM = "oci-data"
DEMO = "demo"
USER, PASSWORD = "kubetune", "e2e-push-secret"
REPO = "e2e/capitals"
PUSHED = "capitals-oci"
REFUSED = "capitals-refused"
SERVE = "capitals-oci"
RELEASE_NAME = "kubetune"
PLAIN_HTTP_SETTING = "KUBETUNE_OCI_PLAIN_HTTP_REGISTRIES"


@pytest.fixture(scope="module")
def registry(e2e_target, tmp_path_factory):
    """The registry on the real node's bridge address: pods reach it there, and so does the host."""
    server = OCIRegistry(tmp_path_factory.mktemp("oci-registry"), address=node_config.GATEWAY,
                         users={USER: PASSWORD}).start()  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def host_auth(registry, tmp_path_factory):
    return registry.docker_config(tmp_path_factory.mktemp("auth") / "config.json", USER, PASSWORD)


def dockerconfig_secret(api, namespace: str, name: str, host: str, password: str) -> None:
    body = json.dumps(docker_config_auth(host, USER, password))
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
         "data": {".dockerconfigjson": base64.b64encode(body.encode()).decode()}},
    )  # fmt: skip


@pytest.fixture(scope="module")
def operator_knows_registry(kube, operator_release, registry):
    """The chart's operator, told that this registry speaks plain HTTP (its extraEnv, set on the Deployment)."""
    apps = client.AppsV1Api(kube.api)
    namespace = operator_release["namespace"]
    deployment = apps.read_namespaced_deployment(RELEASE_NAME, namespace)
    container = deployment.spec.template.spec.containers[0]
    apps.patch_namespaced_deployment(
        RELEASE_NAME, namespace,
        {"spec": {"template": {"spec": {"containers": [
            {"name": container.name, "env": [{"name": PLAIN_HTTP_SETTING, "value": registry.host}]}]}}}},
    )  # fmt: skip

    def rolled_out():
        d = apps.read_namespaced_deployment(RELEASE_NAME, namespace)
        s = d.status
        done = (s.observed_generation or 0) >= d.metadata.generation and s.updated_replicas == d.spec.replicas
        return done and s.available_replicas == d.spec.replicas and not s.unavailable_replicas

    wait_for(rolled_out, 300, 1, "the operator's rollout with the plain-HTTP registry setting")
    return registry


@pytest.fixture(scope="module")
def oci_claim(kube, e2e_target, e2e_namespace):
    """A claim with the tiny Llama and the data set (written by a pod of the trainer image); the runs'
    checkpoints and result copies go there too."""
    e2e.make_claim(kube.api, e2e_target, e2e_namespace, CLAIM)
    logs = e2e.run_pod(
        kube.api, e2e_target, e2e_namespace, "seed-oci-data",
        ["python", "-m", "kubetune_trainer.demo", f"/mnt/data/{DEMO}"], claim=CLAIM,
    )  # fmt: skip
    assert "demo: wrote a tiny Llama" in logs, logs
    return CLAIM


def lora_job(name: str, target: e2e.Target, registry: OCIRegistry, *, tag: str, secret: str) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"pvc://{CLAIM}/{DEMO}/tiny-llama", "task": "causal-lm"},
            "dataset": {"uri": f"pvc://{CLAIM}/{DEMO}/capitals.jsonl", "format": "prompt-completion",
                        "maxLength": 32},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {"maxSteps": 30, "learningRate": 5.0e-3, "batchSize": 16},
            "checkpoints": {"everySteps": 100000, "keepLast": 1},
            "resources": {"gpusPerNode": 0, "sharedMemory": "256Mi", **target.placement()},
            "output": {"uri": f"oci://{registry.host}/{REPO}:{tag}", "checkpointUri": f"pvc://{CLAIM}/runs/{name}",
                       "secretRef": {"name": secret}},
            "backoffLimit": 0,
        },
    }  # fmt: skip


def claim_files(kube, target, namespace: str, folder: str, name: str) -> dict[str, int]:
    script = (
        "import json, os, sys; root = sys.argv[1]; print(json.dumps({os.path.relpath(os.path.join(d, f), root): "
        "os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs}))"
    )
    logs = e2e.run_pod(
        kube.api, target, namespace, name, ["python", "-c", script, f"/mnt/data/{folder}"], claim=CLAIM
    )
    return json.loads(logs.strip().splitlines()[-1])


@pytest.mark.timeout(1200)
def test_a_trainer_pod_pushes_its_adapter_to_the_registry(
    kube, e2e_target, e2e_namespace, operator_knows_registry, oci_claim, host_auth
):
    registry = operator_knows_registry
    dockerconfig_secret(kube.api, e2e_namespace, "registry-push", registry.host, PASSWORD)
    jobs = Objects(kube.api, e2e_namespace, "FineTuneJob")
    jobs.create(lora_job(PUSHED, e2e_target, registry, tag="v1", secret="registry-push"))
    status = jobs.wait_phase(PUSHED, ("Succeeded", "Failed"), 900)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    result = status["result"]
    digest = result["digest"]
    assert result["uri"] == f"oci://{registry.host}/{REPO}:v1@{digest}"
    assert result["storageUri"] == f"pvc://{CLAIM}/runs/{PUSHED}"
    assert result["kind"] == "adapter"

    # Read back from the host with crane: the tag names that digest, and the artifact is a ModelPack one.
    ref = f"{registry.host}/{REPO}:v1"
    assert crane(registry.host, "digest", ref, auth=host_auth).strip() == digest
    manifest = json.loads(crane(registry.host, "manifest", ref, auth=host_auth))
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    kinds = {
        layer["annotations"]["org.cncf.model.filepath"]: layer["mediaType"] for layer in manifest["layers"]
    }
    assert kinds["adapter_model.safetensors"] == "application/vnd.cncf.model.weight.v1.tar"
    assert kinds["lineage.json"] == "application/vnd.cncf.model.doc.v1.tar"
    assert manifest["annotations"]["io.kubetune.finetunejob"] == f"{e2e_namespace}/{PUSHED}"

    # The copy on the checkpoint claim, with the record of the push.
    files = claim_files(kube, e2e_target, e2e_namespace, f"runs/{PUSHED}", "list-pushed")
    for name in ("adapter_model.safetensors", "lineage.json", "publication.json", "_SUCCESS"):
        assert name in files, sorted(files)


@pytest.mark.timeout(900)
def test_a_modelserve_serves_the_adapter_pulled_from_oci(
    kube, e2e_target, e2e_namespace, operator_knows_registry
):
    api = kube.api
    job = Objects(api, e2e_namespace, "FineTuneJob").get(PUSHED)
    assert job["status"]["phase"] == "Succeeded", "needs the FineTuneJob of the push test"
    pushed = job["status"]["result"]["uri"]
    serves = Objects(api, e2e_namespace, "ModelServe")
    prompt = "The capital of France"
    serves.create(
        {
            "metadata": {"name": SERVE},
            "spec": {
                "model": {"uri": f"pvc://{CLAIM}/{DEMO}/tiny-llama"},
                "adapters": [{"name": "capitals", "fineTuneJobRef": {"name": PUSHED}}],
                "replicas": 1,
                "image": e2e.TGI_IMAGE,
                "resources": {"gpus": 0, **e2e_target.placement()},
                "rollout": {"progressDeadlineSeconds": 400,
                            "smokeTest": {"enabled": True, "prompt": prompt, "maxNewTokens": 4}},
            },
        }
    )  # fmt: skip
    status = serves.wait_phase(SERVE, ("Ready", "Failed", "Degraded"), 600)
    assert status["phase"] == "Ready", json.dumps(status, indent=1)
    ready = condition({"status": status}, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "SmokeTestPassed", ready
    assert "adapter capitals: generated" in ready["message"], ready["message"]
    assert status["revision"]["adapters"] == [f"capitals={pushed}"]

    (pod,) = [
        p
        for p in e2e.pods_of(api, e2e_namespace, f"kubetune.io/modelserve={SERVE}")
        if p.status.phase == "Running"
    ]
    (pull,) = pod.status.init_container_statuses
    assert pull.name == "pull-0" and pull.state.terminated.exit_code == 0
    log = client.CoreV1Api(api).read_namespaced_pod_log(pod.metadata.name, e2e_namespace, container="pull-0")
    assert f"fetched {pushed}" in log, log

    # The adapter answers through the Service (the API server's service proxy), as the smoke test saw it.
    response = api.call_api(
        f"/api/v1/namespaces/{e2e_namespace}/services/{SERVE}:80/proxy/generate", "POST",
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body={"inputs": prompt, "parameters": {"max_new_tokens": 4, "adapter_id": "capitals"}},
        auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False,
    )  # fmt: skip
    answer = json.loads(response.data)["generated_text"]
    assert answer and f"adapter capitals: generated {answer!r}" in ready["message"]


@pytest.mark.timeout(900)
def test_a_refused_push_keeps_the_result_on_the_claim(
    kube, e2e_target, e2e_namespace, operator_knows_registry, oci_claim, host_auth
):
    registry = operator_knows_registry
    dockerconfig_secret(kube.api, e2e_namespace, "registry-wrong", registry.host, "not-the-password")
    jobs = Objects(kube.api, e2e_namespace, "FineTuneJob")
    jobs.create(lora_job(REFUSED, e2e_target, registry, tag="refused", secret="registry-wrong"))
    status = jobs.wait_phase(REFUSED, ("Succeeded", "Failed"), 900)
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    failed = condition({"status": status}, "Failed")
    assert failed["reason"] == "PushRefused", failed
    assert "401 Unauthorized" in failed["message"] and "output.secretRef" in failed["message"]
    assert f"kept at pvc://{CLAIM}/runs/{REFUSED}" in failed["message"]
    assert status["result"]["uri"] == f"pvc://{CLAIM}/runs/{REFUSED}"
    assert status["attempts"] == 1  # trained once: a new attempt would only train again
    events = [e.reason for e in jobs.events(REFUSED)]
    assert "PushRefused" in events

    files = claim_files(kube, e2e_target, e2e_namespace, f"runs/{REFUSED}", "list-refused")
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "lineage.json",
        "publication.json",
        "_SUCCESS",
    ):
        assert name in files, sorted(files)
    assert files["adapter_model.safetensors"] > 1000
    tags = crane(registry.host, "ls", f"{registry.host}/{REPO}", auth=host_auth).split()
    assert "refused" not in tags and "v1" in tags
