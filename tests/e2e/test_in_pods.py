"""End to end in real pods: the operator installed with the chart runs in the cluster from the image built
here; a tiny model and data set are put on a claim by a pod of the trainer image; a CPU FineTuneJob trains
in a trainer pod that reports its progress with its own ServiceAccount; a second one is stopped by deleting
its pod (the kubelet's SIGTERM), checkpoints and resumes in its next pod; the first one's result is served
by a ModelServe whose pods run the TGI-protocol test image, smoke-tested by the operator through the
Service.

The tests run in order and build on each other (one namespace, one claim, one operator); a failure of an
earlier one makes the later ones fail fast on what is missing.
"""

from __future__ import annotations

import ast
import json
import re

import pytest
from kubernetes import client

from tests.support import e2e
from tests.support.objects import Objects, condition
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLAIM = "e2e-data"
DEMO = "demo"  # python -m kubetune_trainer.demo writes DEMO/tiny-llama, DEMO/capitals.jsonl
FIRST = "capitals"
RESUMED = "capitals-resume"
SERVE = "capitals"
FTJ_LABEL = "kubetune.io/finetunejob"
OPERATOR_MANAGER = "kubetune"  # the operator's field manager; the trainer's patches carry another
RELEASE_NAME = "kubetune"  # tests/e2e/conftest.py's release: its Deployment, ServiceAccount and ClusterRole


def finetunejob(name: str, target: e2e.Target, *, max_steps: int, output: str) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"pvc://{CLAIM}/{DEMO}/tiny-llama", "task": "causal-lm"},
            "dataset": {
                "uri": f"pvc://{CLAIM}/{DEMO}/capitals.jsonl",
                "format": "prompt-completion",
                "evalFraction": 0.15,
                "maxLength": 32,
            },
            "method": {"type": "full"},
            "training": {
                "maxSteps": max_steps,
                "learningRate": 5.0e-3,
                "batchSize": 16,
                "scheduler": "cosine",
                "evalEvery": max_steps,
            },
            # No periodic checkpoint: the only one a run can resume from is the one written on SIGTERM.
            "checkpoints": {"everySteps": 100000, "keepLast": 1},
            "resources": {"gpusPerNode": 0, "sharedMemory": "256Mi", **target.placement()},
            "output": {"uri": f"pvc://{CLAIM}/{output}"},
            # Progress to the status every second (default 5), so a short run shows it several times.
            "env": [{"name": "KUBETUNE_REPORT_INTERVAL", "value": "1"}],
            "backoffLimit": 2,
        },
    }


@pytest.fixture(scope="module")
def data_claim(kube, e2e_target, e2e_namespace):
    """The claim with the tiny Llama, its tokenizer and the data set, written by a pod of the trainer image."""
    e2e.make_claim(kube.api, e2e_target, e2e_namespace, CLAIM)
    logs = e2e.run_pod(
        kube.api, e2e_target, e2e_namespace, "seed-data",
        ["python", "-m", "kubetune_trainer.demo", f"/mnt/data/{DEMO}"], claim=CLAIM,
    )  # fmt: skip
    assert "demo: wrote a tiny Llama" in logs, logs
    return CLAIM


def claim_files(kube, target, namespace: str, folder: str, name: str) -> dict[str, int]:
    """Relative path -> size of every file under FOLDER on the claim, listed by a pod that mounts it."""
    script = (
        "import json, os, sys; root = sys.argv[1]; print(json.dumps({os.path.relpath(os.path.join(d, f), root): "
        "os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs}))"
    )
    logs = e2e.run_pod(
        kube.api, target, namespace, name, ["python", "-c", script, f"/mnt/data/{folder}"], claim=CLAIM
    )
    return json.loads(logs.strip().splitlines()[-1])


def trainer_pods(kube, namespace: str, name: str) -> list:
    return e2e.pods_of(kube.api, namespace, f"{FTJ_LABEL}={name}")


def assert_on_target(pod, target: e2e.Target, image: str) -> None:
    assert pod.spec.containers[0].image == image
    if target.node_name:
        assert pod.spec.node_name == target.node_name
        # The kubelet ran exactly the image this build made (its ID is the digest of its config).
        assert e2e.image_id(pod) == e2e.built_image_ids()[image]


@pytest.mark.timeout(
    1500
)  # the first test also starts the real node, loads the images and installs the chart
def test_the_operator_runs_in_the_cluster_from_the_chart(kube, e2e_target, operator_release):
    namespace = operator_release["namespace"]
    assert operator_release["status"]["info"]["status"] == "deployed"
    apps = client.AppsV1Api(kube.api)
    deployment = apps.read_namespaced_deployment(RELEASE_NAME, namespace)
    assert deployment.status.available_replicas == 1
    (pod,) = [p for p in e2e.pods_of(kube.api, namespace, "app.kubernetes.io/name=kubetune")
              if p.metadata.deletion_timestamp is None]  # fmt: skip
    assert pod.status.phase == "Running"
    assert_on_target(pod, e2e_target, e2e.OPERATOR_IMAGE)
    # The chart's ServiceAccount, bound to the chart's ClusterRole: the operator's only credentials.
    assert pod.spec.service_account_name == deployment.spec.template.spec.service_account_name == RELEASE_NAME
    binding = client.RbacAuthorizationV1Api(kube.api).read_cluster_role_binding(RELEASE_NAME)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", RELEASE_NAME, namespace)
    ]
    # Its liveness endpoint answers through the API server's pod proxy.
    assert all(c.ready for c in pod.status.container_statuses)  # its readiness probe: kopf serves /healthz
    health = client.CoreV1Api(kube.api).connect_get_namespaced_pod_proxy_with_path(
        f"{pod.metadata.name}:8081", namespace, "healthz"
    )
    assert health


@pytest.mark.timeout(900)
def test_a_finetunejob_trains_in_a_trainer_pod(kube, e2e_target, e2e_namespace, operator_release, data_claim):
    api = kube.api
    jobs = Objects(api, e2e_namespace, "FineTuneJob")
    jobs.create(finetunejob(FIRST, e2e_target, max_steps=120, output=f"runs/{FIRST}"))

    # Live progress while the pod trains: step and loss in the status before the end.
    def live():
        obj = jobs.get(FIRST)
        progress = (obj.get("status") or {}).get("progress") or {}
        step, total = progress.get("step") or 0, progress.get("totalSteps") or 0
        if obj["status"].get("phase") == "Running" and 0 < step < total and progress.get("loss") is not None:
            pods = [p for p in trainer_pods(kube, e2e_namespace, FIRST) if p.status.phase == "Running"]
            return (obj, pods[0]) if pods else None
        return None

    obj, pod = wait_for(live, 600, 0.3, f"{FIRST}: progress with a loss while its pod runs")
    assert obj["status"]["progress"]["totalSteps"] == 120
    assert_on_target(pod, e2e_target, e2e.TRAINER_IMAGE)
    # The trainer pod reports with its own ServiceAccount, not the operator's.
    assert pod.spec.service_account_name == f"{FIRST}-trainer"
    status_writers = {
        m["manager"]
        for m in obj["metadata"]["managedFields"]
        if m.get("subresource") == "status" and "f:progress" in (m.get("fieldsV1") or {}).get("f:status", {})
    }
    assert status_writers - {OPERATOR_MANAGER}, f"progress written only by {status_writers}"

    status = jobs.wait_phase(FIRST, ("Succeeded", "Failed"), 600)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["progress"]["step"] == 120
    assert status["attempts"] == 1
    result = status["result"]
    assert result["kind"] == "full"
    assert result["uri"].startswith(f"pvc://{CLAIM}/runs/{FIRST}")
    assert result["image"] == e2e.TRAINER_IMAGE
    assert result["metrics"]["train_loss"] > 0 and result["metrics"]["eval_loss"] > 0

    # The result is on the claim: weights, tokenizer, lineage and the completion marker.
    folder = result["uri"].removeprefix(f"pvc://{CLAIM}/")
    files = claim_files(kube, e2e_target, e2e_namespace, folder, "list-result")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "lineage.json", "_SUCCESS"):
        assert name in files, sorted(files)
    assert files["model.safetensors"] > 100_000
    # It learned: the loss the Trainer logged step by step (its state in the final checkpoint) fell.
    (state,) = [path for path in files if path.endswith("checkpoint-120/trainer_state.json")]  # the final one
    script = "import json, sys; print(json.dumps([e['loss'] for e in json.load(open(sys.argv[1]))['log_history'] if 'loss' in e]))"
    losses = json.loads(
        e2e.run_pod(api, e2e_target, e2e_namespace, "read-losses", ["python", "-c", script,
                    f"/mnt/data/{folder}/{state}"], claim=CLAIM).strip().splitlines()[-1]
    )  # fmt: skip
    assert len(losses) >= 10 and sum(losses[-5:]) / 5 < 0.7 * losses[0], losses


@pytest.mark.timeout(900)
def test_a_pod_stopped_by_the_kubelet_checkpoints_and_the_next_resumes(kube, e2e_target, e2e_namespace,
                                                                       operator_release, data_claim):  # fmt: skip
    api, core = kube.api, client.CoreV1Api(kube.api)
    jobs = Objects(api, e2e_namespace, "FineTuneJob")
    jobs.create(finetunejob(RESUMED, e2e_target, max_steps=400, output=f"runs/{RESUMED}"))

    def training():
        obj = jobs.get(RESUMED)
        step = ((obj.get("status") or {}).get("progress") or {}).get("step") or 0
        pods = [p for p in trainer_pods(kube, e2e_namespace, RESUMED) if p.status.phase == "Running"]
        return pods[0] if 5 <= step < 200 and pods else None

    first_pod = wait_for(training, 600, 0.2, f"{RESUMED} to be training")
    # `kubectl delete pod`: the kubelet sends SIGTERM and waits the grace period.
    core.delete_namespaced_pod(first_pod.metadata.name, e2e_namespace)

    def checkpointed():
        obj = jobs.get(RESUMED)
        return obj if ((obj.get("status") or {}).get("checkpoint") or {}).get("step") else None

    saved = wait_for(checkpointed, 300, 0.5, f"{RESUMED}: the checkpoint written on SIGTERM")["status"][
        "checkpoint"
    ]
    step = saved["step"]
    assert 5 <= step < 400
    assert saved["uri"].startswith(f"pvc://{CLAIM}/runs/{RESUMED}") and saved["uri"].endswith(
        f"checkpoint-{step}"
    )

    # The first attempt failed with the trainer's exit code for SIGTERM (143); the operator said so in an
    # Event and started the next attempt. Its reason comes from the pod while it exists ("exited with code
    # 143" and the trainer's last log lines), else from the Job's podFailurePolicy condition ("exit code 143").
    def attempt_failed():
        events = core.list_namespaced_event(
            e2e_namespace, field_selector=f"involvedObject.name={RESUMED}"
        ).items
        return next((e for e in events if e.reason == "AttemptFailed"), None)

    event = wait_for(attempt_failed, 120, 0.5, f"{RESUMED}: the AttemptFailed Event")
    assert re.search(r"exit(ed with)? code 143", event.message) and "starting attempt 2" in event.message, (
        event.message
    )

    status = jobs.wait_phase(RESUMED, ("Succeeded", "Failed"), 600)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["attempts"] == 2
    assert status["progress"]["step"] == 400

    # The second attempt's pod started from that checkpoint.
    (second,) = [
        p for p in trainer_pods(kube, e2e_namespace, RESUMED) if p.metadata.name != first_pod.metadata.name
    ]
    assert second.metadata.labels["kubetune.io/attempt"] == "2"
    logs = e2e.pod_log(api, e2e_namespace, second.metadata.name)
    resumed = re.findall(r"resuming from (\S+)", logs)
    assert resumed and resumed[0].endswith(f"checkpoint-{step}"), logs[-3000:]
    # The Trainer's own state agrees: it went on from that step to the end.
    state = claim_files(kube, e2e_target, e2e_namespace, f"runs/{RESUMED}", "list-resumed")
    assert any(path.endswith("_SUCCESS") for path in state), sorted(state)


@pytest.mark.timeout(900)
def test_a_modelserve_of_the_result_is_served_and_smoke_tested(
    kube, e2e_target, e2e_namespace, operator_release
):
    api = kube.api
    job = Objects(api, e2e_namespace, "FineTuneJob").get(FIRST)
    assert job["status"]["phase"] == "Succeeded", "needs the FineTuneJob of the training test"
    serves = Objects(api, e2e_namespace, "ModelServe")
    prompt = "The capital of France"
    serves.create(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "ModelServe",
            "metadata": {"name": SERVE},
            "spec": {
                "model": {"fineTuneJobRef": {"name": FIRST}},
                "replicas": 1,
                "image": e2e.TGI_IMAGE,
                "resources": {"gpus": 0, **e2e_target.placement()},
                "rollout": {
                    "progressDeadlineSeconds": 400,
                    "smokeTest": {"enabled": True, "prompt": prompt, "maxNewTokens": 4},
                },
            },
        },
    )

    status = serves.wait_phase(SERVE, ("Ready", "Failed", "Degraded"), 600)
    assert status["phase"] == "Ready", json.dumps(status, indent=1)
    ready = condition({"status": status}, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "SmokeTestPassed", ready
    service = f"{SERVE}.{e2e_namespace}.svc"
    assert f"http://{service}" in ready["message"]  # the operator went through the Service's DNS name
    assert status["lastRollout"]["result"] == "succeeded"
    assert status["readyReplicas"] == 1
    assert status["revision"]["model"].startswith(f"pvc://{CLAIM}/runs/{FIRST}")

    pods = [
        p
        for p in e2e.pods_of(api, e2e_namespace, f"kubetune.io/modelserve={SERVE}")
        if p.status.phase == "Running"
    ]
    assert len(pods) == 1
    assert_on_target(pods[0], e2e_target, e2e.TGI_IMAGE)

    # The same generate through the Service (the API server's proxy) gives what the smoke test saw: the pod
    # serves the trained model, greedily.
    smoke_output = re.search(r"base model: generated (.*)$", ready["message"])
    assert smoke_output, ready["message"]
    response = api.call_api(
        f"/api/v1/namespaces/{e2e_namespace}/services/{SERVE}:80/proxy/generate", "POST",
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body={"inputs": prompt, "parameters": {"max_new_tokens": 4}},
        auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False,
    )  # fmt: skip
    assert json.loads(response.data)["generated_text"] == ast.literal_eval(smoke_output.group(1))


TWO_NODES = "capitals-2n"


@pytest.mark.timeout(1500)
def test_a_two_node_cpu_finetunejob_trains_in_two_pods_and_resumes_after_one_is_deleted(
    kube, e2e_target, e2e_namespace, operator_release, data_claim
):
    """nodes: 2 on CPU: two trainer pods of one Indexed Job find pod 0 through the headless Service's DNS name,
    train as one DDP world over gloo and write one result; a pod deleted mid-run fails the attempt, and the
    next attempt's two pods resume from the run's latest checkpoint."""
    from kubetune.render.finetunejob import COMPLETION_INDEX_ANNOTATION, job_name, service_name

    api, core = kube.api, client.CoreV1Api(kube.api)
    jobs = Objects(api, e2e_namespace, "FineTuneJob")
    body = finetunejob(TWO_NODES, e2e_target, max_steps=160, output=f"runs/{TWO_NODES}")
    body["spec"]["resources"]["nodes"] = 2
    body["spec"]["training"]["batchSize"] = 8
    body["spec"]["checkpoints"] = {"everySteps": 20, "keepLast": 2}
    jobs.create(body)

    def two_pods_training():
        obj = jobs.get(TWO_NODES)
        saved = ((obj.get("status") or {}).get("checkpoint") or {}).get("step") or 0
        pods = [p for p in trainer_pods(kube, e2e_namespace, TWO_NODES) if p.status.phase == "Running"]
        return (obj, pods) if saved >= 20 and len(pods) == 2 else None

    obj, pods = wait_for(two_pods_training, 900, 0.5, f"{TWO_NODES}: two pods Running and a checkpoint saved")
    first_job = job_name(TWO_NODES, 1)
    assert {p.metadata.labels["job-name"] for p in pods} == {first_job}  # one Indexed Job ...
    by_index = {p.metadata.annotations[COMPLETION_INDEX_ANNOTATION]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]  # ... two completion indexes, two ranks
    service = core.read_namespaced_service(service_name(TWO_NODES), e2e_namespace)
    assert service.spec.cluster_ip == "None"  # headless: one DNS record per pod
    for pod in pods:
        assert_on_target(pod, e2e_target, e2e.TRAINER_IMAGE)
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        # The rendezvous is pod 0's DNS name under the Service, which only the cluster's DNS resolves.
        assert env["KUBETUNE_MASTER_ADDR"] == f"{first_job}-0.{service.metadata.name}", env
        assert pod.spec.subdomain == service.metadata.name and pod.spec.hostname.startswith(first_job)
    saved = obj["status"]["checkpoint"]["step"]

    # `kubectl delete pod` of rank 1 mid-run: its attempt fails, the next one starts.
    core.delete_namespaced_pod(by_index["1"].metadata.name, e2e_namespace)
    events = wait_for(
        lambda: [e for e in jobs.events(TWO_NODES) if e.reason == "AttemptFailed"], 300, 0.5, "AttemptFailed"
    )
    assert "starting attempt 2" in events[0].message, events[0].message

    status = jobs.wait_phase(TWO_NODES, ("Succeeded", "Failed"), 900)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["attempts"] == 2 and status["progress"]["step"] == 160
    second = [
        p
        for p in trainer_pods(kube, e2e_namespace, TWO_NODES)
        if p.metadata.labels["kubetune.io/attempt"] == "2"
    ]
    assert sorted(p.metadata.annotations[COMPLETION_INDEX_ANNOTATION] for p in second) == ["0", "1"]
    # Both ranks of the second attempt resumed from one checkpoint of the first, no older than the one the
    # status showed before the deletion.
    resumed = {re.findall(r"resuming from \S*checkpoint-(\d+)", e2e.pod_log(api, e2e_namespace, p.metadata.name))[0]
               for p in second}  # fmt: skip
    assert len(resumed) == 1 and int(resumed.pop()) >= saved, resumed

    # One result, trained by a world of two over gloo whose replicas ended in sync.
    result = status["result"]
    folder = result["uri"].removeprefix(f"pvc://{CLAIM}/")
    script = "import sys; print(open(sys.argv[1]).read())"
    lineage = json.loads(
        e2e.run_pod(
            api,
            e2e_target,
            e2e_namespace,
            "lineage-2n",
            ["python", "-c", script, f"/mnt/data/{folder}/lineage.json"],
            claim=CLAIM,
        )  # fmt: skip
    )
    ran = lineage["distributed"]
    assert (ran["worldSize"], ran["strategy"], ran["backend"]) == (2, "ddp", "gloo"), ran
    assert ran["replicasInSync"] is True and len(set(ran["replicaDigests"])) == 1, ran
