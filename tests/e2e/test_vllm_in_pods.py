"""vLLM in real pods: a ModelServe with ``engine: vllm`` on the real node, its pod running the CPU vLLM image
built here (kubetune-vllm-cpu, hack/vllm/Dockerfile) with the command the operator renders for every vLLM
image (``vllm serve``), serving the LoRA adapter a FineTuneJob trained in a trainer pod.

The training is real and small: a tiny Llama (hidden 128, 4 heads: vLLM's CPU attention needs a head size of at
least 32) fine-tuned in full on the demo's capitals, then a LoRA adapter on top of it (a chain: the adapter's
FineTuneJob starts from the first one's result) trained to answer with a "shifted" capital (France -> the next
country's capital). The second run of the adapter's FineTuneJob (its data changed: shifted by two) writes a new
adapter to the same output; the operator loads it on the running pod (same pod UID, no restart) and the answer
through the Service changes to exactly what transformers + PEFT compute from the new adapter. A third run
trains an adapter vLLM refuses to load (LoRA biases): the operator says so and the second version keeps
answering.

The tests run in order and build on each other (one claim, one ModelServe); the chart-installed operator and
the namespace are the e2e session's (tests/e2e/conftest.py). The vLLM pod's start time and memory go to
.cluster/e2e-vllm.json.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
from typing import Any

import httpx
import openai
import pytest
from kubernetes import client

from tests.support import e2e
from tests.support.objects import Objects, condition
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VLLM_IMAGE = f"kubetune-vllm-cpu:{e2e.TAG}"
CLAIM = "e2e-vllm"
DEMO = "demo"
BASE_JOB = "vllm-base"
ADAPTER_JOB = "vllm-adapter"
SERVE = "capitals-vllm"
ADAPTER = "capitals"
PROMPT = "The capital of France"
MAX_TOKENS = 4
KV_CACHE_BYTES = 256 * 1024 * 1024  # vLLM's CPU default is a share of the machine's memory
FIGURES = e2e.REPO / ".cluster" / "e2e-vllm.json"

# A pod of the trainer image writes the demo (tiny Llama, tokenizer, capitals.jsonl) and two "shifted" data sets:
# each country answered with the capital of the country SHIFT places further in the demo's list.
SEED = """
import json, sys
from pathlib import Path
from kubetune_trainer.demo import CAPITALS, write_demo
root = Path(sys.argv[1])
write_demo(root)
rows = [json.loads(line) for line in (root / "capitals.jsonl").read_text().splitlines()]
for shift in (1, 2):
    answer = {c: CAPITALS[(i + shift) % len(CAPITALS)][1] for i, (c, _) in enumerate(CAPITALS)}
    shifted = [{"prompt": r["prompt"], "completion": " " + answer[r["prompt"].rsplit(" ", 1)[1]]} for r in rows]
    (root / f"shifted-{shift}.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in shifted))
print("seeded", sorted(p.name for p in root.iterdir()))
"""

# transformers + PEFT in a pod of the trainer image: the greedy continuation of PROMPT by BASE with ADAPTER, in
# float32 (as the ModelServe serves it), without special tokens -- what vLLM must answer.
REFERENCE = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, adapter, prompt, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(base)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
with torch.no_grad():
    out = model.eval().generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
print(json.dumps({"text": tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)}))
"""


def finetunejob(name: str, target: e2e.Target, model: dict[str, Any], data: str, method: dict[str, Any],
                training: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {**model, "task": "causal-lm"},
            "dataset": {
                "uri": f"pvc://{CLAIM}/{DEMO}/{data}",
                "format": "prompt-completion",
                "maxLength": 32,
            },
            "method": method,
            "training": {"batchSize": 16, **training},
            "checkpoints": {"everySteps": 100000, "keepLast": 1},
            "resources": {"gpusPerNode": 0, "sharedMemory": "256Mi", **target.placement()},
            "output": {"uri": f"pvc://{CLAIM}/runs/{name}"},
            "backoffLimit": 1,
        },
    }


def lora(**extra: Any) -> dict[str, Any]:
    return {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, **extra}}


def modelserve(target: e2e.Target) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelServe",
        "metadata": {"name": SERVE},
        "spec": {
            "engine": "vllm",
            "image": VLLM_IMAGE,
            "model": {"fineTuneJobRef": {"name": BASE_JOB}},
            "adapters": [{"name": ADAPTER, "fineTuneJobRef": {"name": ADAPTER_JOB}}],
            "replicas": 1,
            "resources": {"gpus": 0, "memory": "8Gi", **target.placement()},
            # float32: the weights as trained, so the answers equal transformers'; a small context and KV cache.
            "vllm": {
                "dtype": "float32",
                "maxModelLen": 128,
                "extraArgs": ["--kv-cache-memory-bytes", str(KV_CACHE_BYTES)],
            },  # fmt: skip
            "rollout": {
                "progressDeadlineSeconds": 600,
                "smokeTest": {"enabled": True, "prompt": PROMPT, "maxNewTokens": MAX_TOKENS},
            },
        },
    }


@pytest.fixture(scope="module")
def seeded(kube, e2e_target, e2e_namespace):
    """The claim with the demo's tiny Llama and data, and the shifted data sets."""
    e2e.make_claim(kube.api, e2e_target, e2e_namespace, CLAIM)
    logs = e2e.run_pod(kube.api, e2e_target, e2e_namespace, "seed-vllm",
                       ["python", "-c", SEED, f"/mnt/data/{DEMO}"], claim=CLAIM)  # fmt: skip
    assert "shifted-2.jsonl" in logs, logs
    return CLAIM


@pytest.fixture(scope="module")
def openai_service(kube, e2e_namespace):
    """An openai client of the ModelServe's Service, through the API server's service proxy (its /v1)."""

    cfg = kube.api.configuration
    tls = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    tls.load_cert_chain(cfg.cert_file, cfg.key_file)
    http = httpx.Client(verify=tls, timeout=60)
    base = f"{cfg.host}/api/v1/namespaces/{e2e_namespace}/services/{SERVE}:80/proxy/v1"
    with openai.OpenAI(base_url=base, api_key="unused", http_client=http, max_retries=0) as api:
        yield api


def complete(api, model: str) -> str:
    """The greedy answer of MODEL (the ModelServe's name, an adapter's, or a version name) to PROMPT."""
    out = api.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    return out.choices[0].text.strip()


def reference(kube, target: e2e.Target, namespace: str, name: str, base_uri: str, adapter_uri: str) -> str:
    """What transformers + PEFT answer to PROMPT with the adapter at ADAPTER_URI (both on the claim)."""

    def in_pod(uri: str) -> str:
        return "/mnt/data/" + uri.removeprefix(f"pvc://{CLAIM}/")

    logs = e2e.run_pod(kube.api, target, namespace, name,
                       ["python", "-c", REFERENCE, in_pod(base_uri), in_pod(adapter_uri), PROMPT, str(MAX_TOKENS)],
                       claim=CLAIM)  # fmt: skip
    return str(json.loads(logs.strip().splitlines()[-1])["text"]).strip()


def served(status: dict[str, Any]) -> dict[str, Any]:
    return {a["name"]: a for a in status.get("servedAdapters") or []}.get(ADAPTER) or {}


def serving_pod(kube, namespace: str):
    pods = [p for p in e2e.pods_of(kube.api, namespace, f"kubetune.io/modelserve={SERVE}")
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp]  # fmt: skip
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def restarts(pod) -> int:
    return sum(c.restart_count for c in pod.status.container_statuses or [])


def wait_new_result(jobs: Objects, name: str, previous: str | None, timeout: float = 900) -> dict[str, Any]:
    """The FineTuneJob's status once a run other than PREVIOUS (a configHash) succeeded."""

    def done():
        obj = jobs.get(name)
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        if st.get("phase") == "Failed":
            raise AssertionError(f"{name} failed: {json.dumps(st, indent=1)}")
        result = st.get("result") or {}
        return (
            st
            if st.get("phase") == "Succeeded" and result.get("configHash") not in (None, previous)
            else None
        )

    return wait_for(done, timeout, 1.0, f"{name}: a new successful run")


def start_figures(kube, pod) -> dict[str, Any]:
    """The vLLM pod's start: created -> container started -> Ready (the kubelet's times, 1 s resolution; the
    probes look every 10 s), and its memory as the kubelet measures it (cgroup working set and RSS)."""

    def at(name: str) -> dt.datetime:
        return next(c.last_transition_time for c in pod.status.conditions if c.type == name)

    (status,) = pod.status.container_statuses
    started = status.state.running.started_at
    figures: dict[str, Any] = {
        "created_to_ready_seconds": (at("Ready") - pod.metadata.creation_timestamp).total_seconds(),
        "container_started_to_ready_seconds": (at("Ready") - started).total_seconds(),
        "node": pod.spec.node_name,
    }
    # Straight from the node's kubelet (its stats summary, with the cluster's client certificate): the API
    # server's node proxy refuses the real node's address, loopback ("address not allowed"). The node's
    # addresses in the API server's order: the real node's kubelet listens on real-0 (127.0.0.1), kind's on
    # its InternalIP.
    node = client.CoreV1Api(kube.api).read_node(pod.spec.node_name)
    addresses = {a.type: a.address for a in node.status.addresses}
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    cfg = kube.api.configuration
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = (
        False,
        ssl.CERT_NONE,
    )  # the kubelet's serving certificate is self-signed
    tls.load_cert_chain(cfg.cert_file, cfg.key_file)
    errors = []
    with httpx.Client(verify=tls, timeout=30) as http:
        for kind in ("Hostname", "InternalIP"):
            try:
                summary = http.get(f"https://{addresses[kind]}:{port}/stats/summary")
                break
            except (KeyError, httpx.ConnectError) as exc:
                errors.append(f"{kind}: {exc!r}")
        else:
            raise AssertionError(f"no kubelet answered at {addresses} port {port}: {errors}")
    summary.raise_for_status()
    for entry in summary.json()["pods"]:
        if entry["podRef"]["uid"] == pod.metadata.uid:
            memory = entry["containers"][0].get("memory") or {}
            figures["working_set_bytes"] = memory.get("workingSetBytes")
            figures["rss_bytes"] = memory.get("rssBytes")
    return figures


@pytest.mark.timeout(
    2400
)  # may be the session's first test: the real node, the images' first import, the chart
def test_a_trained_adapter_is_served_by_vllm_in_a_pod(kube, e2e_target, e2e_namespace, operator_release, seeded,
                                                      openai_service):  # fmt: skip
    api = kube.api
    jobs = Objects(api, e2e_namespace, "FineTuneJob")
    jobs.create(finetunejob(BASE_JOB, e2e_target, {"uri": f"pvc://{CLAIM}/{DEMO}/tiny-llama"}, "capitals.jsonl",
                            {"type": "full"}, {"maxSteps": 120, "learningRate": 5e-3, "scheduler": "cosine"}))  # fmt: skip
    # Starts from the first job's result once it has one (a chain).
    jobs.create(finetunejob(ADAPTER_JOB, e2e_target, {"fineTuneJobRef": {"name": BASE_JOB}}, "shifted-1.jsonl",
                            lora(), {"maxSteps": 60, "learningRate": 2e-2}))  # fmt: skip
    serves = Objects(api, e2e_namespace, "ModelServe")
    serves.create(modelserve(e2e_target))
    adapter = wait_new_result(jobs, ADAPTER_JOB, None)["result"]
    assert adapter["kind"] == "adapter" and adapter["uri"].startswith(f"pvc://{CLAIM}/runs/{ADAPTER_JOB}")

    status = serves.wait_phase(SERVE, ("Ready", "Failed", "Degraded"), 900)
    assert status["phase"] == "Ready", json.dumps(status, indent=1)
    ready = condition({"status": status}, "Ready")
    assert ready["reason"] == "SmokeTestPassed", ready
    assert f"http://{SERVE}.{e2e_namespace}.svc" in ready["message"]  # the operator went through the Service
    entry = served(status)
    assert entry["uri"] == adapter["uri"] and entry["loadedOnPods"] == entry["desiredPods"] == 1, entry

    # The pod runs the image built here with the command the operator renders for any vLLM image.
    pod = serving_pod(kube, e2e_namespace)
    (container,) = pod.spec.containers
    assert container.image == VLLM_IMAGE and container.command == ["vllm", "serve"]
    if e2e_target.node_name:
        assert pod.spec.node_name == e2e_target.node_name
        # The kubelet ran exactly the image this build made (its ID is the digest of its config).
        assert e2e.image_id(pod) == e2e.built_image_ids()[VLLM_IMAGE]
    assert container.args[container.args.index("--max-lora-rank") + 1] == "8"  # the job's lora.r

    # Through the Service with the openai client: the model list, and the adapter's answer is what transformers +
    # PEFT compute from the trained files; the base model (the ModelServe's name) answers otherwise.
    ids = {m.id for m in openai_service.models.list().data}
    assert {SERVE, ADAPTER, f"{ADAPTER}@{entry['digest']}"} <= ids, ids
    answer = complete(openai_service, ADAPTER)
    base_result = jobs.get(BASE_JOB)["status"]["result"]["uri"]
    assert answer == reference(kube, e2e_target, e2e_namespace, "reference-v1", base_result, adapter["uri"])
    assert complete(openai_service, f"{ADAPTER}@{entry['digest']}") == answer
    assert complete(openai_service, SERVE) != answer

    figures = {"image": VLLM_IMAGE, **start_figures(kube, serving_pod(kube, e2e_namespace))}
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps(figures) + "\n")
    print(f"\n[e2e] vLLM pod: {figures}")


@pytest.mark.timeout(1500)
def test_a_second_run_is_loaded_on_the_running_pod(kube, e2e_target, e2e_namespace, operator_release,
                                                   openai_service):  # fmt: skip
    api = kube.api
    jobs = Objects(api, e2e_namespace, "FineTuneJob")
    serves = Objects(api, e2e_namespace, "ModelServe")
    before = serves.status(SERVE)
    assert before["phase"] == "Ready", "needs the ModelServe of the previous test"
    pod = serving_pod(kube, e2e_namespace)
    deployment = client.AppsV1Api(api).read_namespaced_deployment(SERVE, e2e_namespace)
    first_answer = complete(openai_service, ADAPTER)
    old = jobs.get(ADAPTER_JOB)["status"]["result"]

    # New data: a new run of the same FineTuneJob, its adapter written to the same output.
    jobs.patch(ADAPTER_JOB, {"spec": {"dataset": {"uri": f"pvc://{CLAIM}/{DEMO}/shifted-2.jsonl"}}})
    new = wait_new_result(jobs, ADAPTER_JOB, old["configHash"])["result"]
    assert new["uri"] == old["uri"]  # the same place: only the version (digest) tells them apart

    def switched():
        st = serves.status(SERVE)
        entry = served(st)
        if entry.get("digest") != served(before)["digest"] and entry.get("loadedOnPods") == 1:
            return st
        return None

    status = wait_for(switched, 300, 1.0, f"{SERVE}: the second version loaded on the pod")
    assert status["phase"] == "Ready", json.dumps(status, indent=1)
    digest = served(status)["digest"]

    # Loaded on the running pod: the same pod (UID), never restarted, the same Deployment template.
    now = serving_pod(kube, e2e_namespace)
    assert now.metadata.uid == pod.metadata.uid and restarts(now) == 0
    assert client.AppsV1Api(api).read_namespaced_deployment(SERVE, e2e_namespace).metadata.generation == (
        deployment.metadata.generation
    )
    events = [e.reason for e in serves.events(SERVE)]
    assert "AdapterUpdated" in events, events

    # The answer changed, to exactly the new adapter's; its version name answers the same.
    answer = complete(openai_service, ADAPTER)
    assert answer != first_answer
    base_result = jobs.get(BASE_JOB)["status"]["result"]["uri"]
    assert answer == reference(kube, e2e_target, e2e_namespace, "reference-v2", base_result, new["uri"])
    assert complete(openai_service, f"{ADAPTER}@{digest}") == answer
    ids = {m.id for m in openai_service.models.list().data}
    assert f"{ADAPTER}@{served(before)['digest']}" not in ids, ids  # the first version's name is gone


@pytest.mark.timeout(1200)
def test_a_result_vllm_refuses_leaves_the_served_version_answering(kube, e2e_namespace, operator_release,
                                                                    openai_service):  # fmt: skip
    api = kube.api
    jobs = Objects(api, e2e_namespace, "FineTuneJob")
    serves = Objects(api, e2e_namespace, "ModelServe")
    before = serves.status(SERVE)
    pod = serving_pod(kube, e2e_namespace)
    answer = complete(openai_service, ADAPTER)
    old = jobs.get(ADAPTER_JOB)["status"]["result"]

    # LoRA biases train and save fine, and vLLM cannot serve them ("Adapter bias is not supported").
    jobs.patch(ADAPTER_JOB, {"spec": {"method": lora(bias="all")}})
    wait_new_result(jobs, ADAPTER_JOB, old["configHash"])

    def degraded():
        st = serves.status(SERVE)
        return st if st.get("phase") == "Degraded" else None

    status = wait_for(degraded, 300, 1.0, f"{SERVE}: Degraded after vLLM refused the third version")
    cond = condition({"status": status}, "Degraded")
    assert cond["reason"] == "AdapterLoadFailed" and "Adapter bias is not supported" in cond["message"], cond
    entry = served(status)
    assert entry["digest"] == served(before)["digest"] and entry["loadedOnPods"] == 1, entry
    assert entry["failedDigest"] and entry["failedDigest"] != entry["digest"], entry

    # The second version keeps answering, on the same pod.
    try:
        assert complete(openai_service, ADAPTER) == answer
    except Exception:
        print("\n[e2e] vLLM pod log:\n" + e2e.pod_log(api, e2e_namespace, pod.metadata.name)[-20000:])
        print("\n[e2e] ModelServe status:\n" + json.dumps(serves.status(SERVE), indent=1))
        raise
    assert complete(openai_service, f"{ADAPTER}@{entry['digest']}") == answer
    now = serving_pod(kube, e2e_namespace)
    assert now.metadata.uid == pod.metadata.uid and restarts(now) == 0
    assert f"{ADAPTER}@{entry['failedDigest']}" not in {m.id for m in openai_service.models.list().data}
